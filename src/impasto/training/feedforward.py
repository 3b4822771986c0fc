"""Training Johnson-style feed-forward networks: one style (instance norm) or several (conditional IN).

Loss network: a frozen VGG (the offline VGG-16 by default, as in the paper). Losses follow
Johnson et al.: feature reconstruction at relu2_2, Gram style at relu1_2, relu2_2, relu3_3,
relu4_3, total variation. As in the optimisation method, each layer's loss is divided by its
target's mean square so the weights mean the same for any encoder.

Reproducible and resumable: the batch for step k is drawn from a generator seeded with
(seed, k), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from impasto.errors import InvalidOptionError
from impasto.events import Callback, CancelToken, Done
from impasto.features.precision import bf16_input, resolve_device, to_bf16, use_bf16
from impasto.features.vgg import load_encoder
from impasto.io.dataset import list_images, load_images, random_crops
from impasto.io.image import load_image
from impasto.io.models import save_model
from impasto.io.plot import save_loss_curve
from impasto.losses.objective import StyleSum, content_term, layer_weights
from impasto.losses.registry import parse_style_losses, style_loss_help
from impasto.losses.regularizers import tv_loss
from impasto.methods.feedforward import TransformerNet, architecture
from impasto.ops.geometry import resize, size_for_long_side
from impasto.options import MAX_SIDE, Range, SEED, SIDE, WEIGHT, option
from impasto.validation import check_fields
from impasto.training.loop import run_steps


@dataclass(frozen=True)
class TrainOptions:
    """Every default of feed-forward training (Johnson et al. 2016 unless noted)."""

    styles: tuple[str, ...] = option((), "Style image files; several train one conditional-IN network.")
    style_names: tuple[str, ...] | None = option(None, "Names for the styles (default: the files' stems).")
    content_dirs: tuple[str, ...] = option((), "Folders of training photos (searched recursively).")
    steps: int = option(2000, "Optimiser steps (the paper: 2 epochs of COCO at batch 4, ~40k steps).", range=Range(1, 10_000_000))
    batch_size: int = option(4, "Images per step.", range=Range(1, 1024))
    crop: int = option(256, "Training crop size in pixels.", range=Range(32, 4096))
    scale_min: float = option(0.5, "Smallest random crop, as a fraction of the photo's short side (augmentation).", range=Range(0, 1, low_open=True))
    style_size: int = option(320, "Long side the style image is scaled to for its Gram targets (sets brush-stroke size).", range=Range(32, MAX_SIDE))
    learning_rate: float = option(1e-3, "Adam learning rate.", range=Range(0, 1, low_open=True))
    width: int = option(32, "Channels of the first layer (32 in the paper); the slim shipped styles use 12.", range=Range(4, 512))
    residual_blocks: int = option(5, "Residual blocks at quarter resolution (5 in the paper).", range=Range(0, 64))
    content_layers: tuple[str, ...] = option(("relu2_2",), "Feature-reconstruction layers.")
    style_layers: tuple[str, ...] = option(("relu1_2", "relu2_2", "relu3_3", "relu4_3"), "Style layers.")
    style_loss: str = option("gram", style_loss_help)
    style_loss_weights: tuple[float, ...] | None = option(None, "One weight per loss of a combined --style-loss a+b (default: 1 each).", range=WEIGHT)
    content_weight: float = option(1.0, "Weight of the content loss.", range=WEIGHT)
    style_weight: float = option(20.0, "Weight of the (per-layer normalised) style loss.", range=WEIGHT)
    tv_weight: float = option(1e-1, "Weight of the total-variation prior.", range=WEIGHT)
    encoder: str = option("auto", "Loss network weights: auto, vgg16, vgg19 or tiny (tests), or a slice file written by 'impasto weights slice' (for a machine without the full weights).")
    precision: str = option("auto", "auto (bf16 loss network where supported), fp32 or bf16.")
    device: str = option("auto", "Where to train: auto (a CUDA GPU if torch sees one, else the CPU), cpu, cuda or cuda:N.")
    max_image_side: int = option(512, "Training photos are kept in memory at most this large.", range=SIDE)
    seed: int = option(0, "Seed for initialisation and batch sampling.", range=SEED)


def validate(o: TrainOptions) -> None:
    check_fields(o)
    if not o.styles:
        raise InvalidOptionError("give at least one --style image")
    if not o.content_dirs:
        raise InvalidOptionError("give at least one --content-dir with training photos")
    if o.style_names is not None and len(o.style_names) != len(o.styles):
        raise InvalidOptionError(f"{len(o.style_names)} style names given for {len(o.styles)} styles")
    use_bf16(o.precision, resolve_device(o.device))  # raises for an unknown device or precision, a missing GPU, no bf16
    parse_style_losses(o.style_loss, o.style_loss_weights)  # raises for an unknown name, with a suggestion


def _fingerprint(o: TrainOptions, style_hashes: list[str], n_images: int) -> str:
    what = {k: v for k, v in dataclasses.asdict(o).items() if k != "device"}  # a run may resume on another device
    blob = json.dumps({"options": what, "styles": style_hashes, "images": n_images}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class TrainResult:
    model_path: Path
    curve_path: Path
    steps: int
    seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)


def train(
    options: TrainOptions,
    output: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    fp16: bool = False,
    callback: Callback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train a network and write it to ``output`` (.safetensors) with a loss curve beside it.

    ``checkpoint`` holds model, optimiser, step and loss history (plus a loss-curve PNG beside
    it), written every ``checkpoint_every`` steps and when cancelled; ``resume`` continues it.
    """
    validate(options)
    output = Path(output)
    if output.suffix != ".safetensors":
        raise InvalidOptionError(f"the model file must end in .safetensors, got '{output.name}'")
    started = time.perf_counter()
    torch.manual_seed(options.seed)

    paths = list_images(options.content_dirs)
    images, skipped = load_images(paths, options.max_image_side, options.crop)
    if not images:
        raise InvalidOptionError(f"no decodable images under {', '.join(options.content_dirs)}")
    style_images = [load_image(s) for s in options.styles]
    style_hashes = [hashlib.sha256(s.numpy().tobytes()).hexdigest() for s in style_images]
    names = list(options.style_names or [Path(s).stem for s in options.styles])
    fp = _fingerprint(options, style_hashes, len(images))

    layers = list(dict.fromkeys([*options.content_layers, *options.style_layers]))
    device = resolve_device(options.device)
    encoder = load_encoder(options.encoder, layers).to(device)
    bf16 = use_bf16(options.precision, device)
    if bf16:
        encoder = to_bf16(encoder)
    prepare = bf16_input if bf16 else (lambda x: x)

    with torch.no_grad():
        per_style = [encoder(prepare(resize(s, size_for_long_side(s.shape[-2], s.shape[-1], options.style_size)).to(device)))
                     for s in style_images]
    weights = layer_weights(options.style_layers, None)
    style = StyleSum([(loss, w, weights) for loss, w in parse_style_losses(options.style_loss, options.style_loss_weights)],
                     per_style, per_sample=True)

    net = TransformerNet(n_styles=len(style_images), width=options.width, n_residual=options.residual_blocks).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=options.learning_rate)
    c_weights = layer_weights(options.content_layers, None)

    def step_fn(step: int) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(options.seed * 1_000_003 + step)
        batch = random_crops(images, options.batch_size, options.crop, gen, (options.scale_min, 1.0)).to(device)
        which = torch.randint(len(style_images), (options.batch_size,), generator=gen).to(device)
        mix = F.one_hot(which, len(style_images)).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # fp32 master weights, bf16 math
            out = net(batch, mix).float()
        feats = encoder(prepare(out))
        with torch.no_grad():
            content_feats = encoder(prepare(batch))
        c = content_term(feats, content_feats, c_weights)
        s = style(feats, which)
        tv = tv_loss(out)
        total = options.content_weight * c + options.style_weight * s + options.tv_weight * tv
        return {"total": total, "content": c, "style": s, "tv": tv}

    history = run_steps(model=net, optimizer=opt, step_fn=step_fn, steps=options.steps, fingerprint=fp,
                        title=output.stem, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
                        callback=callback, cancel=cancel, stage_size=(options.crop, options.crop))

    meta: dict[str, Any] = {
        "name": output.stem,
        "architecture": architecture(net),
        "styles": [{"name": n, "file": Path(p).name, "pixels_sha256": h} for n, p, h in zip(names, options.styles, style_hashes, strict=True)],
        "training": {"options": dataclasses.asdict(options), "steps_done": options.steps, "images": len(images),
                     "skipped": skipped, "final_losses": {k: v[-1] for k, v in history.items() if v}},
        "loss_network": {"name": encoder.weights_name, "sha256": encoder.weights_sha256},
        "versions": {"torch": torch.__version__},
    }
    model_path = save_model(output, net.state_dict(), meta, fp16=fp16)
    curve = save_loss_curve(history, output.with_suffix(".loss.png"), title=f"{output.stem}: {options.steps} steps")
    seconds = time.perf_counter() - started
    if callback:
        callback(Done(seconds=seconds, steps=options.steps))
    return TrainResult(model_path=model_path, curve_path=curve, steps=options.steps, seconds=seconds, history=history)
