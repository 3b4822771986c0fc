"""Training decoders that invert a VGG encoder (for AdaIN, WCT and PhotoWCT).

Loss (Li et al. 2017): pixel reconstruction ``||D(E(x)) - x||^2`` plus feature reconstruction
``||E(D(E(x))) - E(x)||^2`` at the decoder's level (divided by the target's mean square).
Such decoders never see a style, so they generalise to any style; photos and paintings both help.

With style images (``style_dirs``) part of every batch is stylised the way the one-pass methods
feed the decoder: the content crop's features take a style image's statistics (WCT or AdaIN, a
random strength per sample), and the decoder learns to render those features too, judged by
feature reconstruction ``||E(D(t)) - t||^2`` alone. That is the content term of the AdaIN
decoder's loss (Huang & Belongie 2017); their style term is left out, so the decoder still only
inverts the encoder. Li et al. 2017 train on reconstruction alone (the default).
``style_statistics_weight`` adds the style term as well: the decoded stylised image's per-channel
feature mean and standard deviation at relu1_1 up to the decoder's level against the style's (mixed
with the content's at the sample's strength alpha), so the decoder learns to put the style into
pixels rather than to reproduce the target features alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from impasto.errors import InvalidOptionError, WeightsError
from impasto.events import Callback, CancelToken, Done, Progress, Stage
from impasto.features.decoder import LEVELS, Decoder, check_encoder, decoder_architecture, load_decoder
from impasto.features.precision import resolve_device, use_bf16
from impasto.features.transfer import TRANSFORMS
from impasto.features.vgg import load_encoder
from impasto.io.dataset import list_images, load_images, random_crops
from impasto.io.models import save_model
from impasto.io.plot import save_loss_curve
from impasto.losses.objective import normalised_mse
from impasto.losses.style import mean_std_loss
from impasto.ops.stats import mean_std
from impasto.options import Range, SEED, SIDE, WEIGHT, option
from impasto.validation import check_fields
from impasto.training.loop import run_steps


@dataclass(frozen=True)
class DecoderOptions:
    """Every default of decoder training."""

    level: str = option("relu4_1", "Encoder layer the decoder inverts (relu4_1 for AdaIN; WCT uses relu1_1..relu5_1).")
    unpool: bool = option(False, "Upsample by max-unpooling with the encoder's indices (PhotoWCT) instead of nearest.")
    content_dirs: tuple[str, ...] = option((), "Folders of training images (photos and paintings), searched recursively.")
    style_dirs: tuple[str, ...] = option((), "Folders of style images: part of each batch is then stylised with them (--style-transform) and the decoder learns to render stylised features too (feature loss; --style-statistics-weight adds the AdaIN paper's style loss).")
    style_transform: str = option("wct", "How batches are stylised with --style-dir: wct or adain (match the method the decoder serves).")
    style_fraction: float = option(0.5, "With --style-dir: the share of each batch that is stylised (at least one image).", range=Range(0, 1, low_open=True))
    style_weight: float = option(0.1, "With --style-dir: weight of the stylised images' feature loss.", range=WEIGHT)
    style_statistics_weight: float = option(0.0, "With --style-dir: weight of the AdaIN paper's style loss on the decoded stylised images (feature mean and std at relu1_1 up to --level against the style's, mixed with the content's at the sample's strength; each layer divided by its target's mean square). 0 leaves it out.", range=WEIGHT)
    steps: int = option(1500, "Optimiser steps.", range=Range(1, 10_000_000))
    batch_size: int = option(4, "Images per step.", range=Range(1, 1024))
    crop: int = option(192, "Training crop size in pixels.", range=Range(32, 4096))
    scale_min: float = option(0.4, "Smallest random crop, as a fraction of the image's short side.", range=Range(0, 1, low_open=True))
    learning_rate: float = option(1e-3, "Adam learning rate at the start (3e-3 trains relu1_1-relu3_1 faster; relu4_1 collapsed at 3e-3).", range=Range(0, 1, low_open=True))
    final_lr_fraction: float = option(0.1, "The learning rate falls along a cosine to this fraction of the start by the last step.", range=Range(0, 1, low_open=True))
    top_convs: int | None = option(None, "Convs in the deepest stage (default: as many as the encoder block it mirrors; 1 keeps a relu5_1 decoder small).", range=Range(1, 4))
    init_from: str | None = option(None, "Warm start: a shallower decoder (file or shipped name, same upsampling) whose layers seed this one's last stages (training then mostly learns the new top stage), or a decoder of the same level and shape to fine-tune (no bridge).")
    bridge_steps: int = option(200, "With --init-from: steps that first train the new top stage alone to output the shallower level's features.", range=Range(0, 10_000_000))
    pixel_weight: float = option(1.0, "Weight of the pixel reconstruction loss.", range=WEIGHT)
    feature_weight: float = option(0.1, "Weight of the feature reconstruction loss (its gradient is large and noisy: higher values cost pixel accuracy).", range=WEIGHT)
    encoder: str = option("auto", "Encoder weights: auto, vgg16, vgg19 or tiny (tests), or a slice file written by 'impasto weights slice' (for a machine without the full weights).")
    precision: str = option("auto", "auto (bf16 math where supported), fp32 or bf16.")
    device: str = option("auto", "Where to train: auto (a CUDA GPU if torch sees one, else the CPU), cpu, cuda or cuda:N.")
    max_image_side: int = option(512, "Training images are kept in memory at most this large.", range=SIDE)
    seed: int = option(0, "Seed for initialisation and batch sampling.", range=SEED)


def validate(o: DecoderOptions) -> None:
    check_fields(o)
    if o.level not in LEVELS:
        raise InvalidOptionError(f"level must be one of {', '.join(LEVELS)}, got '{o.level}'")
    if not o.content_dirs:
        raise InvalidOptionError("give at least one --content-dir with training images")
    use_bf16(o.precision, resolve_device(o.device))  # raises for an unknown device or precision, a missing GPU, no bf16
    if o.style_statistics_weight > 0 and not o.style_dirs:
        raise InvalidOptionError("--style-statistics-weight needs --style-dir: the style loss compares decoded "
                                 "stylised images with style images")
    if o.style_transform not in TRANSFORMS:
        raise InvalidOptionError(f"style_transform must be one of {', '.join(TRANSFORMS)}, got '{o.style_transform}'")


@dataclass
class DecoderResult:
    model_path: Path
    curve_path: Path
    steps: int
    seconds: float
    history: dict[str, list[float]]


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1]."""
    mse = float((a.clamp(0, 1) - b.clamp(0, 1)).pow(2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def least_squares_head(decoder: Decoder, features: Tensor, images: Tensor) -> None:
    """Set a stage-less (relu1_1) decoder's only conv to the least-squares inverse on sample crops.

    The conv is linear in its weights, so this is the optimum Adam would crawl towards (measured:
    ~35 dB on training crops, against ~20 dB after 300 Adam steps); training then refines it for the
    feature loss.
    """
    conv = decoder.head[1]
    x = (features - decoder.feature_mean[:, None, None]) * decoder.feature_scale[:, None, None]
    cols = torch.nn.functional.unfold(decoder.head[0](x), conv.kernel_size).transpose(1, 2).reshape(-1, conv.weight[0].numel())
    step = max(1, cols.shape[0] // 100_000)  # a subsample of positions is plenty for 3 x 577 unknowns
    cols = cols[::step]
    design = torch.cat([cols, torch.ones_like(cols[:, :1])], dim=1).double().cpu()  # solved on the CPU (any device)
    target = images.reshape(images.shape[0], 3, -1).transpose(1, 2).reshape(-1, 3)[::step].double().cpu()
    solution = torch.linalg.lstsq(design, target).solution.float()
    conv.weight.copy_(solution[:-1].T.reshape(conv.weight.shape))
    conv.bias.copy_(solution[-1])


def train_bridge(decoder: Decoder, encoder: Any, lower: str, scale: Tensor, images: list[Tensor],
                 options: DecoderOptions, callback: Callback | None = None,
                 cancel: CancelToken | None = None) -> list[float]:
    """Pre-train a warm-started decoder's new top stage alone: encoder features at ``options.level``
    -> the ``lower`` level's features times ``scale`` (what the copied stages expect; see
    ``Decoder.warm_start``). Cheap (no image decoding, no encoder backward); returns the losses."""
    enc = encoder.with_layers([options.level, lower])
    device = next(decoder.parameters()).device
    scale = scale.to(device)
    params = list(decoder.stages[0].parameters())
    opt = torch.optim.Adam(params, lr=options.learning_rate)
    losses = []
    if callback:
        callback(Stage(name="bridge", size=(options.crop, options.crop)))
    for step in range(options.bridge_steps):
        if cancel is not None:
            cancel.raise_if_cancelled()  # nothing to checkpoint yet: the bridge is cheap to redo
        gen = torch.Generator().manual_seed(options.seed * 1_000_003 + 500_000 + step)
        batch = random_crops(images, options.batch_size, options.crop, gen, (options.scale_min, 1.0)).to(device)
        with torch.no_grad():
            feats, idx = enc.forward_with_indices(batch) if decoder.unpool else (enc(batch), None)
            target = feats[lower] * scale[:, None, None]
        loss = (decoder.top(feats[options.level], tuple(batch.shape[-2:]), idx) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if callback:
            callback(Progress(step=step + 1, total=options.bridge_steps, losses={"bridge": losses[-1]}))
    return losses


def stylise_batch(target: Tensor, n_plain: int, style_feats: list[Tensor], transform: str,
                  gen: torch.Generator) -> tuple[Tensor, list[tuple[int, float]]]:
    """A copy of a feature batch (N, C, h, w) whose samples from ``n_plain`` on take a random style's
    statistics (``TRANSFORMS[transform]``; style features (C, M')) at a random strength alpha in
    [0, 1], as ``FeatureTransfer`` mixes them. Returns the batch and each stylised sample's
    (style index, alpha)."""
    out, drawn = target.clone(), []
    for i in range(n_plain, target.shape[0]):
        k = int(torch.randint(len(style_feats), (1,), generator=gen))
        alpha = float(torch.rand(1, generator=gen))
        fc = target[i].flatten(1).float()
        out[i] = (alpha * TRANSFORMS[transform](fc, style_feats[k]) + (1 - alpha) * fc).reshape(target[i].shape)
        drawn.append((k, alpha))
    return out, drawn


def mixed_statistics(feats: dict[str, Tensor], n_plain: int, drawn: list[tuple[int, float]],
                     style_stats: list[dict[str, tuple[Tensor, Tensor]]], layers: list[str]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per layer, the (mean, std) (n_styled, C) each stylised sample's decoded image should have: the drawn
    style's statistics mixed with the sample's own content statistics at its strength alpha (exact at
    alpha 0 and 1, where the target is the content's or the style's)."""
    out = {}
    for layer in layers:
        mean_c, std_c = mean_std(feats[layer][n_plain:].float())
        alphas = torch.tensor([a for _, a in drawn], device=mean_c.device)[:, None]
        mean_s = torch.cat([style_stats[k][layer][0] for k, _ in drawn])
        std_s = torch.cat([style_stats[k][layer][1] for k, _ in drawn])
        out[layer] = (alphas * mean_s + (1 - alphas) * mean_c, alphas * std_s + (1 - alphas) * std_c)
    return out


def statistics_loss(feats: dict[str, Tensor], targets: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
    """Huang & Belongie's (2017) style loss: per layer the squared error of each sample's per-channel feature
    mean and std against its target (N, C), divided by the target's mean square; summed over layers."""
    total = None
    for layer, (mean, std) in targets.items():
        norm = torch.cat([mean, std], dim=1).pow(2).mean() + 1e-8
        term = mean_std_loss(feats[layer], mean, std) / norm
        total = term if total is None else total + term
    assert total is not None
    return total


def reconstruct(encoder: Any, decoder: Decoder, image: Tensor) -> Tensor:
    """Encode then decode an image (1, 3, H, W) -> (1, 3, H, W) clamped to [0, 1]."""
    with torch.inference_mode():
        if decoder.unpool:
            feats, idx = encoder.forward_with_indices(image)
            return decoder(feats[decoder.level], tuple(image.shape[-2:]), idx).clamp(0, 1)
        return decoder(encoder(image)[decoder.level], tuple(image.shape[-2:])).clamp(0, 1)


def train_decoder(
    options: DecoderOptions,
    output: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    fp16: bool = False,
    callback: Callback | None = None,
    cancel: CancelToken | None = None,
) -> DecoderResult:
    """Train a decoder for ``options.level`` and write it (with a loss curve beside it) to ``output``."""
    validate(options)
    output = Path(output)
    if output.suffix != ".safetensors":
        raise InvalidOptionError(f"the decoder file must end in .safetensors, got '{output.name}'")
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    images, skipped = load_images(list_images(options.content_dirs), options.max_image_side, options.crop)
    if not images:
        raise InvalidOptionError(f"no decodable images under {', '.join(options.content_dirs)}")
    device = resolve_device(options.device)
    stats_layers = list(LEVELS[:LEVELS.index(options.level) + 1]) if options.style_statistics_weight > 0 else []
    encoder = load_encoder(options.encoder, list(dict.fromkeys([options.level, *stats_layers]))).to(device)
    style_stats: list[dict[str, tuple[Tensor, Tensor]]] = []
    style_feats: list[Tensor] = []
    if options.style_dirs:  # each style's features once, at the size the methods see styles (max_image_side)
        style_images, style_skipped = load_images(list_images(options.style_dirs), options.max_image_side, 32)
        if not style_images:
            raise InvalidOptionError(f"no decodable images under {', '.join(options.style_dirs)}")
        skipped += style_skipped
        with torch.no_grad():
            for s in style_images:
                encoded = encoder(s.to(device))
                style_feats.append(encoded[options.level][0].flatten(1).float())
                style_stats.append({layer: mean_std(encoded[layer].float()) for layer in stats_layers})
    n_styled = min(options.batch_size, max(1, round(options.batch_size * options.style_fraction))) if style_feats else 0
    n_plain = options.batch_size - n_styled
    bf16 = use_bf16(options.precision, device)
    decoder = Decoder(options.level, encoder.arch, options.unpool, encoder.channels, options.top_convs).to(device)
    with torch.no_grad():  # input standardisation from sample crops (buffers: saved with the decoder)
        sample = random_crops(images, 16, options.crop, torch.Generator().manual_seed(options.seed), (options.scale_min, 1.0)).to(device)
        feats = encoder(sample)[options.level]
        decoder.feature_mean.copy_(feats.mean((0, 2, 3)))
        decoder.feature_scale.copy_((feats.std((0, 2, 3)) + 1e-3 * feats.std()).reciprocal())
        if not decoder.stages and not options.init_from:
            least_squares_head(decoder, feats, sample)
    if options.init_from:
        shallower, init_meta = load_decoder(options.init_from)
        shallower = shallower.to(device)  # warm_start combines its weights with this decoder's
        try:
            check_encoder(encoder, init_meta)
        except WeightsError as exc:
            raise InvalidOptionError(f"--init-from: {exc}") from None
        if shallower.level == options.level:  # fine-tune: start from all of it, its standardisation included
            if decoder_architecture(shallower) != decoder_architecture(decoder):
                raise InvalidOptionError(
                    f"--init-from {options.init_from} is a {options.level} decoder of another shape "
                    f"({decoder_architecture(shallower)}) than the one asked for ({decoder_architecture(decoder)}); "
                    "match --unpool and --top-convs to it")
            decoder.load_state_dict(shallower.state_dict())
        else:
            bridge_scale = decoder.warm_start(shallower)
            if not resume:  # a resumed run takes the whole decoder from its checkpoint
                train_bridge(decoder, encoder, shallower.level, bridge_scale, images, options, callback, cancel)
    opt = torch.optim.Adam(decoder.parameters(), lr=options.learning_rate)
    # a run may resume on another device; a field added later at its default keeps older checkpoints resumable
    what = {k: v for k, v in dataclasses.asdict(options).items()
            if k != "device" and not (k == "style_statistics_weight" and v == 0.0)}
    fp = hashlib.sha256(json.dumps({"options": what, "images": len(images), "styles": len(style_feats)},
                                sort_keys=True).encode()).hexdigest()

    def step_fn(step: int) -> dict[str, Tensor]:
        cosine = 0.5 * (1 + math.cos(math.pi * step / max(1, options.steps - 1)))  # a function of the step: resumable
        for group in opt.param_groups:
            group["lr"] = options.learning_rate * (options.final_lr_fraction + (1 - options.final_lr_fraction) * cosine)
        gen = torch.Generator().manual_seed(options.seed * 1_000_003 + step)
        batch = random_crops(images, options.batch_size, options.crop, gen, (options.scale_min, 1.0)).to(device)
        with torch.no_grad():
            if options.unpool:
                feats, idx = encoder.forward_with_indices(batch)
            else:
                feats, idx = encoder(batch), None
            target = feats[options.level]
            if n_styled:
                target, drawn = stylise_batch(target, n_plain, style_feats, options.style_transform, gen)
                stats_targets = mixed_statistics(feats, n_plain, drawn, style_stats, stats_layers)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = decoder(target, tuple(batch.shape[-2:]), idx).float()
            again_all = encoder(out)
            again = again_all[options.level].float()
        parts: dict[str, Tensor] = {}
        total = torch.zeros((), device=device)
        if n_plain:
            parts["pixel"] = (out[:n_plain] - batch[:n_plain]).pow(2).mean()
            parts["feature"] = normalised_mse(again[:n_plain], target[:n_plain])
            total = options.pixel_weight * parts["pixel"] + options.feature_weight * parts["feature"]
        if n_styled:
            parts["styled"] = normalised_mse(again[n_plain:], target[n_plain:])
            total = total + options.style_weight * parts["styled"]
            if stats_layers:
                parts["style_statistics"] = statistics_loss({k: again_all[k][n_plain:] for k in stats_layers}, stats_targets)
                total = total + options.style_statistics_weight * parts["style_statistics"]
        return {"total": total, **parts}

    history = run_steps(model=decoder, optimizer=opt, step_fn=step_fn, steps=options.steps, fingerprint=fp,
                        title=output.stem, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
                        callback=callback, cancel=cancel, stage_size=(options.crop, options.crop))
    meta: dict[str, Any] = {
        "name": output.stem,
        "architecture": decoder_architecture(decoder),
        "encoder": encoder.weights_name,
        "encoder_sha256": encoder.weights_sha256,
        "encoder_source_sha256": encoder.source_sha256,
        "training": {"options": dataclasses.asdict(options), "steps_done": options.steps, "images": len(images),
                     "skipped": skipped, "final_losses": {k: v[-1] for k, v in history.items() if v}},
        "versions": {"torch": torch.__version__},
    }
    model_path = save_model(output, decoder.state_dict(), meta, fp16=fp16)
    curve = save_loss_curve(history, output.with_suffix(".loss.png"), title=f"{output.stem}: {options.steps} steps")
    seconds = time.perf_counter() - started
    if callback:
        callback(Done(seconds=seconds, steps=options.steps))
    return DecoderResult(model_path=model_path, curve_path=curve, steps=options.steps, seconds=seconds, history=history)
