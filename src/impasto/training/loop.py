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
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        history = {k: list(v) for k, v in state["history"].items()}

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
