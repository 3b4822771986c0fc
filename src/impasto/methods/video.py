"""Temporal consistency for video around ANY method's prepared stylizer (Ruder, Dosovitskiy & Brox 2016).

Stylising frames independently flickers: small changes in a frame move the optimum or the network's
output a lot. ``Temporal`` keeps the last frames (sources and results) and ties each new result to the
earlier ones along the optical flow, with per-pixel weights c that are 0 where the flow cannot be trusted
(disocclusion by the forward-backward check, motion boundaries: ``ops.flow``):

- ``loss`` (methods whose prepared call takes ``init``/``extra_loss``: optimization, exemplars): frame i
  starts from frame i-1's result warped onto it and is optimised for
  ``warm_iterations`` steps with the temporal loss over the earlier frames ``long_term`` (short-term: (1,)).
- ``blend`` (every method, no retraining): the new result is pulled towards the warped previous result,
  ``out = styled + strength * c * (warp(prev) - styled)``, where c also drops to 0 where the warped
  previous *source* frame does not match this frame (so a moving object is not smeared).
- ``none``: frames independently.

Multi-pass (``passes`` > 1): after the first pass, each further pass runs over the clip in the other
direction and starts each frame from its current result blended with the warped neighbour refined just
before it, then optimises ``pass_iterations`` steps with the temporal loss towards that neighbour.

Differs from the paper: the first pass already uses the temporal loss and warm starts (Ruder et al.'s
multi-pass starts from independent frames and switches the temporal loss on in later passes), so one
pass is the default; flow from OpenCV DIS with several start hypotheses (``features.flow``), not DeepFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from impasto.errors import InvalidOptionError, suggest
from impasto.features.flow import FLOW_METHODS, estimate_flow
from impasto.io.flow import FlowCache
from impasto.losses.temporal import TemporalLoss, warping_error
from impasto.ops.flow import consistency_weights, long_term_weights, warp
from impasto.ops.geometry import resize
from impasto.options import Range, UNIT, WEIGHT, option
from impasto.validation import check_fields

TEMPORAL_MODES = ("auto", "none", "blend", "loss")


@dataclass(frozen=True)
class Options:
    """Every default of the temporal layer (``impasto stylize-video``)."""

    temporal: str = option("auto", "none (frames independently), blend (pull each result towards the warped previous one; any method), loss (temporal loss with a warm start; optimization and exemplars) or auto (loss where the method takes it, else blend).")
    flow: str = option("auto", "Optical flow: dis-robust (DIS from several start hypotheses: holds up under large motion, about 5x slower), dis-medium, dis-fast, dis-ultrafast, farneback, or auto (dis-robust for --temporal loss, dis-medium for blend, whose colour check already drops pixels the flow got wrong).")
    blend_strength: float = option(0.8, "blend: how far each result moves towards the warped previous result where the flow is reliable (0 none, 1 all the way).", range=UNIT)
    blend_tolerance: float = option(0.08, "blend: mean colour difference (RGB in [0, 1]) between this frame and the warped previous frame at which a pixel stops being blended (keeps moving objects sharp).", range=Range(0, 1, low_open=True))
    temporal_weight: float = option(500.0, "loss: weight of the temporal loss (gamma; the content and style terms keep their method's weights).", range=WEIGHT)
    long_term: tuple[int, ...] = option((1, 2, 4), "loss: earlier frames j each result is tied to (Ruder et al.'s J); (1,) is the short-term loss.", range=Range(1, 32))
    warm_iterations: int = option(60, "loss: optimiser steps for every frame after the first (which gets the method's full schedule).", range=Range(0, 100_000))
    passes: int = option(1, "loss: passes over the clip (Ruder et al.'s multi-pass); passes after the first alternate direction and refine each frame towards its already refined neighbour.", range=Range(1, 20))
    pass_iterations: int = option(20, "loss: optimiser steps per frame in each pass after the first.", range=Range(0, 100_000))
    pass_blend: float = option(0.5, "loss: share of the warped neighbour in a later pass's start image, where the flow is reliable (Ruder et al.'s 1 - delta).", range=UNIT)


def validate(options: Options, takes_loss: bool, method: str) -> None:
    check_fields(options)
    if options.temporal not in TEMPORAL_MODES:
        raise InvalidOptionError(f"--temporal must be one of {', '.join(TEMPORAL_MODES)}, got '{options.temporal}'"
                                 f".{suggest(options.temporal, TEMPORAL_MODES)}")
    if options.flow not in ("auto", *FLOW_METHODS):
        raise InvalidOptionError(f"--flow must be one of auto, {', '.join(FLOW_METHODS)}, got '{options.flow}'"
                                 f".{suggest(options.flow, FLOW_METHODS)}")
    if options.temporal == "loss" and not takes_loss:
        raise InvalidOptionError(f"--temporal loss needs a method that optimises (optimization, exemplars); "
                                 f"--method {method} runs in one pass: use --temporal blend")
    if not options.long_term:
        raise InvalidOptionError("--long-term needs at least one earlier frame, e.g. 1")
    if options.passes > 1 and resolve_mode(options, takes_loss) != "loss":
        raise InvalidOptionError(f"--passes {options.passes} refines with the temporal loss: it needs --temporal loss and an "
                                 "optimising method (optimization, exemplars)")


def resolve_mode(options: Options, takes_loss: bool) -> str:
    if options.temporal != "auto":
        return options.temporal
    return "loss" if takes_loss else "blend"


def resolve_flow(options: Options, mode: str) -> str:
    if options.flow != "auto":
        return options.flow
    return "dis-robust" if mode == "loss" else "dis-medium"


@dataclass
class _Past:
    source: Tensor  # the source frame at the output size
    result: Tensor  # its (stored, 8-bit) result


@dataclass
class FrameFacts:
    """What the temporal layer did for one frame."""

    mode: str
    reliable: float = 0.0  # share of pixels whose previous-frame flow was trusted (c = 1)
    warping_error: float | None = None  # against the warped previous result, where c > 0
    losses: dict[str, float] = field(default_factory=dict)


def _photometric(source: Tensor, warped_source: Tensor, tolerance: float) -> Tensor:
    """1 where the warped earlier frame matches this one, falling linearly to 0 at ``tolerance`` mean RGB difference."""
    diff = (source - warped_source).abs().mean(1, keepdim=True)
    return (1 - diff / tolerance).clamp(0, 1)


class Temporal:
    """Stylise frames in order with temporal consistency. ``stylize(frame, **kw) -> Result`` is a method's
    prepared callable; ``takes_loss`` says whether it accepts ``init``/``iterations``/``extra_loss``.

    Call ``step(frame)`` for each frame in order; ``remember(frame, result)`` feeds a result made earlier
    (a resumed run) without stylising. Only the last ``max(long_term)`` frames are kept (constant memory).
    """

    def __init__(self, stylize: Callable[..., Any], options: Options, *, takes_loss: bool, method: str = "",
                 flows: FlowCache | None = None) -> None:
        validate(options, takes_loss, method)
        self.stylize, self.options, self.takes_loss, self.flows = stylize, options, takes_loss, flows
        self.mode = resolve_mode(options, takes_loss)
        self.flow = resolve_flow(options, self.mode)
        self.offsets = sorted(set(options.long_term)) if self.mode == "loss" else [1]
        self.past: list[_Past] = []  # most recent last

    def _flow(self, a: Tensor, b: Tensor) -> Tensor:
        """The flow a -> b (from the cache on disk when there is one)."""
        return self.flows.get(a, b, self.flow, estimate_flow) if self.flows is not None else estimate_flow(a, b, self.flow)

    def _sized(self, frame: Tensor, size: tuple[int, int]) -> Tensor:
        return frame if tuple(frame.shape[-2:]) == size else resize(frame, size)

    def _links(self, source: Tensor) -> dict[int, tuple[Tensor, Tensor, Tensor]]:
        """For each earlier frame j back: (its result warped onto this frame, its source warped, weights c)."""
        links = {}
        for j in self.offsets:
            if j > len(self.past):
                break
            earlier = self.past[-j]
            backward = self._flow(source, earlier.source)  # this frame -> earlier one
            forward = self._flow(earlier.source, source)
            c = consistency_weights(forward, backward)
            links[j] = (warp(earlier.result, backward), warp(earlier.source, backward), c)
        return links

    def remember(self, frame: Tensor, result: Tensor) -> None:
        """Keep ``frame`` (resized to the result's size) and its result as the newest past frame."""
        self.past.append(_Past(self._sized(frame, tuple(result.shape[-2:])), result))
        del self.past[:-max(self.offsets)]

    def step(self, frame: Tensor, **call: Any) -> tuple[Any, FrameFacts]:
        """Stylise the next frame: (the method's Result with the temporal image, what the layer did)."""
        if self.mode == "none" or not self.past:
            return self.stylize(frame, **call), FrameFacts(mode="none" if self.mode == "none" else "first")
        size = tuple(self.past[-1].result.shape[-2:])
        source = self._sized(frame, size)
        links = self._links(source)
        warped, warped_source, c = links[1]
        if self.mode == "blend":
            result = self.stylize(frame, **call)
            styled = result.image
            if tuple(styled.shape[-2:]) != size:
                raise InvalidOptionError("the method's output changed size between frames; temporal blending needs one size")
            weight = self.options.blend_strength * c * _photometric(source, warped_source, self.options.blend_tolerance)
            image = (styled + weight * (warped - styled)).clamp(0, 1)
            result.image = image.contiguous()
            facts = FrameFacts(mode="blend", reliable=float(c.mean()), warping_error=warping_error(image, warped, c))
            return result, facts
        # loss: warm start from the warped previous result everywhere (Ruder et al.'s initialisation; filling
        # the c = 0 pixels from the photo left thin unstylised streaks along motion boundaries after the few
        # warm steps), temporal loss over the long-term frames
        init = warped
        weights = long_term_weights({j: link[2] for j, link in links.items()}, self.offsets)
        return self._optimise(frame, init, [(links[j][0], weights[j]) for j in weights], self.options.warm_iterations,
                              warped, c, **call)

    def _optimise(self, frame: Tensor, init: Tensor, pairs: list[tuple[Tensor, Tensor]], iterations: int,
                  warped: Tensor, c: Tensor, **call: Any) -> tuple[Any, FrameFacts]:
        """The method's warm-started call with the temporal loss over ``pairs`` (warped result, weights)."""
        term = TemporalLoss(pairs)
        gamma = self.options.temporal_weight

        def extra_loss(image: Tensor) -> dict[str, Tensor]:
            return {"temporal": gamma * term(image)}

        result = self.stylize(frame, init=init, iterations=iterations, extra_loss=extra_loss, **call)
        facts = FrameFacts(mode="loss", reliable=float(c.mean()), warping_error=warping_error(result.image, warped, c),
                           losses=dict(result.final_losses))
        return result, facts

    def refine(self, frame: Tensor, own: Tensor, neighbour_frame: Tensor, neighbour: Tensor, **call: Any) -> tuple[Any, FrameFacts]:
        """One frame of a later pass (Ruder et al.'s multi-pass): start from this frame's current result blended
        with its neighbour's (the frame before it in this pass's direction, already refined in this pass)
        warped onto it where the flow is reliable, ``pass_blend`` of the neighbour, and optimise
        ``pass_iterations`` steps with the temporal loss towards the warped neighbour."""
        if self.mode != "loss":
            raise InvalidOptionError("--passes above 1 needs --temporal loss (an optimising method)")
        size = tuple(own.shape[-2:])
        source, other = self._sized(frame, size), self._sized(neighbour_frame, size)
        backward = self._flow(source, other)
        forward = self._flow(other, source)
        c = consistency_weights(forward, backward)
        warped = warp(neighbour, backward)
        delta = self.options.pass_blend
        init = own + delta * c * (warped - own)
        return self._optimise(frame, init, [(warped, c)], self.options.pass_iterations, warped, c, **call)


def pair_warping_error(earlier_source: Tensor, source: Tensor, earlier_result: Tensor, result: Tensor,
                       flow: str = "dis-robust") -> float:
    """Lai et al. (2018) warping error of ``result`` against ``earlier_result``, warped by the flow between the
    *source* frames (resized to the results' size), over the pixels the consistency check trusts."""
    size = tuple(result.shape[-2:])
    if tuple(earlier_result.shape[-2:]) != size:
        raise InvalidOptionError(f"stylised frames differ in size: {tuple(earlier_result.shape[-2:])} and {size}")
    a, b = resize(earlier_source, size), resize(source, size)
    backward, forward = estimate_flow(b, a, flow), estimate_flow(a, b, flow)
    return warping_error(result, warp(earlier_result, backward), consistency_weights(forward, backward))


def temporal_summary(errors: Sequence[float]) -> dict[str, float]:
    """Mean and worst warping error of a run (what tables print)."""
    if not errors:
        return {"mean": 0.0, "max": 0.0}
    t = torch.tensor(list(errors), dtype=torch.float64)
    return {"mean": float(t.mean()), "max": float(t.max())}
