"""Trained-model files: safetensors weights plus JSON metadata (architecture, styles, recipe, licences).

Shipped models live in the package folder ``impasto/models`` (fp16); user models anywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from impasto.errors import InvalidOptionError, WeightsError, suggest
from impasto.validation import why_not_a_file

MODEL_FORMAT = "impasto-model/1"
_META_KEY = "impasto"


def write_safetensors(path: str | os.PathLike[str], tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` (moved to the CPU) with string ``metadata`` to ``path`` atomically, readable by all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a model file is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_model(path: str | os.PathLike[str], state: dict[str, Tensor], meta: dict[str, Any], *, fp16: bool = False) -> Path:
    """Write ``state`` (optionally as fp16) and ``meta`` to ``path`` atomically."""
    tensors = {k: v.half() if fp16 and v.is_floating_point() else v for k, v in state.items()}
    return write_safetensors(path, tensors, {_META_KEY: json.dumps({"format": MODEL_FORMAT, **meta})})


def load_model(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(float32 state, metadata) of an impasto model file; ``WeightsError`` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model file {path} {why_not_a_file(path)}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw_meta = (handle.metadata() or {}).get(_META_KEY)
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not a safetensors model file ({exc}); "
                           "train one with 'impasto train feedforward' or pick one from 'impasto models list'") from exc
    if raw_meta is None:
        raise WeightsError(f"{path} is a safetensors file but not an impasto model (no '{_META_KEY}' metadata)")
    meta = json.loads(raw_meta)
    if meta.get("format") != MODEL_FORMAT:
        raise WeightsError(f"{path} has model format {meta.get('format')!r}; this impasto reads {MODEL_FORMAT}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, meta


def shipped_dir() -> Path:
    return Path(str(resources.files("impasto") / "models"))


def shipped_models() -> dict[str, Path]:
    """Name -> file of every model shipped inside the package."""
    folder = shipped_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.safetensors"))}


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A model file's metadata without loading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads((handle.metadata() or {}).get(_META_KEY, "{}"))


def shipped_of_kind(architecture: str) -> dict[str, Path]:
    """The shipped models whose architecture name is ``architecture`` (e.g. "johnson-in", "vgg-decoder")."""
    return {n: p for n, p in shipped_models().items() if read_meta(p).get("architecture", {}).get("name") == architecture}


def resolve_model(name_or_path: str) -> Path:
    """A shipped model's name or a file path -> the file; unknown names suggest the nearest."""
    shipped = shipped_models()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix.lower() in (".safetensors", ".onnx"):
        raise InvalidOptionError(f"model file {path} {why_not_a_file(path)}")
    raise InvalidOptionError(
        f"no model named or at '{name_or_path}'; shipped models: {', '.join(shipped) or 'none'}"
        f"{suggest(name_or_path, shipped)} (or give a .safetensors file)"
    )


def model_tensor_dtype(path: str | os.PathLike[str]) -> torch.dtype:
    """The stored dtype of a model file's first floating tensor (fp16 for shipped models)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
            t = handle.get_tensor(key)
            if t.is_floating_point():
                return t.dtype
    return torch.float32
