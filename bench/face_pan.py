"""How steadily the face boxes (``impasto.features.face_boxes``) find a face from frame to frame.

A slow pan and zoom over a still portrait: frame i crops 85 % -> 95 % of the picture, its corner moving from
top-right to bottom-left, resized to 512 px with a little per-frame noise (sensor noise differs per frame). A
face that is found in some frames and missed in others would switch ``--protect-faces`` on and off in video,
which is why stylize-video leaves it off unless asked. Prints, per photo, the frames with a face (F) and
without (.).

    IMPASTO_OFFLINE=1 PYTHONPATH=src python bench/face_pan.py [--frames 40] [PHOTO ...]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

DATA = Path(os.environ.get("IMPASTO_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
PORTRAITS = ("content/kodim04.jpg", "content/skimage_astronaut.jpg", "faces/obama_official_portrait_2012.jpg",
             "faces/biden_official_vp_portrait_2013.jpg", "faces/grace_hopper_us_navy_1984.jpg")


def pan_frames(image: Tensor, n: int, seed: int = 0) -> list[Tensor]:
    """``n`` frames of a slow pan and zoom over ``image`` (1x3xHxW in [0, 1]), each 512 px on its long side."""
    generator = torch.Generator().manual_seed(seed)
    h, w = image.shape[-2:]
    frames = []
    for i in range(n):
        t = i / max(n - 1, 1)
        scale = 0.85 + 0.1 * t
        ch, cw = int(h * scale), int(w * scale)
        y, x = int((h - ch) * t), int((w - cw) * (1 - t))
        crop = image[..., y:y + ch, x:x + cw]
        size = (round(ch * 512 / max(ch, cw)), round(cw * 512 / max(ch, cw)))
        frame = F.interpolate(crop, size=size, mode="bilinear", antialias=True, align_corners=False)
        frames.append((frame + 0.01 * torch.randn(frame.shape, generator=generator)).clamp(0, 1))
    return frames


def strip(image: Tensor, n: int) -> str:
    from impasto.features.face_boxes import face_boxes

    return "".join("F" if face_boxes(frame) else "." for frame in pan_frames(image, n))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="*", help=f"photos (default: five portraits of {DATA})")
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args(argv)
    from impasto.io.image import load_image
    from impasto.ops.geometry import resize_long_side

    for name in args.photos or [str(DATA / p) for p in PORTRAITS]:
        found = strip(resize_long_side(load_image(name), 640), args.frames)
        print(f"{Path(name).name:45s} {found.count('F'):3d}/{len(found)}  {found}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
