"""Checkpoint files for resumable runs: written atomically, read without unpickling code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from impasto.errors import CheckpointError
from impasto.validation import why_not_a_file


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists/dicts of them) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".ckpt.tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; raises ``CheckpointError`` when unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} {why_not_a_file(path)}; run without --resume to start fresh")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc}); delete it to start fresh") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not an impasto checkpoint")
    return state
