"""The style losses as an open set: a name maps to how a style's features become a target and how far a
result's features are from it.

Every user of a style loss (the optimisation objective, the feed-forward and decoder trainers) goes
through ``StyleTerm`` in ``losses.objective``, which adds the per-layer weights, the normalisation and
the combination of several styles; a loss registered here is therefore available to all of them by name.

    register_style_loss(StyleLoss("name", "one line for --help", statistics, distance, blend="linear"))

``statistics(features)`` maps (N, C, H, W) features to a tuple of tensors whose first dimension is N
(one entry per image); ``distance(features, target)`` is a scalar, averaged over the batch, where
``target`` is such a tuple with first dimension N or 1. ``blend`` says how the targets of several
styles combine: ``"linear"`` (the weighted mean of the statistics has the same minimiser as the
weighted sum of the losses: Gram, mean/std, quantiles), ``"pool"`` (the styles' targets are concatenated
along their second dimension: one patch bank from several styles; styles of weight 0 are left out) or
``"none"`` (no combination: several styles are refused unless each layer takes exactly one of them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from impasto.errors import InvalidOptionError, suggest
from impasto.losses.distribution import (centered_gram_loss, centered_gram_stats, histogram_loss, histogram_stats,
                                          mmd_gaussian_loss, mmd_stats, pyramid_gram_loss, pyramid_gram_stats,
                                          shifted_gram_loss, shifted_gram_stats, sliced_stats,
                                          sliced_wasserstein_loss)
from impasto.losses.patch import Matches, mrf_loss, patch_bank
from impasto.losses.style import gram_loss, mean_std_loss, w2_loss
from impasto.ops.stats import gram_matrix, mean_cov, mean_std

BLENDS = ("linear", "pool", "none")


@dataclass(frozen=True)
class StyleLoss:
    name: str
    summary: str
    statistics: Callable[[Tensor], tuple[Tensor, ...]]
    distance: Callable[..., Tensor]  # (features, target) -> scalar; also ``state=`` for a loss with ``state``
    blend: str = "linear"
    positional: bool = False  # compares neighbourhoods (patches): masks need ``regional``
    # Masks for a positional loss: (statistics(map (1, C, H, W), style positions (H W,) bool or None),
    # distance(features, target, content positions (H W,) bool)), the region's own patches only
    regional: tuple[Callable[[Tensor, Tensor | None], tuple[Tensor, ...]],
                    Callable[..., Tensor]] | None = None
    # A loss that keeps something between the calls of one term (MRF: its matches, refreshed every few
    # calls) gives ``state(match_every)``, an object with state_dict()/load_state_dict() (kept in
    # checkpoints); the term builds one per layer (and region) and passes it to ``distance`` (and the
    # regional distance) as ``state=``.
    state: Callable[[int], object] | None = None
    layers: tuple[str, ...] | None = None  # the style layers it is meant for, used when none are given
    gain: float = 1.0  # multiplies the normalised loss, so that one --style-weight gives comparable strength
    scale: Callable[[tuple[Tensor, ...]], float] | None = None  # the target's size in the loss's own units
    # (default: mean square of the statistics, right for losses that square differences of statistics; a
    # scale-free loss returns 1)


STYLE_LOSSES: dict[str, StyleLoss] = {}


def register_style_loss(loss: StyleLoss, *, replace: bool = False) -> StyleLoss:
    """Add ``loss`` under its name (a second loss of the same name needs ``replace=True``)."""
    if not loss.name or not loss.name.replace("_", "").isalnum():
        raise InvalidOptionError(f"a style loss name must be letters, digits and _, got '{loss.name}'")
    if loss.blend not in BLENDS:
        raise InvalidOptionError(f"style loss '{loss.name}': blend must be one of {', '.join(BLENDS)}, got '{loss.blend}'")
    if loss.name in STYLE_LOSSES and not replace:
        raise InvalidOptionError(f"a style loss named '{loss.name}' is registered already")
    STYLE_LOSSES[loss.name] = loss
    return loss


def get_style_loss(name: str) -> StyleLoss:
    try:
        return STYLE_LOSSES[name]
    except KeyError:
        raise InvalidOptionError(
            f"style_loss must be one of {', '.join(STYLE_LOSSES)}, got '{name}'.{suggest(name, STYLE_LOSSES)}"
        ) from None


def parse_style_losses(spec: str, weights: Sequence[float] | None = None) -> list[tuple[StyleLoss, float]]:
    """'gram' or 'gram+mrf' (several losses summed) with one weight each (default 1) -> [(loss, weight)]."""
    names = [n.strip() for n in spec.split("+")]
    losses = [get_style_loss(n) for n in names]
    if len(set(names)) != len(names):
        raise InvalidOptionError(f"style_loss '{spec}' names a loss twice; give each once (weights set the mix)")
    if weights is None:
        weights = [1.0] * len(names)
    if len(weights) != len(names):
        raise InvalidOptionError(
            f"{len(weights)} --style-loss-weights given for the {len(names)} losses of --style-loss {spec}")
    return list(zip(losses, (float(w) for w in weights), strict=True))


def style_loss_names() -> tuple[str, ...]:
    return tuple(STYLE_LOSSES)


def style_loss_help() -> str:
    """The --style-loss help text: every registered name with its summary."""
    return ("Style loss by name, or several joined by + (e.g. gram+mrf, weighted by --style-loss-weights): "
            + "; ".join(f"{n} ({loss.summary})" for n, loss in STYLE_LOSSES.items()) + ".")


register_style_loss(StyleLoss(
    "gram", "Gram matrix of the features (Gatys et al. 2016)",
    statistics=lambda f: (gram_matrix(f.float()),),
    distance=lambda f, t: gram_loss(f, t[0]),
))
register_style_loss(StyleLoss(
    "mean_std", "per-channel mean and standard deviation (AdaIN's statistics; Huang & Belongie 2017)",
    statistics=lambda f: mean_std(f.float()),
    distance=lambda f, t: mean_std_loss(f, *t),
))
register_style_loss(StyleLoss(
    "w2", "mean and covariance, 2-Wasserstein (Bures) distance between Gaussians",
    # several styles: means and covariances averaged (the mixture's mean, not its covariance: approximate)
    statistics=lambda f: mean_cov(f.double()),
    distance=lambda f, t: w2_loss(f, *t),
    # W2 is in units of squared features, its statistics' mean square in features^4 (about 1/4000 of Gram's
    # normalised value on kodim23 x Starry Night, so w2 left the photo unchanged): divide by the distance
    # from a zero distribution instead, mean(mu^2) + tr(C)/C = the mean second moment per channel.
    scale=lambda t: float((t[0].pow(2) + t[1].diagonal(dim1=-2, dim2=-1)).mean()),
))
register_style_loss(StyleLoss(
    "gram_centered", "Gram of mean-subtracted features, the covariance (Li et al. 2017, 'Demystifying')",
    statistics=centered_gram_stats,
    distance=lambda f, t: centered_gram_loss(f, t[0]),
))
register_style_loss(StyleLoss(
    "histogram", "per-channel histogram matching, 1-D Wasserstein by sorting (Risser et al. 2017)",
    statistics=histogram_stats,
    distance=lambda f, t: histogram_loss(f, t[0]),
))
register_style_loss(StyleLoss(
    "sliced_wasserstein", "1-D Wasserstein along fixed random projections of the features (Heitz et al. 2021)",
    statistics=sliced_stats,
    distance=lambda f, t: sliced_wasserstein_loss(f, t[0]),
))
register_style_loss(StyleLoss(
    "mrf", "nearest-neighbour 3x3 patches (Li & Wand 2016), at relu3_1 and relu4_1 unless --style-layers says otherwise",
    statistics=patch_bank,
    distance=lambda f, t, state=None: mrf_loss(f, t[0], matches=state),
    blend="pool",
    positional=True,
    regional=(lambda f, where: patch_bank(f, where=where),
              lambda f, t, where, state=None: mrf_loss(f, t[0], where=where, matches=state)),
    state=Matches,
    layers=("relu3_1", "relu4_1"),  # Li & Wand's; shallow maps have too many patches to match
    # Normalised, the patch loss is far stronger than Gram's: at gain 1 and style weight 200 kodim23 x Starry Night
    # (128 px) became the painting with no parrots; an effective weight of 2 kept them. At the default weight 50,
    # kodim23 x Starry Night at 256 px: effective 0.5 barely touched the photo (at 512 px nearly nothing), 1 gave a
    # light texture, 2 a painted look with the parrots readable but the astronaut's face melted (bench/README,
    # 2026-12-04). Gain 0.04 (2 at weight 50) lost a blind comparison against 0.01 (9 of 24 overall, 8 held-out
    # pairs at 256 px: its speckle and noisy faces cost more than its style gained; bench/results/2026-12-04g_*).
    gain=0.01,
))
register_style_loss(StyleLoss(
    "gram_shifted", "Gram of the features with copies shifted 4 positions right and down: long-range structure "
    "(Berger & Memisevic 2017)",
    statistics=shifted_gram_stats,
    distance=shifted_gram_loss,
    positional=True,
))
register_style_loss(StyleLoss(
    "gram_pyramid", "Gram matrices of the features pooled by 1, 2 and 4: statistics of larger structures",
    statistics=pyramid_gram_stats,
    distance=pyramid_gram_loss,
    positional=True,
))
register_style_loss(StyleLoss(
    "mmd_gaussian", "maximum mean discrepancy, Gaussian kernel, 1024 sampled positions (Li et al. 2017, 'Demystifying')",
    statistics=mmd_stats,
    distance=mmd_gaussian_loss,
    blend="none",
    scale=lambda t: 1.0,  # already scale-free (kernel width from the style's own distances)
))
