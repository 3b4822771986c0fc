"""The public entry point: ``stylize`` and the METHODS registry, plus recipes.

A recipe is a JSON dict saved inside every output image. It records the method, every
option, the seed, the inputs (path and a hash of their decoded pixels), the weights' hash and
the versions, so that :func:`rerun` reproduces the image on the same machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from impasto.errors import InvalidOptionError, suggest
from impasto.events import Callback, CancelToken
from impasto.io.image import load_image, load_image_with_alpha, read_recipe, save_image, to_pil
from impasto.methods import arbitrary, feedforward, optimization, photoreal, wct
from impasto.ops.geometry import resize
from impasto.options import options_from_dict

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray | Tensor

METHODS: dict[str, types.ModuleType] = {
    "optimization": optimization, "feedforward": feedforward, "adain": arbitrary, "wct": wct, "photowct": photoreal,
}
RECIPE_FORMAT = 1


def _version() -> str:
    try:
        return metadata.version("impasto")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def pixel_hash(image: Tensor) -> str:
    """sha256 of an image's decoded float32 pixels (independent of file format)."""
    return hashlib.sha256(image.detach().float().contiguous().numpy().tobytes()).hexdigest()


def _load(source: ImageInput, keep_alpha: bool = False) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
    is_path = isinstance(source, (str, os.PathLike))
    if keep_alpha:
        image, alpha = load_image_with_alpha(source)
        if alpha is not None:  # straight colour under transparent pixels is arbitrary: composite on white
            image = image * alpha + (1 - alpha)
    else:
        image, alpha = load_image(source), None
    info = {"path": str(Path(source).resolve()) if is_path else None, "pixels_sha256": pixel_hash(image)}
    return image, alpha, info


@dataclass
class Stylized:
    """A stylised image with its recipe. ``save`` embeds the recipe in the file."""

    image: Tensor  # (1, 3, H, W) float32 in [0, 1]
    recipe: dict[str, Any]
    alpha: Tensor | None = None  # (1, 1, H, W) when the content's transparency is kept
    losses: dict[str, float] = field(default_factory=dict)

    def save(self, path: str | os.PathLike[str], quality: int = 95) -> Path:
        return save_image(self.image, path, recipe=self.recipe, alpha=self.alpha, quality=quality)

    def to_pil(self) -> Image.Image:
        return to_pil(self.image)


def resolve_options(method: str, options: Any) -> Any:
    """Options instance for ``method`` from None, a dict or an instance of its Options class."""
    if method not in METHODS:
        raise InvalidOptionError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}.{suggest(method, METHODS)}")
    cls = METHODS[method].Options
    if options is None:
        return cls()
    if isinstance(options, dict):
        return options_from_dict(cls, options)
    if not isinstance(options, cls):
        raise InvalidOptionError(f"options for method '{method}' must be {cls.__module__}.Options or a dict, got {type(options).__name__}")
    return options


def stylize(
    content: ImageInput,
    style: ImageInput | Sequence[ImageInput] | None = None,
    method: str = "optimization",
    options: Any = None,
    *,
    callback: Callback | None = None,
    cancel: CancelToken | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    keep_alpha: bool = False,
) -> Stylized:
    """Stylise ``content`` with one or several ``style`` images (none for trained methods: feedforward).

    Images may be paths, PIL images, numpy arrays or tensors (see ``io.image.load_image``).
    ``options``: the method's Options, a dict of its fields, or None for the defaults.
    Progress arrives as events through ``callback``; ``cancel.cancel()`` stops the run
    (``CancelledError``) after writing the checkpoint, if one is set. With ``keep_alpha`` the
    content's transparency is re-attached to the result.
    """
    opts = resolve_options(method, options)
    styles_in = [] if style is None else list(style) if isinstance(style, (list, tuple)) else [style]
    content_t, alpha, content_info = _load(content, keep_alpha)
    loaded = [_load(s) for s in styles_in]
    result = METHODS[method].run(
        content_t, [s[0] for s in loaded], opts, callback=callback, cancel=cancel,
        checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
    )
    if alpha is not None:
        alpha = resize(alpha, tuple(result.image.shape[-2:]))
    recipe = {
        "impasto_recipe": RECIPE_FORMAT,
        "method": method,
        "options": dataclasses.asdict(opts),
        "seed": opts.seed,
        "inputs": {"content": content_info, "styles": [s[2] for s in loaded], "keep_alpha": keep_alpha},
        "weights": {"name": result.weights, "sha256": result.weights_sha256},
        "versions": {"impasto": _version(), "torch": torch.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "size": list(result.image.shape[-2:]),
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
    }
    return Stylized(image=result.image, recipe=recipe, alpha=alpha, losses=result.final_losses)


def load_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The recipe embedded in an impasto output image."""
    recipe = read_recipe(path)
    if recipe.get("impasto_recipe") != RECIPE_FORMAT:
        raise InvalidOptionError(f"{path} holds a recipe of an unknown format ({recipe.get('impasto_recipe')!r})")
    return recipe


def rerun(recipe: dict[str, Any], *, callback: Callback | None = None, cancel: CancelToken | None = None) -> Stylized:
    """Run a recipe again from its recorded input files; refuses inputs whose pixels changed."""
    inputs = recipe["inputs"]
    paths = [inputs["content"]["path"], *(s["path"] for s in inputs["styles"])]
    if any(p is None for p in paths):
        raise InvalidOptionError("this recipe was made from in-memory images, so it cannot be re-run from files")
    for entry in [inputs["content"], *inputs["styles"]]:
        if not Path(entry["path"]).is_file():
            raise InvalidOptionError(f"input {entry['path']} named by the recipe no longer exists")
        if pixel_hash(load_image(entry["path"])) != entry["pixels_sha256"]:
            raise InvalidOptionError(f"input {entry['path']} changed since the recipe was made (pixel hash differs)")
    options = dict(recipe["options"])
    if options.get("encoder") == "auto":  # pin the weights that were actually used
        options["encoder"] = recipe["weights"]["name"]
    return stylize(
        paths[0], paths[1:], method=recipe["method"], options=options,
        callback=callback, cancel=cancel, keep_alpha=bool(inputs.get("keep_alpha", False)),
    )


def stylize_video(
    frames: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    style: ImageInput | Sequence[ImageInput] | None = None,
    method: str = "feedforward",
    options: Any = None,
    *,
    callback: Callback | None = None,
    on_frame: Callable[[int, int], None] | None = None,
    cancel: CancelToken | None = None,
) -> list[Path]:
    """Stylise every frame of a folder (or GIF) independently into ``output_dir`` as PNGs.

    Method-agnostic: any method in METHODS runs per frame (temporal consistency is a separate
    layer, to come). Frames already present in ``output_dir`` are kept, so an interrupted run
    continues where it stopped. Each PNG carries its recipe.
    """
    from impasto.io.video import frame_path, frame_sources, read_frames

    opts = resolve_options(method, options)
    names = frame_sources(frames)
    styles_in = [] if style is None else list(style) if isinstance(style, (list, tuple)) else [style]
    loaded = [_load(s) for s in styles_in]
    written: list[Path] = []
    for index, frame in enumerate(read_frames(frames)):
        target = frame_path(output_dir, index)
        if on_frame:
            on_frame(index, len(names))
        if target.exists():  # done by an earlier, interrupted run
            written.append(target)
            continue
        if cancel is not None:
            cancel.raise_if_cancelled()
        result = METHODS[method].run(frame, [s[0] for s in loaded], opts, callback=callback, cancel=cancel)
        recipe = {"impasto_recipe": RECIPE_FORMAT, "method": method, "options": dataclasses.asdict(opts),
                  "seed": opts.seed, "inputs": {"frames": str(frames), "frame": names[index],
                                                "styles": [s[2] for s in loaded]},
                  "weights": {"name": result.weights, "sha256": result.weights_sha256},
                  "versions": {"impasto": _version(), "torch": torch.__version__}}
        written.append(save_image(result.image, target, recipe=recipe))
    return written
