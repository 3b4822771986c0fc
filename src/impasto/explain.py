"""``impasto explain``: what each layer of the loss network keeps, as one labelled picture.

Row 1, content: the image whose features at one layer match the photo's, found by optimisation from
noise (feature inversion, Mahendran & Vedaldi 2015): shallow layers give back the photo almost exactly,
deep layers keep the objects and layout but not the pixels, which is why the content loss sits at
relu4_2. Row 2, style: texture synthesised from noise so that its Gram matrices match the painting's at
every style layer up to that level (Gatys et al. 2015): the more layers, the larger the structures the
texture copies. Each cell is labelled with its layer and its final (normalised) loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from PIL import Image
from torch import Tensor

from impasto.errors import InvalidOptionError, suggest
from impasto.events import Callback, CancelToken, Stage
from impasto.io.plot import labelled_grid, to_pil
from impasto.methods import optimization
from impasto.options import Range, SEED, option
from impasto.validation import check_fields

LEVELS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@dataclass(frozen=True)
class ExplainOptions:
    size: int = option(128, "Long side of every reconstruction (each cell is one optimisation: keep it small).", range=Range(16, 1024))
    iterations: int = option(200, "L-BFGS steps per cell.", range=Range(1, 10_000))
    levels: tuple[str, ...] = option(LEVELS, "Layers, shallow to deep: one column each.")
    encoder: str = option("auto", "Pretrained features: auto, vgg16, vgg19, tiny (tests).")
    precision: str = option("auto", "auto, fp32 or bf16.")
    seed: int = option(0, "Seed of the noise every reconstruction starts from.", range=SEED)


@dataclass(frozen=True)
class Cell:
    row: str  # "content" or "style"
    level: str
    image: Tensor
    loss: float


def _base(options: ExplainOptions, level: str) -> optimization.Options:
    return optimization.Options(size=options.size, scale_iterations=(options.iterations,), init="noise",
                                encoder=options.encoder, precision=options.precision, seed=options.seed,
                                tv_weight=0.0, content_layers=(level,), style_layers=(level,), protect_faces=0.0)


def explain(content: Tensor, style: Tensor, options: ExplainOptions | None = None, *,
            callback: Callback | None = None, cancel: CancelToken | None = None) -> list[Cell]:
    """Content and style reconstructions at every level of ``options.levels`` (2 x len(levels) cells)."""
    options = options or ExplainOptions()
    check_fields(options)
    if not options.levels:
        raise InvalidOptionError("explain needs at least one level")
    known = set(LEVELS) | {f"relu{b}_{k}" for b in range(1, 6) for k in range(1, 5)}
    for level in options.levels:
        if level not in known:
            raise InvalidOptionError(f"unknown level '{level}'.{suggest(level, sorted(known))}")
    cells: list[Cell] = []
    total = 2 * len(options.levels)
    for i, level in enumerate(options.levels):
        if callback:
            callback(Stage(name=f"content from {level}", index=len(cells), total=total))
        run = optimization.run(content, style, replace(_base(options, level), style_weight=0.0), cancel=cancel,
                               callback=_quiet_stages(callback))
        cells.append(Cell("content", level, run.image, run.final_losses.get("content", float("nan"))))
    for i, level in enumerate(options.levels):
        if callback:
            callback(Stage(name=f"style up to {level}", index=len(cells), total=total))
        layers = options.levels[: i + 1]
        o = replace(_base(options, level), content_weight=0.0, style_weight=1.0, style_layers=layers,
                    style_layer_weights=tuple(1.0 / len(layers) for _ in layers))
        run = optimization.run(content, style, o, cancel=cancel, callback=_quiet_stages(callback))
        cells.append(Cell("style", level, run.image, run.final_losses.get("style", float("nan"))))
    return cells


def _quiet_stages(callback: Callback | None) -> Callback | None:
    """Pass progress on, but not the inner run's one-scale Stage (the outer Stage names the cell)."""
    if callback is None:
        return None
    return lambda event: None if isinstance(event, Stage) else callback(event)


def sheet(content: Tensor, style: Tensor, cells: Sequence[Cell], height: int = 160) -> Image.Image:
    """The grid: the photo then its content cells, the painting then its style cells; a label over each."""
    rows = [("content", content, "photo"), ("style", style, "painting")]
    grid = []
    for row, source, name in rows:
        line = [(to_pil(source), name, "")]
        for c in (c for c in cells if c.row == row):
            what = f"content at {c.level}" if row == "content" else f"style up to {c.level}"
            line.append((to_pil(c.image), what, f"loss {c.loss:.3g}"))
        grid.append(line)
    return labelled_grid(grid, height)
