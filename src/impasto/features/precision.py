"""The device and precision networks run in: fp32, or bf16 with channels-last tensors where the
hardware has bf16.

oneDNN's bf16 convolutions are fastest channels-last (measured here: VGG-16 up to relu5_1 and its
decoder at 1024 px 4.6x and 5.4x faster than fp32). Every method and trainer picks its precision
through ``use_bf16`` and moves networks and inputs with ``to_bf16`` / ``bf16_input``. Trainers also
take a device (``resolve_device``): the CPU, or a CUDA GPU where torch was built with CUDA.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn

from impasto.errors import InvalidOptionError, suggest

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
Module = TypeVar("Module", bound=nn.Module)


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX-512 BF16 / AMX)."""
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def resolve_device(name: str) -> torch.device:
    """``name`` ("auto", "cpu", "cuda" or "cuda:N") -> the device; auto: the first CUDA GPU if torch sees one,
    else the CPU. Raises InvalidOptionError for another name and for a GPU this torch cannot use."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, but no GPU is visible"
            raise InvalidOptionError(f"--device {name}: this torch ({torch.__version__}) is {build}; use --device cpu "
                                     "(or install a CUDA build of torch on a machine with an NVIDIA GPU)")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise InvalidOptionError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0 .. "
                                     f"cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    raise InvalidOptionError(f"device must be one of {', '.join(DEVICES)} or cuda:N, got '{name}'.{suggest(name, DEVICES)}")


def use_bf16(precision: str, device: torch.device | None = None) -> bool:
    """``precision`` ("auto", "fp32" or "bf16") -> whether to run in bf16 on ``device`` (default the CPU);
    auto: where supported.

    Raises InvalidOptionError for another value, and for "bf16" on hardware without bf16.
    """
    if precision not in PRECISIONS:
        raise InvalidOptionError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'.{suggest(precision, PRECISIONS)}")
    if precision == "fp32":
        return False
    if device is not None and device.type == "cuda":
        supported = torch.cuda.get_device_capability(device)[0] >= 8  # native bf16 (older GPUs only emulate it)
        where = "a GPU with bf16 support (Ampere or newer)"
    else:
        supported = bf16_supported()
        where = "a CPU with bf16 support"
    if precision == "bf16" and not supported:
        raise InvalidOptionError(f"precision bf16 needs {where}; use --precision fp32")
    return supported


def to_bf16(module: Module) -> Module:
    """The module's weights in bf16, channels-last (in place; returns it)."""
    return module.to(torch.bfloat16).to(memory_format=torch.channels_last)


def bf16_input(x: Tensor) -> Tensor:
    """A batch (N, C, H, W) as bf16 channels-last, what a ``to_bf16`` network runs fastest on."""
    return x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def input_for(module: nn.Module, x: Tensor) -> Tensor:
    """``x`` as ``module`` takes it: ``bf16_input(x)`` for a ``to_bf16`` module, else ``x`` unchanged."""
    return bf16_input(x) if next(module.parameters()).dtype == torch.bfloat16 else x
