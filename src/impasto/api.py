"""The public entry point: ``stylize`` and the METHODS registry, plus recipes.

A recipe is a JSON dict saved inside every output image. It records the method, every
option, the seed, the inputs (path and a hash of their decoded pixels), the weights' hash and
the versions, so that :func:`rerun` reproduces the image on the same machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from impasto.errors import ImageSizeError, InvalidImageError, InvalidOptionError, suggest
from impasto.events import Callback, CancelToken
from impasto.io.image import load_image, load_image_with_alpha, read_recipe, save_image, to_pil
from impasto.losses.registry import STYLE_LOSSES, parse_style_losses
from impasto.methods import arbitrary, exemplars, feedforward, optimization, photoreal, wct
from impasto.ops.geometry import resize
from impasto.options import options_from_dict

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray | Tensor

METHODS: dict[str, types.ModuleType] = {
    "optimization": optimization, "feedforward": feedforward, "adain": arbitrary, "wct": wct, "photowct": photoreal,
    "exemplars": exemplars,
}
RECIPE_FORMAT = 1


def _version() -> str:
    try:
        return metadata.version("impasto")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def _versions() -> dict[str, str]:
    """What a recipe records of the software: impasto, torch, Python, and OpenCV where it was loaded (face boxes,
    optical flow: its cascades and flow can change between releases)."""
    versions = {"impasto": _version(), "torch": torch.__version__, "python": platform.python_version()}
    if "cv2" in sys.modules:
        versions["opencv"] = str(getattr(sys.modules["cv2"], "__version__", "unknown"))
    return versions


def _faces_entry(result: Any) -> dict[str, Any]:
    """A recipe's ``faces``: the boxes --protect-faces acted on; none when none was found (it ran as with 0)."""
    faces = getattr(result, "faces", None)
    return {"faces": [[round(float(v), 4) for v in box] for box in faces]} if faces else {}


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


def check_call(method: str, n_styles: int, *, checkpoint: Any = None, resume: bool = False) -> None:
    """Refuse arguments a method would silently ignore: style images for a trained network,
    a checkpoint for a method that runs in one pass."""
    module = METHODS[method]
    if n_styles and not getattr(module, "TAKES_STYLE", True):
        raise InvalidOptionError(f"--method {method} takes no style image (the style is in its --model); "
                                 "drop the STYLE argument(s), or pick a model with --model")
    if (checkpoint is not None or resume) and not getattr(module, "RESUMABLE", False):
        resumable = ", ".join(name for name, m in METHODS.items() if getattr(m, "RESUMABLE", False))
        raise InvalidOptionError(f"--method {method} runs in one pass and cannot checkpoint or resume; "
                                 f"drop --checkpoint/--resume (methods that can: {resumable})")


class _naming_inputs:
    """Re-raise an ImageSizeError about 'content image' / 'style image N' with that input's file name."""

    def __init__(self, content: ImageInput, styles: Sequence[ImageInput]) -> None:
        self.names = {"content image": content, **{f"style image {i + 1}": s for i, s in enumerate(styles)}}

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, ImageSizeError):
            source = self.names.get(exc.which)
            if isinstance(source, (str, os.PathLike)):
                raise ImageSizeError(f"{os.fspath(source)}: {exc}", which=exc.which) from None
        return False


def prepare(style: ImageInput | Sequence[ImageInput] | None = None, method: str = "optimization", options: Any = None) -> Any:
    """Load a method's weights and compute its style targets once: the returned callable stylises
    content tensors ((1, 3, H, W) in [0, 1]) one after another (``callback=``, ``cancel=``; the
    optimisation methods also take ``init=``, ``iterations=`` and ``extra_loss=``) and returns a
    ``Result``. What video, batch jobs and a service worker use. ``options`` as for ``stylize``: a video
    caller wanting stylize_video's defaults passes ``video_options(method, fields)`` (the optimisation's face
    protection is on for pictures, off for video)."""
    opts = resolve_options(method, options)
    styles_in = [] if style is None else list(style) if isinstance(style, (list, tuple)) else [style]
    check_call(method, len(styles_in))
    with _naming_inputs("", styles_in):
        return METHODS[method].prepare([_load(s)[0] for s in styles_in], opts)


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
    check_call(method, len(styles_in), checkpoint=checkpoint, resume=resume)
    content_t, alpha, content_info = _load(content, keep_alpha)
    loaded = [_load(s) for s in styles_in]
    with _naming_inputs(content, styles_in):
        module = METHODS[method]
        resumable = {"checkpoint": checkpoint, "checkpoint_every": checkpoint_every, "resume": resume} \
            if getattr(module, "RESUMABLE", False) else {}  # check_call refused them for the others
        result = module.run(content_t, [s[0] for s in loaded], opts, callback=callback, cancel=cancel, **resumable)
    if alpha is not None:
        alpha = resize(alpha, tuple(result.image.shape[-2:]))
    recipe = {
        "impasto_recipe": RECIPE_FORMAT,
        "method": method,
        "options": dataclasses.asdict(opts),
        "seed": opts.seed,
        "style_loss_gains": {name: loss.gain for name, loss in STYLE_LOSSES.items()},
        "inputs": {"content": content_info, "styles": [s[2] for s in loaded], "keep_alpha": keep_alpha},
        "weights": {"name": result.weights, "sha256": result.weights_sha256},
        "versions": _versions(),
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "size": list(result.image.shape[-2:]),
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
    }
    recipe.update(_faces_entry(result))
    return Stylized(image=result.image, recipe=recipe, alpha=alpha, losses=result.final_losses)


def load_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The recipe embedded in an impasto output image, checked to have the shape impasto writes."""
    try:
        recipe = read_recipe(path)
    except RecursionError:
        raise InvalidOptionError(f"{path}: its recipe is nested too deeply to be one impasto wrote") from None
    if recipe.get("impasto_recipe") != RECIPE_FORMAT:
        raise InvalidOptionError(f"{path} holds a recipe of an unknown format ({recipe.get('impasto_recipe')!r})")
    check_recipe(recipe, str(path))
    return recipe


def check_recipe(recipe: dict[str, Any], where: str = "the recipe") -> None:
    """Raise InvalidOptionError naming the first missing or mistyped entry of a recipe (before any work)."""

    def need(container: Any, key: str, kind: type | tuple[type, ...], label: str) -> Any:
        value = container.get(key) if isinstance(container, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise InvalidOptionError(f"{where}: the recipe's '{label}' is missing or not {_kind_name(kind)}; "
                                     "it was not written by impasto or was edited")
        return value

    method = need(recipe, "method", str, "method")
    if method not in METHODS:
        raise InvalidOptionError(f"{where}: the recipe names an unknown method '{method}' ({', '.join(METHODS)})")
    need(recipe, "options", dict, "options")
    inputs = need(recipe, "inputs", dict, "inputs")
    content = need(inputs, "content", dict, "inputs.content")
    need(content, "pixels_sha256", str, "inputs.content.pixels_sha256")
    styles = need(inputs, "styles", list, "inputs.styles")
    for i, entry in enumerate(styles):
        need(entry if isinstance(entry, dict) else {}, "pixels_sha256", str, f"inputs.styles[{i}].pixels_sha256")
    need(recipe, "weights", dict, "weights")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({dict: "an object", list: "a list", str: "a string", bool: "true/false"}.get(k, k.__name__) for k in kinds)


# Options added later whose default differs from what older versions did: a recipe without the field
# was made with this value (MRF matched every step before --match-every existed).
RECIPE_DEFAULTS_BEFORE: dict[str, dict[str, Any]] = {"optimization": {"match_every": 1, "protect_faces": 0.0},
                                                     "exemplars": {"match_every": 1}}
# The style losses' gains of a recipe that does not record them (before 2026-12-04): mrf's was 0.01, the
# others' 1 (the gain multiplies a loss's term, so a recipe holds only half of its strength without it).
RECIPE_GAINS_BEFORE: dict[str, float] = {"mrf": 0.01}


def without_added_defaults(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` (as recorded, e.g. ``dataclasses.asdict``) without the options added later that hold the value
    older versions ran with (``RECIPE_DEFAULTS_BEFORE``): two records that differ only there make the same
    picture, so caches compare these (a new option does not invalidate what was made before it)."""
    before = RECIPE_DEFAULTS_BEFORE.get(method, {})
    inert = getattr(METHODS.get(method), "inert_options", None)  # options that cannot change this run's picture
    options = inert(dict(options)) if inert is not None else options
    return {k: v for k, v in options.items() if not (k in before and v == before[k])}


def _same_strength(method: str, options: dict[str, Any], gains: dict[str, Any]) -> dict[str, Any]:
    """``options`` of a recipe with the weights of its style losses rescaled so that each term is as strong as
    when the recipe was made, under the gains recorded in it (``gains``), where a loss's gain changed since."""
    spec = options.get("style_loss") or getattr(METHODS[method], "STYLE_LOSS", None)
    if not isinstance(spec, str):
        return options
    try:
        losses = parse_style_losses(spec, options.get("style_loss_weights"))
    except InvalidOptionError:
        return options  # stylize names the fault
    ratios = [float(gains.get(loss.name, 1.0)) / loss.gain for loss, _ in losses]
    if all(r == 1.0 for r in ratios):
        return options
    if "style_loss" in options:  # a loss of its own weight each
        return {**options, "style_loss_weights": [w * r for (_, w), r in zip(losses, ratios, strict=True)]}
    if not isinstance(options.get("style_weight"), (int, float)):
        return options
    return {**options, "style_weight": options["style_weight"] * ratios[0]}


def rerun(recipe: dict[str, Any], *, callback: Callback | None = None, cancel: CancelToken | None = None) -> Stylized:
    """Run a recipe again from its recorded input files; refuses inputs whose pixels changed."""
    check_recipe(recipe)
    inputs = recipe["inputs"]
    entries = [inputs["content"], *inputs["styles"]]
    paths = [entry.get("path") for entry in entries]
    if any(not isinstance(p, str) for p in paths):
        raise InvalidOptionError("this recipe was made from in-memory images, so it cannot be re-run from files")
    for entry in entries:
        if not Path(entry["path"]).is_file():
            raise InvalidOptionError(f"input {entry['path']} named by the recipe no longer exists")
        if pixel_hash(load_image(entry["path"])) != entry["pixels_sha256"]:
            raise InvalidOptionError(f"input {entry['path']} changed since the recipe was made (pixel hash differs)")
    options = {**RECIPE_DEFAULTS_BEFORE.get(recipe["method"], {}), **recipe["options"]}
    gains = recipe.get("style_loss_gains")
    options = _same_strength(recipe["method"], options, gains if isinstance(gains, dict) else RECIPE_GAINS_BEFORE)
    if options.get("encoder") == "auto" and isinstance(recipe["weights"].get("name"), str):  # pin the weights actually used
        options["encoder"] = recipe["weights"]["name"]
    return stylize(
        paths[0], paths[1:], method=recipe["method"], options=options,
        callback=callback, cancel=cancel, keep_alpha=bool(inputs.get("keep_alpha", False)),
    )


def recipe_inputs(recipe: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(what, path) of a recipe's input files, for output checks."""
    inputs = recipe["inputs"]
    found = [("content image", inputs["content"].get("path"))]
    found += [(f"style image {i + 1}", s.get("path")) for i, s in enumerate(inputs["styles"])]
    return [(what, p if isinstance(p, str) else None) for what, p in found]


BAD_FRAME_POLICIES = ("stop", "skip", "copy")


@dataclass
class VideoSummary:
    """What a video run did: ``frames`` are the output frames present afterwards, in order."""

    frames: list[Path] = field(default_factory=list)
    made: int = 0  # stylised in this run (new frames)
    redone: int = 0  # present from an earlier run with other inputs or options, stylised again
    reused: int = 0  # present from an earlier, interrupted run with the same inputs and options
    copied: list[str] = field(default_factory=list)  # bad frames replaced by the previous stylised frame
    skipped: list[str] = field(default_factory=list)  # bad frames left out
    problems: list[str] = field(default_factory=list)  # why each bad frame was bad
    warping_errors: list[float] = field(default_factory=list)  # per temporally tied frame (methods.video)
    video: Path | None = None  # the mp4 written, if one was asked for

    def line(self) -> str:
        parts = [f"{len(self.frames)} frames: {self.made} stylised"]
        if self.redone:
            parts.append(f"{self.redone} redone (made earlier with other inputs or options)")
        if self.reused:
            parts.append(f"{self.reused} kept from an earlier run")
        if self.copied:
            parts.append(f"{len(self.copied)} bad, replaced by the previous frame ({', '.join(self.copied)})")
        if self.skipped:
            parts.append(f"{len(self.skipped)} bad, skipped ({', '.join(self.skipped)})")
        return ", ".join(parts)


def _file_digest(value: Any) -> str | None:
    """sha256 of a file an option names (a model or decoder), so a changed file changes the fingerprint."""
    if isinstance(value, str) and value and Path(value).is_file():
        digest = hashlib.sha256()
        with open(value, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    return None


def video_fingerprint(method: str, opts: Any, style_hashes: Sequence[str]) -> str:
    """What makes a stylised frame (besides the frame itself): method, options, style pixels, named files."""
    options = dataclasses.asdict(opts)
    named = [(k, v) for k, v in options.items() if isinstance(v, str)]
    named += [(f"{k}:{v}", v) for k in ("decoders", "content_mask", "style_mask") for v in options.get(k) or ()]
    files = {k: digest for k, v in named if (digest := _file_digest(v))}
    blob = json.dumps({"method": method, "options": options, "styles": list(style_hashes), "files": files,
                       "gains": {name: loss.gain for name, loss in STYLE_LOSSES.items()},
                       "impasto": _version()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _made_by(target: Path, fingerprint: str, frame_sha: str) -> bool:
    """Whether an existing output frame was made from this frame with this fingerprint."""
    try:
        recipe = read_recipe(target)
    except (InvalidImageError, RecursionError):
        return False
    inputs = recipe.get("inputs") if isinstance(recipe.get("inputs"), dict) else {}
    return recipe.get("video_fingerprint") == fingerprint and inputs.get("frame_pixels_sha256") == frame_sha


TEMPORAL_LOSS_METHODS = ("optimization", "exemplars")  # prepared calls that take init/iterations/extra_loss
DEFAULT_FPS = 24.0  # for an mp4 made from a frame folder or GIF when --fps is not given


@dataclass(frozen=True)
class VideoCut:
    """Which frames of a video file: from ``start`` seconds, for ``duration`` seconds, every ``every``-th."""

    start: float = 0.0
    duration: float | None = None
    every: int = 1

    def check(self) -> None:
        if not (self.start >= 0 and math.isfinite(self.start)):
            raise InvalidOptionError(f"--start must be 0 or more seconds, got {self.start}")
        if self.duration is not None and not (self.duration > 0 and math.isfinite(self.duration)):
            raise InvalidOptionError(f"--duration must be more than 0 seconds, got {self.duration}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise InvalidOptionError(f"--every must be a whole number of at least 1, got {self.every!r}")


def _frame_stream(source: str | os.PathLike[str], cut: VideoCut) -> tuple[Any, int | None, Any]:
    """(iterator of (name, frame or InvalidImageError), frame count if known, VideoInfo or None) for any source."""
    from impasto.io.video import decode_video, frame_sources, probe_video, read_frames

    path = Path(source)
    if not (path.is_dir() or (path.suffix.lower() == ".gif" and path.is_file())):  # a video file, or refused as one
        info = probe_video(source, start=cut.start, duration=cut.duration, every=cut.every)
        total = info.frames
        if cut.start or cut.duration is not None:
            span = max(0.0, min(info.seconds, cut.start + (cut.duration or info.seconds)) - cut.start)
            total = round(span * float(info.fps))
        return decode_video(source, start=cut.start, duration=cut.duration, every=cut.every), -(-total // cut.every), info
    if cut != VideoCut():
        raise InvalidOptionError("--start, --duration and --every cut video files; for a frame folder or GIF pass "
                                 "the frames you want")
    return read_frames(source), len(frame_sources(source)), None


def video_options(method: str, options: Any) -> Any:
    """``options`` (None or a dict of the fields given) with the method's ``VIDEO_DEFAULTS`` for the fields not
    given: options whose picture default is not right for video (the optimisation's face protection). An
    ``Options`` instance is taken as it is: its fields are all set."""
    defaults = getattr(METHODS.get(method), "VIDEO_DEFAULTS", {})
    if options is None:
        return dict(defaults) or None
    if isinstance(options, dict):
        return {**defaults, **options}
    return options


def stylize_video(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    style: ImageInput | Sequence[ImageInput] | None = None,
    method: str = "feedforward",
    options: Any = None,
    *,
    temporal: Any = None,
    cut: VideoCut | None = None,
    fps: float | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    keep_frames: bool = False,
    callback: Callback | None = None,
    on_frame: Callable[[int, int | None], None] | None = None,
    cancel: CancelToken | None = None,
    on_bad_frame: str = "stop",
    overwrite: bool = False,
) -> VideoSummary:
    """Stylise a video (mp4/mov/mkv/webm/avi file, frame folder or GIF) into an mp4 or a folder of PNG frames.

    ``output`` ending in .mp4: an h264 file with the source's frame rate (divided by ``cut.every``) and
    its audio packets copied unchanged, written atomically at the end; the frames are made in
    ``work_dir`` (default ``OUTPUT.frames``) and removed afterwards unless ``keep_frames``. Any other
    ``output``: a folder of PNG frames. ``temporal``: ``methods.video.Options`` or a dict of its
    fields (temporal mode, flow, weights); ``cut`` the part of a video file to stylise. ``options``: as for
    ``stylize``, except that fields not given take the method's ``VIDEO_DEFAULTS`` (``video_options``): the
    optimisation protects faces in video only when asked. An ``Options`` instance is used as it is, so
    ``optimization.Options()`` has faces protected (10): pass a dict of the fields you set instead.

    The method is prepared once (weights, style targets) and called per frame. Each PNG frame carries
    a fingerprint of what made it (method, options, temporal options, cut, style pixels, model files)
    and its source frame's pixel hash: a run that was stopped (even killed) continues at the first
    frame not yet made, and gives the same frames as an uninterrupted run (each result is carried
    forward as stored, in 8 bits).

    ``on_bad_frame``: a frame of a folder or GIF that cannot be decoded stops the run (``stop``, the
    finished frames are kept), is left out (``skip``), or is replaced by the previous stylised frame
    (``copy``); the temporal chain starts again after it. A video file that breaks off stops the run.
    """
    from impasto.io.flow import FlowCache
    from impasto.io.video import VideoWriter, frame_path
    from impasto.methods import video as video_method
    from impasto.validation import check_output

    if on_bad_frame not in BAD_FRAME_POLICIES:
        raise InvalidOptionError(f"--on-bad-frame must be one of {', '.join(BAD_FRAME_POLICIES)}, got '{on_bad_frame}'"
                                 f"{suggest(on_bad_frame, BAD_FRAME_POLICIES)}")
    cut = cut or VideoCut()
    cut.check()
    opts = resolve_options(method, video_options(method, options))
    vopts = temporal if isinstance(temporal, video_method.Options) else \
        options_from_dict(video_method.Options, temporal) if isinstance(temporal, dict) else video_method.Options()
    takes_loss = method in TEMPORAL_LOSS_METHODS
    video_method.validate(vopts, takes_loss, method)
    if fps is not None and not (0 < fps <= 1000 and math.isfinite(fps)):
        raise InvalidOptionError(f"--fps must be in (0, 1000], got {fps}")
    styles_in = [] if style is None else list(style) if isinstance(style, (list, tuple)) else [style]
    check_call(method, len(styles_in))
    output = Path(output)
    to_mp4 = output.suffix.lower() in (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
    if to_mp4 and output.suffix.lower() != ".mp4":
        raise InvalidOptionError(f"{output}: impasto writes h264 .mp4 files; name the output .mp4 (or a folder for PNG frames)")
    frames_dir = Path(work_dir) if work_dir is not None else output.with_name(output.name + ".frames") if to_mp4 else output
    inputs = [("input video" if Path(source).is_file() else "input frames", source), *((f"style image {i + 1}", s if isinstance(s, (str, os.PathLike)) else None)
                                         for i, s in enumerate(styles_in))]
    if to_mp4:
        check_output(output, inputs, overwrite=overwrite)
    check_output(frames_dir, inputs, overwrite=overwrite, folder=True)
    stream, total, info = _frame_stream(source, cut)
    if to_mp4 and info is None and fps is None:
        fps = DEFAULT_FPS
    loaded = [_load(s) for s in styles_in]
    fingerprint = hashlib.sha256(json.dumps({
        "frames": video_fingerprint(method, opts, [s[2]["pixels_sha256"] for s in loaded]),
        "temporal": dataclasses.asdict(vopts), "cut": dataclasses.asdict(cut)}, sort_keys=True).encode()).hexdigest()
    with _naming_inputs("", styles_in):
        prepared = METHODS[method].prepare([s[0] for s in loaded], opts)
    flows_dir = frames_dir / ".flow"  # flows estimated once, kept for a resumed run and the later passes
    layer = video_method.Temporal(prepared, vopts, takes_loss=takes_loss, method=method, flows=FlowCache(flows_dir))
    summary = VideoSummary()
    previous: Path | None = None
    sources_dir, names = frames_dir / ".sources", []
    for index, (name, frame) in enumerate(stream):
        target = frame_path(frames_dir, index)
        if on_frame:
            on_frame(index, total)
        if cancel is not None:
            cancel.raise_if_cancelled()
        if isinstance(frame, InvalidImageError):
            summary.problems.append(str(frame))
            layer.past.clear()  # the chain of consistent frames breaks here
            if on_bad_frame == "stop":
                raise InvalidImageError(f"{frame}; the {len(summary.frames)} frames before it are in {frames_dir}. "
                                        "Fix or remove the frame, or add --on-bad-frame skip (or copy) to go on without it")
            if on_bad_frame == "copy" and previous is not None:
                shutil.copyfile(previous, target)
                summary.copied.append(Path(name).name)
                summary.frames.append(target)
            else:
                if target.exists():  # an earlier run's frame for an input that is now bad: not ours any more
                    target.unlink()
                summary.skipped.append(Path(name).name)
            continue
        frame_sha = pixel_hash(frame)
        if vopts.passes > 1:  # later passes go backwards too: keep the source frames at hand
            save_image(frame, sources_dir / target.name, png_compression=1)
            names.append((name, frame_sha))
        existed = target.exists()
        if existed and _made_by(target, fingerprint, frame_sha):
            layer.remember(frame, load_image(target))
            summary.reused += 1
            summary.frames.append(target)
            previous = target
            continue
        with _naming_inputs(name if not name.startswith("gif:") else f"{source} {name}", styles_in):
            result, facts = layer.step(frame, callback=callback, cancel=cancel)
        recipe = _frame_recipe(method, opts, vopts, fingerprint, facts, result, source, name, frame_sha, loaded, 1)
        summary.frames.append(save_image(result.image, target, recipe=recipe, png_compression=1))
        layer.remember(frame, load_image(target))  # carried forward as stored, so a resumed run matches
        if facts.warping_error is not None:
            summary.warping_errors.append(facts.warping_error)
        previous = target
        if existed:
            summary.redone += 1
        else:
            summary.made += 1
    if vopts.passes > 1:
        _later_passes(layer, vopts, summary, frames_dir, sources_dir, names, source, method, opts, fingerprint, loaded,
                      callback, cancel, on_frame)
    for scratch in (sources_dir, flows_dir):  # every frame is made: the cached sources and flows are not needed
        if scratch.exists():
            shutil.rmtree(scratch)
    if to_mp4:
        rate = Fraction(fps).limit_denominator(100_000) if fps is not None else info.fps / cut.every
        with VideoWriter(output, rate, audio_from=info.path if info is not None and cut.every == 1 and fps is None else None,
                         start=cut.start, duration=cut.duration) as writer:
            for path in summary.frames:
                writer.write(load_image(path))
            summary.video = writer.close()
        if not keep_frames and work_dir is None:
            shutil.rmtree(frames_dir)
    return summary


def _frame_recipe(method: str, opts: Any, vopts: Any, fingerprint: str, facts: Any, result: Any, source: Any, name: str,
                  frame_sha: str, loaded: Sequence[Any], pass_number: int) -> dict[str, Any]:
    """The recipe of one stylised video frame: what made it (for resuming) and what the temporal layer did."""
    return {"impasto_recipe": RECIPE_FORMAT, "method": method, "options": dataclasses.asdict(opts),
            "seed": opts.seed, "video_fingerprint": fingerprint, "pass": pass_number,
            "temporal": {**dataclasses.asdict(vopts), "mode": facts.mode, "reliable": round(facts.reliable, 4),
                         "warping_error": facts.warping_error},
            "inputs": {"frames": str(source), "frame": name, "frame_pixels_sha256": frame_sha,
                       "styles": [s[2] for s in loaded]},
            "weights": {"name": result.weights, "sha256": result.weights_sha256},
            "versions": _versions(), **_faces_entry(result)}


def _later_passes(layer: Any, vopts: Any, summary: VideoSummary, frames_dir: Path, sources_dir: Path,
                  names: list[tuple[str, str]],
                  source: Any, method: str, opts: Any, fingerprint: str, loaded: Sequence[Any],
                  callback: Callback | None, cancel: CancelToken | None,
                  on_frame: Callable[[int, int | None], None] | None) -> None:
    """Passes 2..P of the multi-pass algorithm over the frames on disk, alternating direction. A frame whose
    recipe says it has been through pass k is not redone in pass k (a stopped run continues)."""
    if summary.skipped or summary.copied:
        raise InvalidOptionError(f"--passes {vopts.passes} needs every frame, but {len(summary.skipped) + len(summary.copied)} "
                                 f"could not be decoded; the first pass is in {frames_dir}")
    frames = list(summary.frames)
    n = len(frames)
    for k in range(2, vopts.passes + 1):
        order = list(range(n))[::-1] if k % 2 == 0 else list(range(n))
        for step, (before, index) in enumerate(zip(order, order[1:], strict=False)):
            if on_frame:
                on_frame(n * (k - 1) + step + 1, n * vopts.passes)
            if cancel is not None:
                cancel.raise_if_cancelled()
            target = frames[index]
            if read_recipe(target).get("pass", 1) >= k:
                continue
            frame = load_image(sources_dir / target.name)
            result, facts = layer.refine(frame, load_image(target), load_image(sources_dir / frames[before].name),
                                         load_image(frames[before]), callback=callback, cancel=cancel)
            recipe = _frame_recipe(method, opts, vopts, fingerprint, facts, result, source, *names[index], loaded, k)
            save_image(result.image, target, recipe=recipe, png_compression=1)
            summary.warping_errors.append(facts.warping_error)


def _frames_of(source: str | os.PathLike[str]) -> Any:
    """(name, frame) pairs of a video file, frame folder or GIF, refusing undecodable frames."""
    stream, _, _ = _frame_stream(source, VideoCut())
    for name, frame in stream:
        if isinstance(frame, InvalidImageError):
            raise frame
        yield name, frame


def evaluate_video(source: str | os.PathLike[str], runs: Sequence[str | os.PathLike[str]], *, flow: str = "dis-robust",
                   long_term: int = 0, on_frame: Callable[[int, int | None], None] | None = None) -> dict[str, dict[str, Any]]:
    """Temporal consistency of stylised versions of ``source`` (Lai et al. 2018): for each run (a video file,
    frame folder or GIF of the same frames), the short-term warping error of every frame against the
    previous one (flow and masks from the source frames), and with ``long_term`` k > 1 against the frame
    k back. Returns {run: {"short": [per frame], "long": [...], "mean_short": .., "mean_long": ..}}."""
    from impasto.features.flow import FLOW_METHODS
    from impasto.methods.video import pair_warping_error

    if flow not in FLOW_METHODS:
        raise InvalidOptionError(f"--flow must be one of {', '.join(FLOW_METHODS)}, got '{flow}'.{suggest(flow, FLOW_METHODS)}")
    if not runs:
        raise InvalidOptionError("give at least one stylised video to evaluate")
    if long_term == 1 or long_term < 0:
        raise InvalidOptionError(f"--long-term is a frame distance of at least 2 (0: none), got {long_term}")
    back = max(1, long_term)
    report: dict[str, dict[str, Any]] = {}
    for run_path in runs:
        short: list[float] = []
        long: list[float] = []
        history: list[tuple[Tensor, Tensor]] = []
        sources = _frames_of(source)
        for i, (_, out) in enumerate(_frames_of(run_path)):
            try:
                _, src = next(sources)
            except StopIteration:
                raise InvalidOptionError(f"{run_path} has more frames than {source}; evaluate a stylised version of the same clip") from None
            if on_frame:
                on_frame(i, None)
            if history:
                short.append(pair_warping_error(history[-1][0], src, history[-1][1], out, flow))
            if long_term and len(history) >= long_term:
                long.append(pair_warping_error(history[-long_term][0], src, history[-long_term][1], out, flow))
            history.append((src, out))
            del history[:-back]
        if next(sources, None) is not None:
            raise InvalidOptionError(f"{run_path} has fewer frames than {source}; evaluate a stylised version of the whole clip")
        report[str(run_path)] = {"short": short, "long": long,
                                 "mean_short": sum(short) / len(short) if short else 0.0,
                                 "mean_long": sum(long) / len(long) if long else 0.0}
    return report
