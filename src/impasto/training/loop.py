"""The loop every trainer shares: steps, progress events, checkpoints with a loss curve, resume, cancel."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from impasto.errors import CheckpointError
from impasto.events import Callback, CancelToken, Progress, Stage
from impasto.io.checkpoint import load_checkpoint, save_checkpoint
from impasto.io.plot import save_loss_curve

StepFn = Callable[[int], dict[str, Tensor]]  # step index -> {"total": loss to minimise, other parts...}


def _restore(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int,
             where: str) -> tuple[int, dict[str, list[float]]]:
    """Load a training checkpoint into ``model``/``optimizer``; every entry checked, else CheckpointError."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {where} is damaged ({what}); delete it to start fresh")

    missing = [k for k in ("step", "model", "optimizer", "history") if k not in state]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    step, history = state["step"], state["history"]
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= steps:
        raise bad(f"step {step!r} is not in 0..{steps}")
    if not isinstance(history, dict) or not all(isinstance(v, list) for v in history.values()):
        raise bad("history is not a dict of loss lists")
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise bad("model weights are not tensors")
    if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
        raise bad("model weights hold NaN or infinite values")
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise bad(f"weights or optimiser state do not fit this model: {str(exc).splitlines()[0]}") from None
    return step, {k: list(v) for k, v in history.items()}


def run_steps(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: StepFn,
    steps: int,
    fingerprint: str,
    title: str,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    callback: Callback | None = None,
    cancel: CancelToken | None = None,
    stage_size: tuple[int, int] | None = None,
) -> dict[str, list[float]]:
    """Optimise ``model`` for ``steps`` steps of ``step_fn``; returns the loss history.

    ``step_fn(k)`` must be a pure function of k and the model's state (draw its batch from a
    generator seeded with k) so that a resumed run repeats an uninterrupted one exactly. The
    checkpoint (model, optimiser, step, history; a loss-curve PNG beside it) is written every
    ``checkpoint_every`` steps, at the end, and when ``cancel`` stops the run.
    """
    history: dict[str, list[float]] = {}
    start = 0
    if resume:
        if checkpoint is None:
            raise CheckpointError("resume needs a checkpoint path")
        state = load_checkpoint(checkpoint)
        if state.get("fingerprint") != fingerprint:
            raise CheckpointError(f"checkpoint {checkpoint} belongs to a different training run (options, styles or data differ)")
        start, history = _restore(state, model, optimizer, steps, str(checkpoint))

    def save(step: int) -> None:
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"fingerprint": fingerprint, "step": step, "model": model.state_dict(),
                                         "optimizer": optimizer.state_dict(), "history": history})
            save_loss_curve(history, Path(checkpoint).with_suffix(".loss.png"), title=f"{title}: step {step}")

    if callback:
        callback(Stage(name="train", size=stage_size))
    model.train()
    for step in range(start, steps):
        if cancel is not None and cancel.cancelled:
            save(step)
            cancel.raise_if_cancelled()
        parts = step_fn(step)
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        optimizer.step()
        for key, value in parts.items():
            history.setdefault(key, []).append(float(value.detach()))
        if callback:
            callback(Progress(step=step + 1, total=steps, losses={k: v[-1] for k, v in history.items()}))
        if checkpoint_every > 0 and (step + 1) % checkpoint_every == 0:
            save(step + 1)
    model.eval()
    if checkpoint is not None and (checkpoint_every <= 0 or steps % checkpoint_every):
        save(steps)
    return history
