"""Frame sequences: a folder of numbered images or an animated GIF in, a folder of PNG frames out."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from torch import Tensor

from impasto.errors import InvalidImageError, InvalidOptionError
from impasto.io.dataset import IMAGE_SUFFIXES
from impasto.io.image import count_frames, iter_frames, load_image

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
        return [f"gif:{i}" for i in range(count_frames(path))]
    if path.is_file():
        raise InvalidOptionError(f"{path}: video files are not decoded by impasto yet; {VIDEO_HINT}")
    raise InvalidOptionError(f"no such frame folder or GIF: {path}")


def read_frames(source: str | os.PathLike[str]) -> Iterator[tuple[str, Tensor | InvalidImageError]]:
    """Yield (name, frame) in order, each frame (1, 3, H, W) float in [0, 1], one at a time (constant memory).

    A frame that cannot be decoded is yielded as its ``InvalidImageError`` instead, so the caller
    decides whether to stop, skip or copy. In a GIF, frames after an undecodable one cannot be
    reached; each of them is yielded as an error too.
    """
    path = Path(source)
    names = frame_sources(path)
    if path.is_file():  # a GIF: decoded in one pass
        frames = iter_frames(path)
        for index, name in enumerate(names):
            try:
                yield name, next(frames)
            except StopIteration:
                yield name, InvalidImageError(f"'{path}' frame {index + 1}: missing (the file ends early)")
            except InvalidImageError as exc:
                yield name, exc
                for later in names[index + 1:]:
                    yield later, InvalidImageError(f"'{path}' {later}: unreachable after the undecodable frame {index + 1}")
                return
        return
    for name in names:
        try:
            yield name, load_image(name)
        except InvalidImageError as exc:
            yield name, exc


def frame_path(out_dir: str | os.PathLike[str], index: int) -> Path:
    return Path(out_dir) / f"frame_{index + 1:05d}.png"
