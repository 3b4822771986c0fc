"""MRF / nearest-neighbour patch style loss (Li & Wand 2016, "Combining Markov random fields and
convolutional neural networks for image synthesis").

Every k x k patch of the result's features is matched to the style patch with the highest normalised
cross-correlation, and the loss is the mean squared difference between each patch and its match. Unlike
the statistics losses this keeps local structures (a whole brush stroke, an eye) and is not invariant to
moving positions around.

On CPU the matching is a chunked matrix product of the result's patches with the unit-normalised bank
(``MATCH_CHUNK`` rows at a time), never a dense all-pairs tensor. Several styles (or several exemplars)
pool their patches into one bank: each result patch takes the best patch of any of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PATCH = 3
MATCH_CHUNK = 1024  # result patches matched per matrix product
MAX_BANK = 16384  # style patches kept per style and layer: a larger map keeps every s-th patch each way


def patches(features: Tensor, size: int = PATCH, stride: int = 1) -> Tensor:
    """(N, C, H, W) -> (N, L, C * size * size): the size x size patches every ``stride`` positions (no padding)."""
    f = features.to(torch.promote_types(features.dtype, torch.float32))
    return F.unfold(f, size, stride=stride).transpose(1, 2)


def bank_stride(height: int, width: int, size: int = PATCH, limit: int | None = None) -> int:
    """Smallest stride s at which a height x width map gives at most ``limit`` (MAX_BANK) patches."""
    limit = limit or MAX_BANK
    s = 1
    while ((height - size) // s + 1) * ((width - size) // s + 1) > limit:
        s += 1
    return s


def patch_bank(features: Tensor, size: int = PATCH) -> tuple[Tensor]:
    """The style's patches, (N, L, C size^2), at most MAX_BANK of them (strided on large maps: matching
    costs result patches x bank patches); several styles' banks are concatenated along L."""
    return (patches(features, size, bank_stride(*features.shape[-2:], size)),)


@torch.no_grad()
def nearest_patches(queries: Tensor, bank: Tensor, chunk: int = MATCH_CHUNK) -> Tensor:
    """Index (L,) of the bank row (B, D) with the highest normalised cross-correlation to each query (L, D).

    A query's own norm does not change which row wins, so only the bank is normalised.
    """
    unit = bank / bank.norm(dim=1, keepdim=True).clamp_min(1e-8)
    out = torch.empty(queries.shape[0], dtype=torch.long)
    for start in range(0, queries.shape[0], chunk):
        out[start:start + chunk] = (queries[start:start + chunk] @ unit.t()).argmax(dim=1)
    return out


def mrf_loss(features: Tensor, bank: Tensor, size: int = PATCH) -> Tensor:
    """Mean squared difference between each result patch and its nearest style patch (bank (1 or N, L, D))."""
    queries = patches(features, size)
    total = queries.new_zeros(())
    for i in range(queries.shape[0]):
        b = bank[min(i, bank.shape[0] - 1)].to(queries.dtype)
        match = b[nearest_patches(queries[i].detach(), b)]
        total = total + (queries[i] - match).pow(2).mean()
    return total / queries.shape[0]


class MRFLoss(nn.Module):
    def __init__(self, bank: Tensor, size: int = PATCH) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("bank", bank.detach().clone())

    def forward(self, features: Tensor) -> Tensor:
        return mrf_loss(features, self.bank, self.size)
