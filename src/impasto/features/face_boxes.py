"""Where the faces are in a photo, as boxes and as a soft weight map, with no optional extra.

The detector is OpenCV's frontal-face Haar cascade (Viola & Jones 2001; the cascade files ship inside the
opencv-python-headless wheel, so this works offline), run on the photo scaled to 512 px with its histogram
equalised. A Haar cascade alone fires on leaves, insects and water (6 of 40 training photos without a face
gave a box at OpenCV's usual settings); a box is therefore kept only when OpenCV's eye cascade finds an eye in
its upper 5/8, and at least 8 neighbouring detections back it. Over the 321 photos of ../shared/data
(content, faces, train) that kept every frontal face (kodim04, astronaut, the three official portraits, a
Bedouin portrait) and one false box, on water drops. About 0.1 s a photo on one core. Faces turned far from the camera or in deep shadow are missed: the map is
then zero and a caller behaves as without it.

For the label-map face parts of the exemplar method (eyes, lips, brows), see ``features.faces`` (MediaPipe).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch import Tensor

from impasto.errors import InvalidOptionError, WeightsUnavailableError

__all__ = ["DETECT_SIDE", "Box", "face_boxes", "face_map"]

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the width and height
DETECT_SIDE = 512  # long side the detector sees, photos shrunk or enlarged; a face needs about 80 px there (the eye check)


@functools.lru_cache(maxsize=1)
def _cascades():  # noqa: ANN202 (OpenCV objects)
    import cv2  # imported on use: a library import must not pay for OpenCV

    folder = cv2.data.haarcascades
    face = cv2.CascadeClassifier(os.path.join(folder, "haarcascade_frontalface_default.xml"))
    eye = cv2.CascadeClassifier(os.path.join(folder, "haarcascade_eye.xml"))
    if face.empty() or eye.empty():
        raise WeightsUnavailableError(f"OpenCV's Haar cascades could not be read from {folder}; reinstall "
                                      "opencv-python-headless (a 4.x version: OpenCV 5 has no cascades)")
    return cv2, face, eye


def _gray(image: Tensor, side: int) -> np.ndarray:
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise InvalidOptionError(f"face detection takes a (1, 3, H, W) image, got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    scale = side / max(h, w)
    x = image.detach().float().clamp(0, 1)
    if scale != 1:  # small photos are enlarged: the cascades' windows start at 24 px (faces) and 20 px (eyes)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = (torch.nn.functional.interpolate(x, size=size, mode="area") if scale < 1 else
             torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False))
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return ((x * weights).sum(1)[0] * 255 + 0.5).to(torch.uint8).numpy()


def face_boxes(image: Tensor) -> list[Box]:
    """Frontal faces in ``image`` (1, 3, H, W) in [0, 1], each with an eye found in its upper 5/8, as
    fractions of the image's width and height, largest first."""
    cv2, face, eye = _cascades()
    gray = cv2.equalizeHist(_gray(image, DETECT_SIDE))
    h, w = gray.shape
    least = max(16, min(h, w) // 8)
    found = face.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=8, minSize=(least, least))
    boxes = []
    for x, y, bw, bh in (tuple(int(v) for v in r) for r in found):
        upper = gray[y:y + bh * 5 // 8, x:x + bw]
        eyes = eye.detectMultiScale(upper, scaleFactor=1.1, minNeighbors=4, minSize=(max(4, bw // 10),) * 2)
        if len(eyes):
            boxes.append((bw * bh, (x / w, y / h, (x + bw) / w, (y + bh) / h)))
    return [b for _, b in sorted(boxes, key=lambda t: -t[0])]


def face_map(boxes: list[Box], size: tuple[int, int], feather: float = 0.3) -> Tensor:
    """A (1, 1, H, W) map in [0, 1] for an image of ``size`` (H, W): 1 over each face, 0 away from all.

    A Haar box spans brows to mouth; each face is an ellipse around it, 1.1 box widths wide and 1.5 box
    heights tall (forehead and chin), its centre a tenth of the box below the box's, fading to 0 over the
    outer ``feather`` of its radius. Overlapping faces take the maximum."""
    h, w = size
    out = torch.zeros(1, 1, h, w)
    if not boxes:
        return out
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    for x0, y0, x1, y1 in boxes:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.1 * (y1 - y0)
        rx, ry = 0.55 * (x1 - x0), 0.75 * (y1 - y0)
        r = (((xs[None, :] - cx) / rx) ** 2 + ((ys[:, None] - cy) / ry) ** 2).sqrt()
        out[0, 0] = torch.maximum(out[0, 0], ((1 - r) / feather).clamp(0, 1))
    return out
