"""Frame sequences: a folder of numbered images or an animated GIF in, a folder of PNG frames out."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageSequence
from torch import Tensor

from impasto.errors import InvalidImageError, InvalidOptionError
from impasto.io.dataset import IMAGE_SUFFIXES
from impasto.io.image import load_image

VIDEO_HINT = "extract the frames first, e.g. 'ffmpeg -i clip.mp4 frames/%05d.png', and pass the folder"


def frame_sources(source: str | os.PathLike[str]) -> list[str]:
    """Names of the frames of ``source`` in order (file paths for a folder, 'gif:N' for GIF frames)."""
    path = Path(source)
    if path.is_dir():
        frames = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not frames:
            raise InvalidOptionError(f"{path} holds no image frames ({', '.join(IMAGE_SUFFIXES)})")
        return frames
    if path.is_file() and path.suffix.lower() == ".gif":
        with Image.open(path) as im:
            return [f"gif:{i}" for i in range(getattr(im, "n_frames", 1))]
    if path.is_file():
        raise InvalidOptionError(f"{path}: video files are not decoded by impasto yet; {VIDEO_HINT}")
    raise InvalidOptionError(f"no such frame folder or GIF: {path}")


def read_frames(source: str | os.PathLike[str]) -> Iterator[Tensor]:
    """Yield each frame as (1, 3, H, W) float in [0, 1], one at a time (constant memory)."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".gif":
        try:
            with Image.open(path) as im:
                for frame in ImageSequence.Iterator(im):
                    yield load_image(frame.convert("RGBA"))
        except OSError as exc:
            raise InvalidImageError(f"cannot decode '{path}': {exc}") from exc
        return
    for name in frame_sources(path):
        yield load_image(name)


def frame_path(out_dir: str | os.PathLike[str], index: int) -> Path:
    return Path(out_dir) / f"frame_{index + 1:05d}.png"
