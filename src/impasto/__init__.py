"""impasto: neural style transfer.

    >>> import impasto
    >>> out = impasto.stylize("photo.jpg", "painting.jpg")   # doctest: +SKIP
    >>> out.save("result.png")                               # doctest: +SKIP

Nothing runs at import time beyond importing torch.
"""

from impasto.api import METHODS, Stylized, load_recipe, prepare, rerun, stylize, stylize_video
from impasto.errors import (
    CancelledError,
    CheckpointError,
    ImpastoError,
    InvalidImageError,
    InvalidOptionError,
    WeightsError,
    WeightsUnavailableError,
)
from impasto.events import CancelToken, Done, Progress, Stage
from impasto.io.image import load_image, save_image

__all__ = [
    "METHODS",
    "CancelToken",
    "CancelledError",
    "CheckpointError",
    "Done",
    "ImpastoError",
    "InvalidImageError",
    "InvalidOptionError",
    "Progress",
    "Stage",
    "Stylized",
    "WeightsError",
    "WeightsUnavailableError",
    "load_image",
    "load_recipe",
    "prepare",
    "rerun",
    "save_image",
    "stylize",
    "stylize_video",
]
