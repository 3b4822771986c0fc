"""MRF / nearest-neighbour patch style loss (Li & Wand 2016, "Combining Markov random fields and
convolutional neural networks for image synthesis").

Every k x k patch of the result's features is matched to the style patch with the highest normalised
cross-correlation, and the loss is the mean squared difference between each patch and its match. Unlike
the statistics losses this keeps local structures (a whole brush stroke, an eye) and is not invariant to
moving positions around.

On CPU the matching is a chunked matrix product of the result's patches with the unit-normalised bank
(``MATCH_CHUNK`` rows at a time), never a dense all-pairs tensor. Several styles (or several exemplars)
pool their patches into one bank: each result patch takes the best patch of any of them.

Under masks (spatial control, in the spirit of Champandard 2016's semantic patches but with hard regions)
a region's result patches, those centred on its positions, are matched only with the style patches
centred on the style positions it takes, and only the region's own elements of each patch count: a
position outside the region gets no gradient from it. A region too thin for any patch centre (a strip
along the map's edge) uses the patches that overlap it instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impasto.errors import CheckpointError, InvalidOptionError

PATCH = 3
MATCH_CHUNK = 1024  # result patches matched per matrix product
MAX_BANK = 16384  # style patches kept per style and layer: a larger map keeps every s-th patch each way


def patches(features: Tensor, size: int = PATCH, stride: int = 1) -> Tensor:
    """(N, C, H, W) -> (N, L, C * size * size): the size x size patches every ``stride`` positions (no padding)."""
    h, w = features.shape[-2:]
    if h < size or w < size:
        raise InvalidOptionError(
            f"a {w}x{h} feature map holds no {size}x{size} patch: the picture (or a style image, or the first scale "
            f"of a multi-scale run) is too small for a patch loss at this layer; give a larger --size (and --min-size), "
            f"or shallower layers (--style-layers relu2_1,relu3_1)")
    f = features.to(torch.promote_types(features.dtype, torch.float32))
    return F.unfold(f, size, stride=stride).transpose(1, 2)


def bank_stride(height: int, width: int, size: int = PATCH, limit: int | None = None) -> int:
    """Smallest stride s at which a height x width map gives at most ``limit`` (MAX_BANK) patches."""
    limit = limit or MAX_BANK
    s = 1
    while ((height - size) // s + 1) * ((width - size) // s + 1) > limit:
        s += 1
    return s


def centred_on(where: Tensor, height: int, width: int, size: int = PATCH, stride: int = 1) -> Tensor:
    """Which of the size x size patches taken every ``stride`` positions of a height x width map (the
    order of ``patches``) have their centre at a position where ``where`` (H W,) is True: (L,) bool."""
    grid = where.reshape(height, width)
    r = size // 2
    return grid[r:height - size + r + 1:stride, r:width - size + r + 1:stride].reshape(-1)


def in_region(where: Tensor, height: int, width: int, size: int = PATCH, stride: int = 1) -> Tensor:
    """The patches (every ``stride`` positions, the order of ``patches``) that belong to a region
    ``where`` (H W,): those centred on it; for a region no patch centre falls in (a strip along the
    map's edge, narrower than a patch), those that overlap it. (L,) bool, all False for an empty region."""
    keep = centred_on(where, height, width, size, stride)
    if bool(keep.any()):
        return keep
    mask = where.reshape(1, 1, height, width).float()
    return patches(mask, size, stride)[0].amax(dim=1) > 0


def patch_bank(features: Tensor, size: int = PATCH, where: Tensor | None = None) -> tuple[Tensor]:
    """The style's patches, (N, L, C size^2), at most MAX_BANK of them (strided on large maps: matching
    costs result patches x bank patches); several styles' banks are concatenated along L.

    ``where`` (H W,) bool keeps the patches of those positions (``in_region``; a strided bank that
    misses a thin region is taken again at stride 1)."""
    h, w = features.shape[-2:]
    if where is None:
        return (patches(features, size, bank_stride(h, w, size)),)
    if not bool(where.any()):
        raise InvalidOptionError("a style region needs at least one position")
    stride = bank_stride(h, w, size, MAX_BANK * h * w // int(where.sum()))
    keep = centred_on(where, h, w, size, stride)
    if not bool(keep.any()):  # a thin region between the strided centres, or one no centre falls in
        stride = 1
        keep = in_region(where, h, w, size)
    return (patches(features, size, stride)[:, keep],)


@torch.no_grad()
def nearest_patches(queries: Tensor, bank: Tensor, chunk: int = MATCH_CHUNK, dtype: torch.dtype | None = None) -> Tensor:
    """Index (L,) of the bank row (B, D) with the highest normalised cross-correlation to each query (L, D).

    A query's own norm does not change which row wins, so only the bank is normalised. ``dtype``: the
    precision of the products (bf16 where the features are bf16: their values are exact in it, only the
    normalised bank and the sums round, and the products run 2.4x faster on a CPU with bf16).
    """
    unit = bank / bank.norm(dim=1, keepdim=True).clamp_min(1e-8)
    if dtype is not None:
        queries, unit = queries.to(dtype), unit.to(dtype)
    out = torch.empty(queries.shape[0], dtype=torch.long, device=queries.device)
    for start in range(0, queries.shape[0], chunk):
        out[start:start + chunk] = (queries[start:start + chunk] @ unit.t()).argmax(dim=1)
    return out


def match_dtype(features: Tensor) -> torch.dtype | None:
    """The precision patch matching runs in for these features: bf16 for bf16 features, else the default."""
    return torch.bfloat16 if features.dtype == torch.bfloat16 else None


class Matches:
    """The nearest-patch indices of one loss term, kept between calls and recomputed every ``every``
    calls (and whenever the number of result patches changes): matching is most of the MRF loss's cost,
    and the nearest patches move slowly while an optimisation converges (Li & Wand match every step:
    ``every=1``). Owned by the term that uses it (one per layer and region); never shared."""

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise InvalidOptionError(f"match_every must be at least 1, got {every}")
        self.every, self.calls = every, 0
        self.indices: list[Tensor] = []
        # per batch entry: (the indices it was made from, the matched patches folded back onto the map): derived
        # from the indices, so not in the state_dict
        self.folded: dict[int, tuple[Tensor, tuple[Tensor, Tensor, Tensor]]] = {}

    def start_call(self) -> None:
        """Count one evaluation of the loss; the matches of every ``every``-th one are fresh."""
        self.calls += 1
        if (self.calls - 1) % self.every == 0:
            self.indices.clear()

    def state_dict(self) -> dict[str, object]:
        """The calls counted and the matches kept, for a checkpoint (a resumed run refreshes on the same steps)."""
        return {"calls": self.calls, "indices": [t.clone() for t in self.indices]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        calls, indices = state.get("calls"), state.get("indices")
        if not isinstance(calls, int) or not isinstance(indices, list) or not all(isinstance(t, Tensor) for t in indices):
            raise CheckpointError("not a Matches state (calls: int, indices: list of tensors)")
        self.calls, self.indices = calls, list(indices)

    def current(self, i: int, n_queries: int) -> Tensor | None:
        """The kept matches of batch entry ``i`` when they are still valid for ``n_queries`` result patches
        (None on a refresh call, or when the map's size changed)."""
        if len(self.indices) > i and self.indices[i].shape[0] == n_queries:
            return self.indices[i]
        return None

    def get(self, i: int, queries: Tensor, bank: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Index of the nearest ``bank`` row for each row of ``queries`` (batch entry ``i``; ``dtype``: as
        ``nearest_patches``)."""
        if len(self.indices) <= i or self.indices[i].shape[0] != queries.shape[0]:
            del self.indices[i:]
            self.indices.append(nearest_patches(queries, bank, dtype=dtype))
        return self.indices[i]


def _folded_target(selected: Tensor, height: int, width: int, size: int, keep: Tensor | None = None,
                   where: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """For the matched patches ``selected`` (L', C size^2) of a height x width map (``keep`` (L,) bool: which of
    the map's patches they are, default all): their sum folded back onto the map (1, C, H, W), how many of them
    cover each position (1, 1, H, W), and their summed squares, all in float64. ``where`` (H W,) bool: only the
    elements at those positions count (the masked loss), so the first two are zero elsewhere and the squares
    sum only those elements."""
    values = selected.to(torch.float64)
    full, present = values, values.new_ones(values.shape[0])
    if keep is not None:  # the map's every patch, zero where none was kept
        full, present = values.new_zeros(keep.shape[0], values.shape[1]), keep.to(torch.float64)
        full[keep] = values
    folded = F.fold(full.t().unsqueeze(0), (height, width), size)
    cover = F.fold(present.expand(1, size * size, -1).contiguous(), (height, width), size)
    if where is None:
        return folded, cover, values.pow(2).sum()
    inside = where.reshape(1, 1, height, width).to(torch.float64)
    mask = patches(inside, size)[0] if keep is None else patches(inside, size)[0, keep]  # (L', size^2)
    squares = (values.pow(2) * mask.repeat(1, values.shape[1] // (size * size))).sum()
    return folded * inside, cover * inside, squares


def _mrf_term_folded(feature: Tensor, target: tuple[Tensor, Tensor, Tensor], n_values: int) -> Tensor:
    """The mean of (patch - matched patch)^2 over every patch element, without unfolding ``feature`` (1, C, H, W):
    sum_i |P_i f - b_i|^2 = sum_x cover(x) f(x)^2 - 2 <f, fold(b)> + sum_i |b_i|^2, in float64 (the terms are
    large next to their difference). Same value and gradient as the unfolded form, at a fraction of the memory
    traffic: the folded target is made once per match refresh."""
    folded, cover, squares = target
    f = feature.to(torch.float64)
    return ((cover * f * f).sum() - 2 * (folded * f).sum() + squares) / n_values


def mrf_loss(features: Tensor, bank: Tensor, size: int = PATCH, where: Tensor | None = None,
             matches: Matches | None = None) -> Tensor:
    """Mean squared difference between each result patch and its nearest style patch (bank (1 or N, L, D)).

    ``where`` (H W,) bool: only the patches of those positions (``in_region``), each counting only its
    elements at those positions (zero for an empty region). ``matches``: reuse nearest patches between
    calls (default: match on every call). The patches are not unfolded with their gradient: the loss is taken
    on the map itself against the matched patches folded back onto it (``_mrf_term_folded``; the same value
    and gradient as the paper's form, every patch unfolded, which tests/test_patch_loss.py compares it with)."""
    h, w = features.shape[-2:]
    dtype = torch.promote_types(features.dtype, torch.float32)
    if min(h, w) < size:
        patches(features[:1], size)  # raises the clear error
    keep = None if where is None else in_region(where, h, w, size)
    n_patches = (h - size + 1) * (w - size + 1) if keep is None else int(keep.sum())
    total = features.new_zeros((), dtype=dtype)
    if n_patches == 0:
        return total
    n_values = n_patches * features.shape[1] * size * size
    if matches is not None:
        matches.start_call()
    for i in range(features.shape[0]):
        b = bank[min(i, bank.shape[0] - 1)].to(dtype)
        index = None if matches is None else matches.current(i, n_patches)
        if index is None:
            queries = patches(features[i:i + 1].detach(), size)[0]
            queries = queries if keep is None else queries[keep]
            precision = match_dtype(features)
            index = nearest_patches(queries, b, dtype=precision) if matches is None else matches.get(i, queries, b, precision)
        kept = None if matches is None else matches.folded.get(i)
        if kept is not None and kept[0] is index and tuple(kept[1][0].shape[-2:]) == (h, w):
            target = kept[1]
        else:
            target = _folded_target(b[index], h, w, size, keep, where)
            if matches is not None:
                matches.folded[i] = (index, target)
        total = total + _mrf_term_folded(features[i:i + 1], target, n_values).to(dtype)
    return total / features.shape[0]


class MRFLoss(nn.Module):
    def __init__(self, bank: Tensor, size: int = PATCH) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("bank", bank.detach().clone())

    def forward(self, features: Tensor) -> Tensor:
        return mrf_loss(features, self.bank, self.size)
