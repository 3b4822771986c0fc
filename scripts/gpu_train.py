"""Train a decoder or a feed-forward style on a lent GPU inside one device call, with what it needs packed beside the repo.

A lent GPU machine has torch with CUDA but no internet, none of ../shared, and no VGG weights; a task gets
about 15 minutes of it in all. So the work is split:

    python scripts/gpu_train.py pack                  # here: .gpu/ = VGG-16 slice to conv4_1 + train images
    # device call, carry [".gpu"], timeout 600:
    python3 scripts/gpu_train.py decoder --minutes 7 --out $OUT [--set style_statistics_weight=1 ...]
    python3 scripts/gpu_train.py feedforward --style vangogh_starry_night.jpg --minutes 7 --out $OUT [--set ...]

``pack`` writes ``.gpu/`` (git-ignored, 28.6 MB; with the tracked tree, 30.7 MB, a call carries 59 MB
of the 64 MiB it may): the real VGG-16 conv weights up to conv4_1 (``impasto weights slice``: the same numbers as the full
file, so the decoder records the same encoder hash and works with a user's weights) and
../shared/data/train split into training photos, held-out photos (every 10th, never trained on) and
paintings (content and style images; every 6th held out), and the paintings of ../shared/data/style.

``decoder`` times a few steps first, sets the step count so that training ends inside ``--minutes``
(the cosine learning-rate schedule needs the total), trains ``--level`` (default relu4_1, AdaIN's) on
the GPU with the AdaIN paper's objective (reconstruction on half of each batch, AdaIN-stylised features
and the style-statistics loss on the other half), and writes to ``--out``: ``decoder.safetensors`` (fp16),
its loss curve, ``report.json`` (steps, seconds per step, device, held-out PSNR of the reconstruction
against the shipped decoder's on the same photos) and the training log. ``feedforward`` does the same for
one style network (Johnson et al.; 384 px crops, the style at 512 px, style layers up to relu4_1, which
the slice holds) and writes ``samples.png``, held-out photos stylised by it. Judge what comes back here
(bench/quality.py) before shipping it (scripts/ship_model.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
import types
import typing
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # the device runs from a bare copy of the tree

import torch  # noqa: E402

from impasto.errors import InvalidOptionError  # noqa: E402
from impasto.events import Progress, Stage  # noqa: E402
from impasto.features.decoder import load_decoder  # noqa: E402
from impasto.features.precision import resolve_device  # noqa: E402
from impasto.features.vgg import load_encoder  # noqa: E402
from impasto.io.dataset import list_images, load_images  # noqa: E402
from impasto.training.decoder import DecoderOptions, psnr, reconstruct, train_decoder  # noqa: E402
from impasto.training.feedforward import TrainOptions  # noqa: E402
from impasto.training.feedforward import train as train_feedforward  # noqa: E402

PACK = HERE.parent / ".gpu"
DATA = HERE.parents[1] / "shared" / "data" / "train"
HOLD_PHOTOS, HOLD_PAINTINGS = 10, 6  # every n-th file (sorted) is held out


def pack(data: Path, out: Path, encoder: str = "vgg16", upto: str = "conv4_1") -> dict[str, int]:
    """Fill ``out`` with the encoder slice and the training images split into train and held-out sets."""
    from impasto.io import weights as weights_io

    if not data.is_dir():
        raise InvalidOptionError(f"no training data at {data} (../shared/data/train beside the repo)")
    if out.exists():
        if not (out / "pack.json").is_file():
            raise InvalidOptionError(f"{out} exists and is not a pack (no pack.json): choose another --out or remove it")
        shutil.rmtree(out)
    counts = {}
    for kind, every in (("photos", HOLD_PHOTOS), ("paintings", HOLD_PAINTINGS)):
        files = list_images([data / kind])
        for i, f in enumerate(files):
            split = "holdout" if i % every == every - 1 else "train"
            dest = out / "train" / f"{kind}_{split}" / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
            counts[f"{kind}_{split}"] = counts.get(f"{kind}_{split}", 0) + 1
    styles = data.parent / "style"
    for f in list_images([styles]) if styles.is_dir() else []:  # the paintings the shipped styles come from
        (out / "style").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out / "style" / f.name)
        counts["styles"] = counts.get("styles", 0) + 1
    if encoder.endswith(".safetensors"):
        shutil.copyfile(encoder, out / "encoder.safetensors")
    else:
        weights_io.write_slice(weights_io.load(encoder), encoder, upto, out / "encoder.safetensors")
    (out / "pack.json").write_text(json.dumps({"counts": counts, "source": str(data)}, indent=1))
    return counts


def _parse(value: str, hint: object) -> object:
    """``value`` as the annotated type ``hint`` (bool, int, float, str, tuples of them, optionally None)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint) and value.lower() == "none":
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = args[0]
        args = list(typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return tuple(_parse(v, args[0]) for v in value.split(",") if v)
    if hint is bool:
        return value.lower() in ("1", "true", "yes")
    return hint(value) if hint in (int, float, str) else value


def _apply(base, overrides: list[str]):
    """``base`` (an options dataclass) with ``--set NAME=VALUE`` overrides, each parsed as the field's type."""
    hints = typing.get_type_hints(type(base))
    changes = {}
    for item in overrides:
        key, eq, value = item.partition("=")
        if key not in hints or not eq:
            raise InvalidOptionError(f"--set {item}: expected NAME=VALUE with NAME one of {', '.join(hints)}")
        try:
            changes[key] = _parse(value, hints[key])
        except ValueError:
            raise InvalidOptionError(f"--set {item}: '{value}' is not a {hints[key]}") from None
    return dataclasses.replace(base, **changes)


def _decoder_options(pack_dir: Path, level: str, overrides: list[str], device: str) -> DecoderOptions:
    train = pack_dir / "train"
    base = DecoderOptions(
        level=level, content_dirs=(str(train / "photos_train"), str(train / "paintings_train")),
        style_dirs=(str(train / "paintings_train"),), style_transform="adain", style_fraction=0.5,
        style_weight=1.0, style_statistics_weight=1.0, steps=1000, batch_size=16, crop=256, scale_min=0.4,
        learning_rate=1e-4, final_lr_fraction=0.1, encoder=str(pack_dir / "encoder.safetensors"),
        precision="auto", device=device, seed=0)
    return _apply(base, overrides)


def _feedforward_options(pack_dir: Path, style: str, overrides: list[str], device: str) -> TrainOptions:
    path = pack_dir / "style" / style
    if not path.is_file():
        have = sorted(p.name for p in (pack_dir / "style").glob("*")) if (pack_dir / "style").is_dir() else []
        raise InvalidOptionError(f"--style {style}: not in {pack_dir / 'style'} (packed: {', '.join(have) or 'none'})")
    base = TrainOptions(
        styles=(str(path),), content_dirs=(str(pack_dir / "train" / "photos_train"),), steps=1000, batch_size=8,
        crop=384, scale_min=0.5, style_size=512, learning_rate=1e-3,
        style_layers=("relu1_2", "relu2_2", "relu3_3", "relu4_1"),  # within the conv4_1 slice
        encoder=str(pack_dir / "encoder.safetensors"), precision="auto", device=device, seed=0)
    return _apply(base, overrides)


def heldout_psnr(encoder_name: str, decoder_path: str, photos: Path, device: torch.device) -> float:
    """Mean reconstruction PSNR (dB) of a decoder on the held-out photos at up to 512 px."""
    decoder, meta = load_decoder(decoder_path)
    encoder = load_encoder(encoder_name, [meta["architecture"]["level"]]).to(device)
    decoder = decoder.to(device).eval()
    images, _ = load_images(list_images([photos]), 512, 64)
    scores = []
    for image in images:
        h, w = (s - s % 16 for s in image.shape[-2:])
        image = image[..., :h, :w].to(device)
        scores.append(psnr(reconstruct(encoder, decoder, image).cpu(), image.cpu()))
    return sum(scores) / len(scores)


class _TrainSteps:
    """A training callback that keeps the time of each step of the "train" stage (not a warm start's bridge)."""

    def __init__(self) -> None:
        self.training, self.times = False, []

    def __call__(self, event: object) -> None:
        if isinstance(event, Stage):
            self.training = event.name == "train"
        elif isinstance(event, Progress) and self.training:
            self.times.append(time.perf_counter())

    def per_step(self) -> float:
        """Seconds per step over the later half of the steps (past warm-up: cuDNN autotuning, the allocator)."""
        if len(self.times) < 2:
            raise InvalidOptionError("the probe ran fewer than 2 training steps; raise --probe-steps")
        half = min(len(self.times) // 2, len(self.times) - 2)
        return (self.times[-1] - self.times[half]) / (len(self.times) - 1 - half)


class Run:
    """One budgeted training run on the device: a log in ``out``, a timed probe that sizes the real run."""

    def __init__(self, out: Path, pack_dir: Path, device_name: str, minutes: float, reserve: float) -> None:
        if not (pack_dir / "encoder.safetensors").is_file():
            raise InvalidOptionError(f"{pack_dir} holds no pack: run 'python scripts/gpu_train.py pack' and carry it")
        self.out, self.pack_dir, self.minutes, self.reserve = out, pack_dir, minutes, reserve
        self.device = resolve_device(device_name)
        out.mkdir(parents=True, exist_ok=True)
        self.log = (out / "train.log").open("w")
        self.started = time.perf_counter()
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        self.facts = {"device": str(self.device), "gpu": gpu, "torch": torch.__version__}
        self.note(f"device {self.device}{' ' + gpu if gpu else ''}, torch {torch.__version__}")

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def train(self, train_fn, options, output: str, probe_steps: int):
        """Time ``probe_steps`` steps of ``options`` (past warm-up, setup apart), then train as many steps as
        fit the budget (the cosine schedules need the total up front) and write ``output`` in fp16."""
        probe_steps = max(3, probe_steps)
        stamps = _TrainSteps()
        probe = train_fn(dataclasses.replace(options, steps=probe_steps), self.out / "probe.safetensors", callback=stamps)
        per_step = stamps.per_step()
        setup = probe.seconds - (stamps.times[-1] - stamps.times[0])  # images, style features, a warm start's bridge
        budget = self.minutes * 60 - (time.perf_counter() - self.started) - setup - self.reserve
        steps = max(probe_steps, int(budget / per_step))
        if budget < probe_steps * per_step:
            self.facts["over_budget"] = True
            self.note(f"warning: --minutes {self.minutes} leaves no time to train beyond the probe's {probe_steps} steps")
        self.facts.update(probe_ms_per_step=per_step * 1000, setup_seconds=setup)
        self.note(f"probe: {probe_steps} steps, {per_step * 1000:.0f} ms/step after warm-up, {setup:.1f} s of setup; "
                  f"training {steps} steps")
        for name in ("probe.safetensors", "probe.loss.png"):
            (self.out / name).unlink(missing_ok=True)
        options = dataclasses.replace(options, steps=steps)
        every = max(1, steps // 20)

        steady = _TrainSteps()

        def progress(event: object) -> None:
            steady(event)
            if steady.training and isinstance(event, Progress) and (event.step % every == 0 or event.step == event.total):
                parts = ", ".join(f"{k} {v:.4g}" for k, v in event.losses.items())
                self.note(f"step {event.step}/{event.total} {time.perf_counter() - self.started:.0f} s: {parts}")

        result = train_fn(options, self.out / output, fp16=True, callback=progress)
        self.facts.update(steps=steps, train_seconds=result.seconds, seconds_per_step=steady.per_step(),
                          options=dataclasses.asdict(options),
                          final_losses={k: v[-1] for k, v in result.history.items()})
        return options, result

    def save(self) -> None:
        (self.out / "report.json").write_text(json.dumps(self.facts, indent=1))

    def finish(self, keys: tuple[str, ...]) -> dict:
        self.save()
        self.note(json.dumps({k: self.facts.get(k) for k in ("steps", "seconds_per_step", *keys)}))
        self.log.close()
        return self.facts


def decoder_run(args: argparse.Namespace) -> dict:
    run = Run(Path(args.out), Path(args.pack), args.device, args.minutes, args.reserve)
    options = _decoder_options(run.pack_dir, args.level, args.set or [], args.device)
    if args.init_from:
        options = dataclasses.replace(options, init_from=args.init_from)
    options, _ = run.train(train_decoder, options, "decoder.safetensors", args.probe_steps)
    run.save()  # what training did, kept even if scoring fails
    holdout = run.pack_dir / "train" / "photos_holdout"
    if not holdout.is_dir() or not list_images([holdout]):
        run.note(f"no held-out photos in {holdout}: not scored")
        return run.finish(())
    run.facts["heldout_psnr"] = heldout_psnr(options.encoder, str(run.out / "decoder.safetensors"), holdout, run.device)
    if args.compare:  # "" leaves the comparison out
        try:
            run.facts["heldout_psnr_compare"] = {args.compare: heldout_psnr(options.encoder, args.compare, holdout, run.device)}
        except Exception as exc:  # a shipped decoder of another level or encoder: say so, keep the run
            run.facts["heldout_psnr_compare"] = {args.compare: f"not comparable: {exc}"}
    return run.finish(("heldout_psnr",))


def feedforward_run(args: argparse.Namespace) -> dict:
    """Train one style network; also write ``samples.png``: the held-out photos stylised by it (at up to 512 px)."""
    from impasto.io.plot import labelled_grid, to_pil
    from impasto.methods.feedforward import load_network, style_mix

    run = Run(Path(args.out), Path(args.pack), args.device, args.minutes, args.reserve)
    options = _feedforward_options(run.pack_dir, args.style, args.set or [], args.device)
    name = Path(args.style).stem
    options, _ = run.train(train_feedforward, options, f"{name}.safetensors", args.probe_steps)
    run.save()
    holdout = run.pack_dir / "train" / "photos_holdout"
    if not holdout.is_dir() or not list_images([holdout]):
        run.note(f"no held-out photos in {holdout}: no samples")
        return run.finish(())
    net, meta = load_network(str(run.out / f"{name}.safetensors"))
    net = net.to(run.device).eval()
    photos, _ = load_images(list_images([holdout]), 512, 64)
    cells = []
    with torch.no_grad():
        for photo in photos[: args.samples]:
            styled = net(photo.to(run.device), style_mix(meta, None, None).to(run.device)).clamp(0, 1).cpu()
            cells.append((to_pil(styled), "", f"{photo.shape[-1]}x{photo.shape[-2]}"))
    rows = [cells[i:i + 4] for i in range(0, len(cells), 4)]
    if rows:
        labelled_grid(rows, height=256).save(run.out / "samples.png")
    run.facts["samples"] = len(cells)
    return run.finish(("samples",))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: write .gpu/ (encoder slice + train images) for the device call")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=PACK)
    p.add_argument("--encoder", default="vgg16", help="weights to slice (or a slice file to copy)")
    p.add_argument("--upto", default="conv4_1")
    d = sub.add_parser("decoder", help="on the device: train a decoder inside --minutes and write it to --out")
    d.add_argument("--out", required=True)
    d.add_argument("--pack", default=str(PACK))
    d.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget for probing, training and scoring")
    d.add_argument("--reserve", type=float, default=45.0, help="seconds kept back for saving and held-out scoring")
    d.add_argument("--probe-steps", type=int, default=30)
    d.add_argument("--level", default="relu4_1")
    d.add_argument("--device", default="auto")
    d.add_argument("--init-from", default=None, help="a decoder to fine-tune (file or shipped name)")
    d.add_argument("--compare", default="vgg16_relu4_1_decoder", help="decoder to score on the same held-out photos")
    d.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a DecoderOptions field (repeatable)")
    f = sub.add_parser("feedforward", help="on the device: train one style network inside --minutes")
    f.add_argument("--style", required=True, help="a painting in the pack's style/ folder, e.g. vangogh_starry_night.jpg")
    f.add_argument("--out", required=True)
    f.add_argument("--pack", default=str(PACK))
    f.add_argument("--minutes", type=float, default=7.0)
    f.add_argument("--reserve", type=float, default=30.0)
    f.add_argument("--probe-steps", type=int, default=30)
    f.add_argument("--device", default="auto")
    f.add_argument("--samples", type=int, default=8, help="held-out photos stylised into samples.png")
    f.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a TrainOptions field (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "pack":
        counts = pack(args.data, args.out, args.encoder, args.upto)
        size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
        print(f"packed {args.out} ({size / 1e6:.1f} MB): {counts}")
    elif args.command == "decoder":
        decoder_run(args)
    else:
        feedforward_run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
