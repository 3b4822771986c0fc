"""Typed progress events and cancellation. The library never prints; it emits these."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from impasto.errors import CancelledError


@dataclass(frozen=True)
class Stage:
    """A new phase started (e.g. a new scale of a multi-scale run)."""

    name: str
    index: int = 0
    total: int = 1
    size: tuple[int, int] | None = None  # (H, W) at this stage, if it has one


@dataclass(frozen=True)
class Progress:
    """One optimisation step finished."""

    step: int  # steps done in the whole run (1-based)
    total: int  # steps planned in the whole run
    scale_index: int = 0
    scale_total: int = 1
    losses: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Done:
    """The run finished; ``seconds`` is wall time."""

    seconds: float
    steps: int


Event = Stage | Progress | Done


class Callback(Protocol):
    def __call__(self, event: Event) -> None: ...


class CancelToken:
    """Thread-safe flag. ``cancel()`` from anywhere; the method checks it every step
    and raises ``CancelledError`` (after writing its checkpoint, if one is configured)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("the run was cancelled")
