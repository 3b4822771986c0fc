"""What every method's ``run`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Result:
    """A method's output image plus the facts its recipe records."""

    image: Tensor  # (1, 3, H, W) float32 in [0, 1]
    weights: str  # name of the weights/model used
    weights_sha256: str
    steps: int
    seconds: float
    final_losses: dict[str, float] = field(default_factory=dict)
    # faces the method weighed differently (the optimisation's --protect-faces): (x0, y0, x1, y1) as fractions
    faces: list[tuple[float, float, float, float]] = field(default_factory=list)
