"""Face parts as a label map, from MediaPipe's FaceMesh landmarks and selfie segmentation.

Song et al. (2017) match facial components between the photo and the exemplars; this module draws those
components so the label-map machinery (``ops.regions``) can restrict each part of the photo to the same
part of the exemplars. The models (FaceMesh with attention: 478 landmarks; selfie segmentation) ship
inside the ``mediapipe`` wheel, so this works offline. It is an optional extra: ``bash scripts/setup.sh
--faces`` installs it (MediaPipe 0.10.21 rebuilt for numpy 2, without the dependencies it does not use).

Parts, painted in this order (later ones on top), each a flat colour of ``PARTS``:
background (not a person), person (hair, neck, clothes: the segmentation minus the face), face (skin:
the convex hull of the face oval), brows, eyes, lips (each the convex hull of its landmarks).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from impasto.errors import FacePartsUnavailableError, InvalidImageError, NoFaceError

__all__ = ["PARTS", "FacePartsUnavailableError", "NoFaceError", "available", "face_parts", "part_share"]

PARTS: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "person": (128, 128, 128),
    "face": (255, 200, 150),
    "brows": (120, 60, 20),
    "eyes": (0, 120, 255),
    "lips": (220, 30, 60),
}
INSTALL_HINT = "install the face-parts extra with 'bash scripts/setup.sh --faces' (MediaPipe, models included)"


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """MediaPipe's C++ code logs to the process's stderr (TFLite delegate, absl warnings, a protobuf
    message at import); keep that out of the user's terminal. File descriptor 2 is the whole process's,
    so one swap at a time (a lock), and other threads' stderr is silent for those ~0.2 s too; a fatal
    MediaPipe error inside would lose its message (run with IMPASTO_MEDIAPIPE_LOGS=1 to see them)."""
    if os.environ.get("IMPASTO_MEDIAPIPE_LOGS"):
        yield
        return
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all
            saved = None
        if saved is None:
            yield
            return
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def available() -> bool:
    """Whether the MediaPipe extra can be imported."""
    try:
        _mediapipe()
    except FacePartsUnavailableError:
        return False
    return True


def _mediapipe():  # noqa: ANN202 (module objects)
    try:
        with _quiet_stderr():
            from mediapipe.python import solution_base
            from mediapipe.python.solutions import face_mesh_connections
    except ImportError as e:
        raise FacePartsUnavailableError(f"face parts need MediaPipe, which is not installed ({e}); {INSTALL_HINT}") from None
    return solution_base, face_mesh_connections


def _uint8_rgb(image: Tensor) -> np.ndarray:
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise InvalidImageError(f"expected one RGB image (1, 3, H, W), got {tuple(image.shape)}")
    return np.ascontiguousarray((image[0].detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy())


def _part_indices(connections) -> dict[str, list[int]]:  # noqa: ANN001
    def ids(*sets: frozenset) -> list[int]:
        return sorted({i for s in sets for edge in s for i in edge})

    c = connections
    return {"face": ids(c.FACEMESH_FACE_OVAL), "brows": ids(c.FACEMESH_LEFT_EYEBROW), "brows_r": ids(c.FACEMESH_RIGHT_EYEBROW),
            "eyes": ids(c.FACEMESH_LEFT_EYE), "eyes_r": ids(c.FACEMESH_RIGHT_EYE), "lips": ids(c.FACEMESH_LIPS)}


def face_parts(image: Tensor, *, max_faces: int = 4, require_face: bool = True) -> Tensor:
    """(1, 3, H, W) RGB in [0, 1] -> (1, 3, H, W) label image in [0, 1] with the flat colours of ``PARTS``.

    Every face found (up to ``max_faces``) is drawn. No face: ``NoFaceError`` if ``require_face``, else
    the map has only background and person (paintings the face model does not recognise)."""
    import cv2

    solution_base, connections = _mediapipe()
    rgb = _uint8_rgb(image)
    h, w = rgb.shape[:2]
    with _quiet_stderr(), contextlib.ExitStack() as graphs:  # each graph closed however this ends
        mesh = graphs.enter_context(solution_base.SolutionBase(
            binary_graph_path="mediapipe/modules/face_landmark/face_landmark_front_cpu.binarypb",
            side_inputs={"num_faces": max_faces, "with_attention": True, "use_prev_landmarks": False},
            outputs=["multi_face_landmarks"]))
        seg = graphs.enter_context(solution_base.SolutionBase(
            binary_graph_path="mediapipe/modules/selfie_segmentation/selfie_segmentation_cpu.binarypb",
            side_inputs={"model_selection": 0}, outputs=["segmentation_mask"]))
        faces = mesh.process({"image": rgb}).multi_face_landmarks or []
        person = seg.process({"image": rgb}).segmentation_mask
    if not faces and require_face:
        raise NoFaceError(f"no face found in the {w}x{h} image")
    out = np.zeros((h, w, 3), dtype=np.uint8)
    out[np.asarray(person) > 0.5] = PARTS["person"]
    parts = _part_indices(connections)
    for face in faces:
        points = np.array([(p.x * w, p.y * h) for p in face.landmark], dtype=np.float32)
        for key in ("face", "brows", "brows_r", "eyes", "eyes_r", "lips"):
            hull = cv2.convexHull(points[parts[key]]).round().astype(np.int32)
            cv2.fillConvexPoly(out, hull, PARTS[key.removesuffix("_r")])
    return torch.from_numpy(out).permute(2, 0, 1).unsqueeze(0).float().div(255).contiguous()


def part_share(labels: Tensor) -> dict[str, float]:
    """Share of the pixels of a ``face_parts`` label image that each part covers."""
    codes = (labels[0] * 255).round().long()
    total = codes.shape[-1] * codes.shape[-2]
    return {name: float(((codes[0] == r) & (codes[1] == g) & (codes[2] == b)).sum()) / total
            for name, (r, g, b) in PARTS.items()}
