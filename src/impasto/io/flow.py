"""Middlebury ``.flo`` optical-flow files: float32 magic 202021.25, int32 width, int32 height, then
H x W x 2 float32 (u, v) in row order, little-endian."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from impasto.errors import InvalidOptionError

FLO_MAGIC = 202021.25
MAX_FLO_PIXELS = 1 << 26  # a header claiming more is damaged, not a real flow


def read_flo(path: str | os.PathLike[str]) -> Tensor:
    """A .flo file -> (1, 2, H, W) float32 flow. Raises InvalidOptionError for a damaged or foreign file."""
    data = Path(path).read_bytes()
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != np.float32(FLO_MAGIC):
        raise InvalidOptionError(f"{path} is not a Middlebury .flo file (bad magic number)")
    w, h = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    if w <= 0 or h <= 0 or w * h > MAX_FLO_PIXELS:
        raise InvalidOptionError(f"{path}: implausible flow size {w}x{h}")
    need = 12 + w * h * 8
    if len(data) != need:
        raise InvalidOptionError(f"{path} holds {len(data)} bytes; a {w}x{h} flow needs {need} (truncated or damaged)")
    flow = np.frombuffer(data[12:], "<f4").reshape(h, w, 2)
    return torch.from_numpy(flow.copy()).permute(2, 0, 1).unsqueeze(0).contiguous()


def write_flo(flow: Tensor, path: str | os.PathLike[str]) -> Path:
    """Write a (1, 2, H, W) flow as a .flo file (atomically: a temporary file renamed into place)."""
    if flow.dim() != 4 or flow.shape[:2] != (1, 2):
        raise InvalidOptionError(f"flow must be a (1, 2, H, W) tensor, got {tuple(flow.shape)}")
    path = Path(path)
    _, _, h, w = flow.shape
    body = flow[0].permute(1, 2, 0).detach().float().contiguous().numpy().astype("<f4")
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(np.array([FLO_MAGIC], "<f4").tobytes() + np.array([w, h], "<i4").tobytes() + body.tobytes())
    os.replace(tmp, path)
    return path


class FlowCache:
    """Optical flows kept on disk as .flo files beside a video's frames, keyed by the two frames' pixels and
    the flow method, so a resumed run or a later pass never estimates the same flow twice. A damaged file
    is estimated again and replaced."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(a: Tensor, b: Tensor, method: str) -> str:
        digest = hashlib.sha256(method.encode())
        for frame in (a, b):
            digest.update(str(tuple(frame.shape)).encode())
            digest.update(frame.detach().float().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def get(self, a: Tensor, b: Tensor, method: str, estimate: Callable[[Tensor, Tensor, str], Tensor]) -> Tensor:
        """The flow a -> b by ``method``: from the cache, else ``estimate(a, b, method)``, stored."""
        path = self.folder / f"{self.key(a, b, method)[:32]}.flo"
        if path.is_file():
            try:
                return read_flo(path)
            except InvalidOptionError:
                pass
        flow = estimate(a, b, method)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_flo(flow, path)
        return flow
