"""Weighted, normalised loss terms: the one place where per-layer weights, the normalisation rule and the
combination of several styles live, shared by the optimisation method and the trainers.

Normalisation: each layer's loss is divided by the mean square of its target (the content activation, or
the style statistics), so that a layer weight means the same for every layer width, image and encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from impasto.errors import InvalidOptionError
from impasto.features.transfer import blend_weights
from impasto.losses.content import content_loss
from impasto.losses.registry import STYLE_LOSSES, StyleLoss, get_style_loss
from impasto.ops.regions import Region, selected

EPS = 1e-8  # keeps an all-zero target (a black image's activations) from dividing by zero


def layer_weights(layers: Sequence[str], weights: Sequence[float] | None,
                  prior: Callable[[str], float] | None = None) -> dict[str, float]:
    """Explicit weights as given, one per layer; otherwise ``prior(layer)`` (default 1) scaled to sum to 1."""
    if weights is not None:
        if len(weights) != len(layers):
            raise InvalidOptionError(f"{len(weights)} layer weights given for {len(layers)} layers")
        return dict(zip(layers, weights, strict=True))
    raw = [prior(layer) if prior else 1.0 for layer in layers]
    if not sum(raw) > 0:
        raw = [1.0] * len(layers)
    return {layer: w / sum(raw) for layer, w in zip(layers, raw, strict=True)}


def normalised_mse(features: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """``content_loss`` divided by the target's mean square (comparable across layers and images);
    ``weight`` (broadcast over the features) weighs each position's squared error."""
    return content_loss(features, target, weight) / (target.float().pow(2).mean() + EPS)


def content_term(features: Mapping[str, Tensor], targets: Mapping[str, Tensor], weights: Mapping[str, float],
                 position_weights: Mapping[str, Tensor] | None = None) -> Tensor:
    """Sum over layers of weight x ``normalised_mse`` of the features against the targets.

    ``position_weights``: optional per-layer maps (broadcast over the layer's features, e.g. (1, 1, h, w)) that
    weigh each position's squared error, e.g. more content inside faces (see ``position_weight_maps``)."""
    maps = position_weights or {}
    return sum(w * normalised_mse(features[k], targets[k], maps.get(k)) for k, w in weights.items())


def position_weight_maps(gain: Tensor, sizes: Mapping[str, tuple[int, int]]) -> dict[str, Tensor]:
    """1 + ``gain`` (a (1, 1, H, W) map >= 0 over the image) area-resized to each layer's (h, w): the
    ``position_weights`` of ``content_term``, computed once per image size."""
    return {k: 1 + torch.nn.functional.interpolate(gain, size=tuple(size), mode="area") for k, size in sizes.items()}


def _target_scale(loss: StyleLoss, target: tuple[Tensor, ...] | list[tuple[Tensor, ...]]) -> float:
    """What a layer's loss is divided by: ``loss.scale`` of the target, by default its mean square
    (for per-style targets of different shapes, the mean over styles)."""
    if isinstance(target, list):
        return sum(_target_scale(loss, t) for t in target) / len(target)
    if loss.scale is not None:
        return loss.scale(target) + EPS
    return float(sum(t.pow(2).mean() for t in target)) + EPS


class StyleTerm:
    """Weighted sum over layers of a registered style loss, each divided by its target's mean square.

    ``per_style``: the style images' features, one mapping layer -> (1, C, H, W) per style.

    - Blended (``per_sample=False``, optimisation): one target per layer, the ``mix``-weighted mean of the
      styles' statistics (``layer_sources`` maps a layer to the one style it takes instead). A loss whose
      ``blend`` is ``"none"`` refuses a layer that would mix several styles.
    - Per sample (``per_sample=True``, conditional training): the styles' statistics are stacked and
      ``__call__(features, which)`` compares sample ``i`` with style ``which[i]``; each layer is divided by
      the mean square over all styles' statistics.
    - Masked (``regions``: per layer, the content positions of each region and its styles' features, from
      ``features.transfer.RegionMaps``; Gatys et al. 2017 spatial control): each region's positions are
      compared with its own blended target, weighted by the share of positions the region covers;
      positions in no region take no style. A patch loss (``regional``) matches a region's patches with
      the patches of the style positions it takes and counts only the region's own elements.

    ``match_every``: for a loss with state (MRF), reuse its matches for that many calls (optimisation of
    one image; keep 1 when every call sees another image, as in training); ``reset`` starts afresh.
    """

    def __init__(self, loss: str | StyleLoss, weights: Mapping[str, float], per_style: Sequence[Mapping[str, Tensor]],
                 *, mix: Sequence[float] | None = None, layer_sources: Mapping[str, int] | None = None,
                 per_sample: bool = False, regions: Mapping[str, Sequence[Region]] | None = None,
                 match_every: int = 1) -> None:
        self.loss = get_style_loss(loss) if isinstance(loss, str) else loss
        self.match_every = match_every
        self.weights = dict(weights)
        self.per_sample = per_sample
        if not per_style:
            raise InvalidOptionError("at least one style image is needed")
        n = len(per_style)
        sources = dict(layer_sources or {})
        self.targets: dict[str, tuple[Tensor, ...] | list[tuple[Tensor, ...]]] = {}
        self.norm: dict[str, float] = {}
        self.regions: dict[str, list[tuple[Tensor, tuple[Tensor, ...], float, object]]] = {}
        self.states: dict[str, object] = {}
        if regions is not None:
            if per_sample or sources:
                raise InvalidOptionError("masks cannot be combined with per-sample styles or --layer-sources")
            if self.loss.positional and self.loss.regional is None:
                takes = [n for n, s in STYLE_LOSSES.items() if not s.positional or s.regional is not None]
                raise InvalidOptionError(f"style loss '{self.loss.name}' compares neighbourhoods and does not take masks; "
                                         f"with --content-mask use one of {', '.join(takes)}")
            with torch.no_grad():
                for layer in self.weights:
                    self.regions[layer] = self._region_targets(layer, regions[layer])
            return
        with torch.no_grad():
            for layer in self.weights:
                stats = [self.loss.statistics(f[layer]) for f in per_style]
                if per_sample:
                    target = self._stack(stats)
                else:
                    target = self._blend(layer, stats, self._mix(layer, n, mix, sources))
                self.targets[layer] = target
                self.norm[layer] = _target_scale(self.loss, target)
                if not per_sample:
                    self.states[layer] = self._new_state()

    def reset(self) -> None:
        """Forget what the loss kept between calls (the MRF's matches): call it before optimising a new image."""
        self.states = {layer: self._new_state() for layer in self.states}
        for layer, regions in self.regions.items():
            self.regions[layer] = [(where, target, norm, self._new_state()) for where, target, norm, _ in regions]

    def state_dict(self) -> dict[str, object]:
        """What the loss keeps between calls, per layer (and ``layer#region``), for a checkpoint."""
        out = {layer: state.state_dict() for layer, state in self.states.items() if state is not None}
        for layer, regions in self.regions.items():
            out.update({f"{layer}#{i}": r[3].state_dict() for i, r in enumerate(regions) if r[3] is not None})
        return out

    def load_state_dict(self, saved: Mapping[str, object]) -> None:
        """Restore ``state_dict``'s output (after ``reset``); entries it lacks start fresh."""
        for layer, state in self.states.items():
            if state is not None and layer in saved:
                state.load_state_dict(saved[layer])
        for layer, regions in self.regions.items():
            for i, r in enumerate(regions):
                if r[3] is not None and f"{layer}#{i}" in saved:
                    r[3].load_state_dict(saved[f"{layer}#{i}"])

    def _new_state(self) -> object:
        """What the loss keeps between calls for one layer or region (None for most losses)."""
        return None if self.loss.state is None else self.loss.state(self.match_every)

    def _state(self, state: object) -> dict[str, object]:
        return {} if state is None else {"state": state}

    def _mix(self, layer: str, n: int, mix: Sequence[float] | None, sources: Mapping[str, int]) -> list[float]:
        if layer in sources:
            share = [0.0] * n
            share[sources[layer]] = 1.0
            return share
        return blend_weights(mix, n)

    def _region_targets(self, layer: str, regions: Sequence[Region]) -> list[tuple[Tensor, tuple[Tensor, ...], float, object]]:
        """(content positions, blended target, its mean square, the loss's state) per region that has positions and a style."""
        out = []
        for where, targets in regions:
            total = sum(t.weight for t in targets)
            if not bool(where.any()) or total <= 0:
                continue
            if self.loss.regional is not None:  # patches: the style's map, restricted to the positions
                stats = [self.loss.regional[0](t.feats[None], t.where) for t in targets]
            else:
                stats = [self.loss.statistics(f.reshape(1, f.shape[0], -1, 1)) for f in map(selected, targets)]
            target = self._blend(layer, stats, [t.weight / total for t in targets])
            out.append((where, target, _target_scale(self.loss, target), self._new_state()))
        return out

    def _masked(self, layer: str, features: Tensor) -> Tensor:
        """Each region's distance on its own positions, weighted by the share of positions it covers."""
        flat = features.reshape(*features.shape[:2], -1)
        total = features.new_zeros((), dtype=torch.float32)
        for where, target, norm, state in self.regions[layer]:
            if self.loss.regional is not None:
                distance = self.loss.regional[1](features, target, where, **self._state(state))
            else:
                distance = self.loss.distance(flat[:, :, where].unsqueeze(-1), target)
            total = total + where.float().mean() * distance / norm
        return total

    @staticmethod
    def _stack(stats: list[tuple[Tensor, ...]]) -> tuple[Tensor, ...] | list[tuple[Tensor, ...]]:
        """One tensor per statistic with the styles along dim 0; a list when their shapes differ (patch banks)."""
        if all(a.shape[1:] == b.shape[1:] for s in stats for a, b in zip(s, stats[0], strict=True)):
            return tuple(torch.cat([s[i] for s in stats]) for i in range(len(stats[0])))
        return stats

    def _blend(self, layer: str, stats: list[tuple[Tensor, ...]], share: list[float]) -> tuple[Tensor, ...]:
        if self.loss.blend == "pool":
            used = [s for s, w in zip(stats, share, strict=True) if w > 0]
            return tuple(torch.cat([s[i] for s in used], dim=1) for i in range(len(used[0])))
        if self.loss.blend == "none":
            used = [i for i, w in enumerate(share) if w > 0]
            if len(used) > 1:
                raise InvalidOptionError(
                    f"style loss '{self.loss.name}' cannot blend several styles at one layer ({layer}); "
                    "give one style, or map each layer to one style with --layer-sources")
            return stats[used[0]]
        # A weighted sum of squared errors to several targets has the same minimiser as the error to
        # their weighted mean: exact for statistics the loss compares by squared error (Gram, mean/std).
        return tuple(sum(w * s[i] for w, s in zip(share, stats, strict=True)) for i in range(len(stats[0])))

    def __call__(self, features: Mapping[str, Tensor], which: Tensor | None = None) -> Tensor:
        if self.per_sample and which is None:
            raise InvalidOptionError("a per-sample style term needs which style each sample takes")
        total = None
        for layer, w in self.weights.items():
            if self.regions:
                term = w * self._masked(layer, features[layer])
                total = term if total is None else total + term
                continue
            target = self.targets[layer]
            f = features[layer]
            if which is None:
                distance = self.loss.distance(f, target, **self._state(self.states.get(layer)))
            elif isinstance(target, list):  # styles of different shapes: one sample at a time
                distance = sum(self.loss.distance(f[i:i + 1], target[int(k)]) for i, k in enumerate(which)) / len(which)
            else:
                distance = self.loss.distance(f, tuple(t[which] for t in target))
            term = w * distance / self.norm[layer]
            total = term if total is None else total + term
        assert total is not None
        return total * self.loss.gain if self.loss.gain != 1.0 else total


class StyleSum:
    """Several registered style losses summed with weights (``--style-loss gram+mrf --style-loss-weights 1,0.5``),
    each a ``StyleTerm`` over its own layers: ``parts`` is [(loss, weight, {layer: weight})]."""

    def __init__(self, parts: Sequence[tuple[StyleLoss, float, Mapping[str, float]]],
                 per_style: Sequence[Mapping[str, Tensor]], **kwargs) -> None:
        regions = kwargs.pop("regions", None)
        self.terms = [(StyleTerm(loss, weights, per_style, **kwargs,
                                 regions=None if regions is None else {k: regions[k] for k in weights}), w)
                      for loss, w, weights in parts]

    def reset(self) -> None:
        """``StyleTerm.reset`` for every term."""
        for term, _ in self.terms:
            term.reset()

    def state_dict(self) -> list[dict[str, object]]:
        """``StyleTerm.state_dict`` of every term, in order."""
        return [term.state_dict() for term, _ in self.terms]

    def load_state_dict(self, saved: Sequence[Mapping[str, object]]) -> None:
        for (term, _), state in zip(self.terms, saved, strict=False):
            term.load_state_dict(state)

    def __call__(self, features: Mapping[str, Tensor], which: Tensor | None = None) -> Tensor:
        total = None
        for term, w in self.terms:
            value = w * term(features, which)
            total = value if total is None else total + value
        assert total is not None
        return total
