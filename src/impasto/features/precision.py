"""The precision networks run in: fp32, or bf16 with channels-last tensors where the CPU has bf16.

oneDNN's bf16 convolutions are fastest channels-last (measured here: VGG-16 up to relu5_1 and its
decoder at 1024 px 4.6x and 5.4x faster than fp32). Every method and trainer picks its precision
through ``use_bf16`` and moves networks and inputs with ``to_bf16`` / ``bf16_input``.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn

from impasto.errors import InvalidOptionError, suggest

PRECISIONS = ("auto", "fp32", "bf16")
Module = TypeVar("Module", bound=nn.Module)


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX-512 BF16 / AMX)."""
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def use_bf16(precision: str) -> bool:
    """``precision`` ("auto", "fp32" or "bf16") -> whether to run in bf16; auto: where supported.

    Raises InvalidOptionError for another value, and for "bf16" on a CPU without bf16.
    """
    if precision not in PRECISIONS:
        raise InvalidOptionError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'.{suggest(precision, PRECISIONS)}")
    if precision == "fp32":
        return False
    if precision == "bf16" and not bf16_supported():
        raise InvalidOptionError("precision bf16 needs a CPU with bf16 support; use --precision fp32")
    return bf16_supported()


def to_bf16(module: Module) -> Module:
    """The module's weights in bf16, channels-last (in place; returns it)."""
    return module.to(torch.bfloat16).to(memory_format=torch.channels_last)


def bf16_input(x: Tensor) -> Tensor:
    """A batch (N, C, H, W) as bf16 channels-last, what a ``to_bf16`` network runs fastest on."""
    return x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def input_for(module: nn.Module, x: Tensor) -> Tensor:
    """``x`` as ``module`` takes it: ``bf16_input(x)`` for a ``to_bf16`` module, else ``x`` unchanged."""
    return bf16_input(x) if next(module.parameters()).dtype == torch.bfloat16 else x
