"""MRF patch loss (losses/patch.py): true nearest neighbours by brute force, chunking, pooled banks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from impasto.errors import InvalidOptionError
from impasto.losses import patch
from impasto.losses.objective import StyleTerm


def _feat(seed: int, c: int = 3, h: int = 8, w: int = 9, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _mrf_loss_unfolded(features, bank, size=patch.PATCH, where=None, matches=None):
    """The MRF loss as written in the paper: every patch unfolded, compared with its match (the reference
    patch.mrf_loss, which folds the matches onto the map instead, is tested against)."""
    queries = patch.patches(features, size)
    inside = None
    if where is not None:
        h, w = features.shape[-2:]
        keep = patch.in_region(where, h, w, size)
        mask = patch.patches(where.reshape(1, 1, h, w).to(queries.dtype), size)[0, keep]  # (L', size^2)
        inside = mask.repeat(1, features.shape[1])  # unfold's order: channel, then row, then column
        queries = queries[:, keep]
    total = queries.new_zeros(())
    if queries.shape[1] == 0:
        return total
    if matches is not None:
        matches.start_call()
    for i in range(queries.shape[0]):
        b = bank[min(i, bank.shape[0] - 1)].to(queries.dtype)
        q, precision = queries[i].detach(), patch.match_dtype(features)
        index = patch.nearest_patches(q, b, dtype=precision) if matches is None else matches.get(i, q, b, precision)
        diff = (queries[i] - b[index]).pow(2)
        total = total + (diff if inside is None else diff * inside).mean()
    return total / queries.shape[0]


def test_nearest_patches_are_the_brute_force_best_normalised_correlation():
    queries, bank = _feat(0).reshape(-1, 8)[:50], _feat(1).reshape(-1, 8)[:40]
    ncc = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).t()
    assert torch.equal(patch.nearest_patches(queries, bank), ncc.argmax(dim=1))
    assert torch.equal(patch.nearest_patches(queries, bank, chunk=7), ncc.argmax(dim=1))  # chunking changes nothing


def test_bf16_features_are_matched_in_bf16_close_to_the_exact_matches():
    """bf16 features are exact in bf16: matching them there changes only near-ties (the normalised bank and the
    sums round), and each chosen patch correlates with its query within 1 % of the best one."""
    g = torch.Generator().manual_seed(3)
    queries = torch.randn(300, 72, generator=g).to(torch.bfloat16).float()
    bank = torch.randn(500, 72, generator=g).to(torch.bfloat16).float()
    exact, fast = patch.nearest_patches(queries, bank), patch.nearest_patches(queries, bank, dtype=torch.bfloat16)
    ncc = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).t()
    assert (exact == fast).float().mean() > 0.9
    rows = torch.arange(300)
    assert (ncc[rows, fast] >= ncc[rows, exact] - 0.01 * ncc[rows, exact].abs()).all()
    assert patch.match_dtype(queries.to(torch.bfloat16)) == torch.bfloat16 and patch.match_dtype(queries) is None


def test_patches_are_every_window():
    f = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(1, 2, 4, 5)
    p = patch.patches(f)
    assert p.shape == (1, 2 * 3, 2 * 3 * 3)
    assert torch.equal(p[0, 0], f[0, :, :3, :3].reshape(-1))
    assert torch.equal(p[0, -1], f[0, :, 1:, 2:].reshape(-1))


def test_mrf_is_zero_on_the_style_and_not_invariant_to_moving_positions():
    s = _feat(1)
    (bank,) = patch.patch_bank(s)
    assert patch.mrf_loss(s, bank).item() == pytest.approx(0.0, abs=1e-10)
    perm = torch.randperm(72, generator=torch.Generator().manual_seed(2))
    shuffled = s.reshape(1, 3, 72)[..., perm].reshape(1, 3, 8, 9)
    assert patch.mrf_loss(shuffled, bank).item() > 0.1  # same values, other neighbourhoods: Gram would say 0


def test_gradcheck_and_module():
    (bank,) = patch.patch_bank(_feat(1, dtype=torch.float64))
    f = _feat(2, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: patch.mrf_loss(x, bank), (f,))
    assert torch.equal(patch.MRFLoss(bank)(f), patch.mrf_loss(f, bank))


@pytest.mark.parametrize("every", [None, 1, 3])
def test_the_folded_loss_equals_the_unfolded_reference_in_value_and_gradient(every):
    """mrf_loss folds the matched patches back onto the map instead of unfolding the result: same value and
    gradient as the paper's form (_mrf_loss_unfolded), over several calls with matches kept or refreshed,
    on a batch of two against two banks."""
    bank = torch.cat([patch.patch_bank(_feat(s, c=4, h=9, w=10))[0] for s in (1, 2)])  # (2, L, D)
    kept = {"fast": None if every is None else patch.Matches(every), "ref": None if every is None else patch.Matches(every)}
    x = torch.cat([_feat(5, c=4), _feat(6, c=4)]).requires_grad_(True)  # (2, 4, 8, 9)
    for step in range(5):
        f = (x + 0.3 * step).detach().requires_grad_(True)
        fast = patch.mrf_loss(f, bank, matches=kept["fast"])
        (g_fast,) = torch.autograd.grad(fast, f)
        ref = _mrf_loss_unfolded(f, bank, matches=kept["ref"])
        (g_ref,) = torch.autograd.grad(ref, f)
        assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
        assert torch.allclose(g_fast, g_ref, rtol=1e-4, atol=1e-7)
    if every is not None:
        assert [t.tolist() for t in kept["fast"].indices] == [t.tolist() for t in kept["ref"].indices]


def test_the_masked_folded_loss_equals_the_unfolded_reference_and_a_full_mask_changes_nothing():
    bank = patch.patch_bank(_feat(1, c=4, h=9, w=10))[0]
    f = _feat(5, c=4).requires_grad_(True)  # 8 x 9
    where = torch.zeros(8, 9, dtype=torch.bool)
    where[2:7, 1:5] = True
    where[0, 8] = True  # a corner no patch is centred on, inside a larger region
    fast = patch.mrf_loss(f, bank, where=where.flatten())
    (g_fast,) = torch.autograd.grad(fast, f)
    ref = _mrf_loss_unfolded(f, bank, where=where.flatten())
    (g_ref,) = torch.autograd.grad(ref, f)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(g_fast, g_ref, rtol=1e-4, atol=1e-7)
    everywhere = torch.ones(72, dtype=torch.bool)
    assert torch.equal(patch.mrf_loss(f, bank, where=everywhere), patch.mrf_loss(f, bank))  # bit for bit


def test_pooled_bank_takes_each_half_from_the_exemplar_that_fits_it():
    a, b = _feat(3, h=6, w=6), _feat(4, h=6, w=6)
    result = torch.cat([a, b], dim=3)  # left half is a, right half is b
    term = StyleTerm("mrf", {"x": 1.0}, [{"x": a}, {"x": b}])
    assert term.targets["x"][0].shape[1] == 2 * 16  # one bank of both exemplars' patches
    assert term({"x": result}).item() < 0.5 * StyleTerm("mrf", {"x": 1.0}, [{"x": a}])({"x": result}).item()
    bank = term.targets["x"][0][0]
    idx = patch.nearest_patches(patch.patches(result)[0], bank)
    sources = (idx >= 16).reshape(4, 10)  # 4 rows x 10 columns of windows; True: matched in b
    assert not sources[:, :4].any() and sources[:, 6:].all()  # windows wholly inside a half
    zero_b = StyleTerm("mrf", {"x": 1.0}, [{"x": a}, {"x": b}], mix=(1.0, 0.0))
    assert zero_b.targets["x"][0].shape[1] == 16  # a style of weight 0 adds no patches


def test_large_style_maps_keep_a_strided_bank_of_at_most_max_bank_patches(monkeypatch):
    assert patch.bank_stride(8, 9, limit=42) == 1 and patch.bank_stride(8, 9, limit=41) == 2
    s = _feat(1)  # 8 x 9: 6 x 7 = 42 patches at stride 1, 3 x 4 = 12 at stride 2
    assert patch.patch_bank(s)[0].shape == (1, 42, 27)
    monkeypatch.setattr(patch, "MAX_BANK", 20)
    (bank,) = patch.patch_bank(s)
    assert bank.shape == (1, 12, 27)
    assert torch.equal(bank[0, 1], s[0, :, 0:3, 2:5].reshape(-1))  # the second patch starts 2 columns on
    assert 0 < patch.mrf_loss(s, bank).item() < patch.mrf_loss(s, patch.patch_bank(_feat(5))[0]).item()


def test_a_masked_mrf_counts_only_the_region_and_passes_gradcheck():
    s = _feat(1, dtype=torch.float64)
    where = torch.zeros(8, 9, dtype=torch.bool)
    where[2:6, 1:5] = True
    (bank,) = patch.patch_bank(s, where=where.flatten())
    assert bank.shape[1] == 4 * 4  # one patch per centre in the region (all of them interior)
    centres = patch.centred_on(where.flatten(), 8, 9)
    assert torch.equal(bank[0], patch.patches(s)[0, centres])
    f = _feat(2, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: patch.mrf_loss(x, bank, where=where.flatten()), (f,))
    patch.mrf_loss(f, bank, where=where.flatten()).backward()
    assert torch.equal(f.grad[0, :, ~where], torch.zeros_like(f.grad[0, :, ~where]))
    assert (f.grad[0, :, where] != 0).all()
    thin = torch.zeros(64, 64, dtype=torch.bool)
    thin[10, 5:40] = True  # one even row: the centres of a bank strided by 2 are on odd rows
    big = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(5))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(patch, "MAX_BANK", 16)  # 35 positions: a bank strided by 2
        (thin_bank,) = patch.patch_bank(big, where=thin.flatten())
    assert thin_bank.shape[1] > 0
    assert torch.equal(thin_bank[0], patch.patches(big)[0, patch.centred_on(thin.flatten(), 64, 64, stride=1)])
    full = torch.ones(72, dtype=torch.bool)  # a region of every position is the unmasked loss
    assert torch.allclose(patch.mrf_loss(f, bank, where=full), patch.mrf_loss(f, bank))
    edge = torch.zeros(8, 9, dtype=torch.bool)
    edge[0] = True  # no patch is centred on the top row: the patches that overlap it (the first row of windows)
    top = patch.patch_bank(s, where=edge.flatten())[0]
    assert torch.equal(top, patch.patches(s)[:, :7])
    f.grad = None
    patch.mrf_loss(f, bank, where=edge.flatten()).backward()
    assert (f.grad[0, :, 0] != 0).all() and torch.equal(f.grad[0, :, 1:], torch.zeros_like(f.grad[0, :, 1:]))
    empty = torch.zeros(72, dtype=torch.bool)
    assert patch.mrf_loss(f, bank, where=empty).item() == 0
    with pytest.raises(InvalidOptionError, match="at least one position"):
        patch.patch_bank(s, where=empty)


def test_matches_are_reused_between_refreshes_and_forgotten_on_reset():
    (bank,) = patch.patch_bank(_feat(1))
    a, b = _feat(2), _feat(3)
    fresh_a = patch.nearest_patches(patch.patches(a)[0], bank[0])
    fresh_b = patch.nearest_patches(patch.patches(b)[0], bank[0])
    assert not torch.equal(fresh_a, fresh_b)
    stale_b = (patch.patches(b)[0] - bank[0][fresh_a]).pow(2).mean()  # b compared with a's matches
    matches = patch.Matches(every=3)
    assert torch.allclose(patch.mrf_loss(a, bank, matches=matches), patch.mrf_loss(a, bank))  # call 1: fresh
    assert torch.allclose(patch.mrf_loss(b, bank, matches=matches), stale_b)  # calls 2 and 3 reuse them
    assert torch.allclose(patch.mrf_loss(b, bank, matches=matches), stale_b)
    assert torch.allclose(patch.mrf_loss(b, bank, matches=matches), patch.mrf_loss(b, bank))  # call 4: fresh
    term = StyleTerm("mrf", {"x": 1.0}, [{"x": _feat(1)}], match_every=3)
    term({"x": a})
    term.reset()
    assert torch.allclose(term({"x": b}), StyleTerm("mrf", {"x": 1.0}, [{"x": _feat(1)}])({"x": b}))
    with pytest.raises(InvalidOptionError, match="at least 1"):
        patch.Matches(every=0)
    # training compares another image at every call: a per-sample term keeps no matches at all
    assert StyleTerm("mrf", {"x": 1.0}, [{"x": _feat(1)}, {"x": _feat(2)}], per_sample=True, match_every=3).states == {}


def test_a_prepared_mrf_run_with_reused_matches_repeats_exactly():
    from impasto.methods import optimization as opt

    content, style = (torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(i)) for i in (0, 1))
    options = opt.Options(encoder="tiny", size=32, scale_iterations=(7,), precision="fp32", style_loss="mrf",
                          style_layers=("relu1_1", "relu2_1"), match_every=3)
    prepared = opt.prepare(style, options)
    first, second = prepared(content).image, prepared(content).image  # the second reuses the cached style term
    assert torch.equal(first, second)
    every_step = opt.run(content, style, opt.Options(**{**options.__dict__, "match_every": 1})).image
    assert not torch.equal(first, every_step)


def test_a_picture_too_small_for_the_patches_gets_a_clear_error():
    """Below 3x3 positions at a patch layer, a clear message instead of torch's unfold error."""
    from impasto.methods import optimization as opt

    content, style = (torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(i)) for i in (0, 1))
    with pytest.raises(InvalidOptionError, match="holds no 3x3 patch.*larger --size"):
        opt.run(content, style, opt.Options(encoder="tiny", size=32, scale_iterations=(2,), precision="fp32",
                                            style_loss="mrf"))


def test_the_folded_loss_keeps_to_the_features_device():
    """Every tensor the folded form makes is on the features' device (a GPU in feed-forward training): run on
    torch's meta device, where a CPU tensor in the mix fails."""
    bank = patch.patch_bank(_feat(1, c=4, h=9, w=10))[0].to("meta")
    f = _feat(2, c=4).to("meta").requires_grad_(True)
    loss = patch.mrf_loss(f, bank, matches=patch.Matches(3))
    assert loss.device.type == "meta" and loss.shape == ()
