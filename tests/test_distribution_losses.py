"""Histogram, sliced Wasserstein and centred-Gram style losses (losses/distribution.py) against brute-force
references, their invariances, and float64 gradient checks."""

from __future__ import annotations

import pytest
import torch

from impasto.errors import InvalidOptionError
from impasto.losses import distribution as dist
from impasto.losses.style import gram_loss
from impasto.ops.stats import gram_matrix, quantile_values


def _feat(seed: int, c: int = 4, h: int = 5, w: int = 6, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_quantile_values_interpolate_the_sorted_values():
    x = torch.tensor([[4.0, 0.0, 10.0, 2.0, 6.0, 8.0]])
    assert torch.equal(quantile_values(x, 6), torch.tensor([[0.0, 2.0, 4.0, 6.0, 8.0, 10.0]]))
    assert torch.allclose(quantile_values(x, 3), torch.tensor([[0.0, 5.0, 10.0]]))
    assert torch.allclose(quantile_values(x, 11), torch.arange(11.0).unsqueeze(0))
    with pytest.raises(InvalidOptionError):
        quantile_values(x, 0)


def test_histogram_loss_equals_remapping_each_channel_to_the_styles_histogram():
    """Risser et al.'s form: remap every value to the style value of the same rank, then squared error."""
    f, s = _feat(0), _feat(1, h=7, w=3)  # different position counts: the style's quantiles are resampled
    (target,) = dist.histogram_stats(s, k=s[0, 0].numel())
    flat = f.reshape(4, -1)
    m = flat.shape[1]
    remapped = torch.empty_like(flat)
    for ch in range(4):
        order = flat[ch].argsort()
        style_sorted = s.reshape(4, -1)[ch].sort().values
        pos = torch.linspace(0, style_sorted.numel() - 1, m, dtype=torch.float64)
        lo, frac = pos.floor().long(), (pos - pos.floor()).float()
        hi = (lo + 1).clamp(max=style_sorted.numel() - 1)
        remapped[ch, order] = style_sorted[lo] * (1 - frac) + style_sorted[hi] * frac
    expected = (flat - remapped).pow(2).mean()
    assert dist.histogram_loss(f, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_histogram_and_gram_ignore_where_values_are_but_not_what_they_are():
    f, s = _feat(0), _feat(1)
    (target,) = dist.histogram_stats(s)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(3))
    shuffled = f.reshape(1, 4, 30)[..., perm].reshape(1, 4, 5, 6)
    assert dist.histogram_loss(shuffled, target).item() == pytest.approx(dist.histogram_loss(f, target).item(), rel=1e-6)
    assert gram_loss(shuffled, gram_matrix(s)).item() == pytest.approx(gram_loss(f, gram_matrix(s)).item(), rel=1e-5)
    assert dist.histogram_loss(f + 1.0, target).item() > dist.histogram_loss(f, target).item() + 0.5


def test_sliced_wasserstein_sees_joint_structure_that_channel_histograms_miss():
    """Two channels equal (a, a) vs independent (a, shuffled a): same marginals, different joint law."""
    a = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(6))
    joint = torch.cat([a, a], dim=1)
    indep = torch.cat([a, a.reshape(1, 1, -1)[..., perm].reshape(1, 1, 16, 16)], dim=1)
    (h_target,) = dist.histogram_stats(joint, k=256)
    assert dist.histogram_loss(indep, h_target).item() == pytest.approx(0.0, abs=1e-10)
    (s_target,) = dist.sliced_stats(joint, k=256)
    assert dist.sliced_wasserstein_loss(joint, s_target).item() == pytest.approx(0.0, abs=1e-10)
    assert dist.sliced_wasserstein_loss(indep, s_target).item() > 0.05


def test_projections_are_fixed_unit_directions():
    p = dist.projections(8)
    assert p.shape == (8, 8) and torch.allclose(p.norm(dim=1), torch.ones(8, dtype=torch.float64))
    assert torch.equal(p, dist.projections(8)) and not torch.equal(p, dist.projections(8, seed=1))


def test_centered_gram_ignores_the_means_gram_does_not():
    f, s = _feat(0), _feat(1)
    (target,) = dist.centered_gram_stats(s)
    shift = torch.tensor([3.0, -1.0, 0.5, 2.0]).view(1, 4, 1, 1)
    assert dist.centered_gram_loss(f + shift, target).item() == pytest.approx(dist.centered_gram_loss(f, target).item(), rel=1e-4)
    assert gram_loss(f + shift, gram_matrix(s)).item() > 2 * gram_loss(f, gram_matrix(s)).item()
    assert dist.centered_gram_loss(s, target).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("stats, loss, module", [
    (dist.histogram_stats, dist.histogram_loss, dist.HistogramLoss),
    (dist.sliced_stats, dist.sliced_wasserstein_loss, dist.SlicedWassersteinLoss),
    (dist.centered_gram_stats, dist.centered_gram_loss, dist.CenteredGramLoss),
])
def test_gradcheck_and_module_equals_function(stats, loss, module):
    s = _feat(1, dtype=torch.float64)
    (target,) = stats(s)
    f = _feat(2, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (f,))
    m = module(target)
    assert torch.equal(m(f), loss(f, target))
    assert list(dict(m.named_buffers())) == ["target"]


@pytest.mark.parametrize("stats, loss, module", [
    (dist.shifted_gram_stats, dist.shifted_gram_loss, dist.ShiftedGramLoss),
    (dist.pyramid_gram_stats, dist.pyramid_gram_loss, dist.PyramidGramLoss),
    (dist.mmd_stats, dist.mmd_gaussian_loss, dist.MMDGaussianLoss),
])
def test_multi_part_targets_gradcheck_zero_on_the_style_and_module(stats, loss, module):
    s = _feat(1, h=9, w=10, dtype=torch.float64)
    target = stats(s)
    assert loss(s, target).item() == pytest.approx(0.0, abs=1e-10)
    f = _feat(2, h=9, w=10, dtype=torch.float64).requires_grad_(True)
    assert loss(f, target).item() > 1e-4
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (f,))
    assert torch.equal(module(target)(f), loss(f, target))


def _stripes(period: int, phase_seed: int) -> torch.Tensor:
    """A 2-channel map: channel 0 a square wave along x with the given period, channel 1 its complement."""
    x = torch.arange(32)
    wave = ((x // (period // 2)) % 2).float().expand(32, 32)
    noise = torch.rand(32, 32, generator=torch.Generator().manual_seed(phase_seed)) * 0.01
    return torch.stack([wave + noise, 1 - wave + noise]).unsqueeze(0)


def test_shifted_gram_tells_stripe_periods_apart_that_gram_cannot():
    """Stripes of period 8 and 16 have the same Gram (same values, same proportions) but not the same
    correlation with a copy shifted by 4."""
    a, b = _stripes(8, 0), _stripes(16, 1)
    same_gram = gram_loss(a, gram_matrix(b)).item()
    assert same_gram < 1e-3
    assert dist.shifted_gram_loss(a, dist.shifted_gram_stats(b)).item() > max(0.02, 20 * same_gram)


@pytest.mark.parametrize("hw", [(5, 6), (9, 13), (3, 2), (1, 7), (9, 1)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last, "transposed"])
def test_shifted_gram_loss_is_the_loss_of_the_shifted_slices(hw, layout):
    """The hand-written form (row blocks less the pairs that wrap, its own backward) against autograd through the
    two shifted slices, float64, a batch of two against one target, small maps where the shift falls back to 1 or 0,
    and a map in neither layout (a transposed view: its gradient must not be written into a copy)."""
    gen = torch.Generator().manual_seed(10)
    if layout == "transposed":
        f = torch.randn(2, 3, hw[1], hw[0], generator=gen, dtype=torch.float64).transpose(2, 3).requires_grad_(True)
        layout = torch.contiguous_format  # the gradient comes back contiguous
    else:
        f = torch.randn(2, 3, *hw, generator=gen, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
    target = dist.shifted_gram_stats(torch.randn(1, 3, *hw, generator=gen, dtype=torch.float64))
    loss = dist.shifted_gram_loss(f, target)
    (grad,) = torch.autograd.grad(loss, f)
    ref = sum((m - t).pow(2).mean() for m, t in zip(dist._shifted_grams(f), target)) / 2
    (ref_grad,) = torch.autograd.grad(ref, f)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)
    assert grad.is_contiguous(memory_format=layout)


def test_pyramid_gram_sees_coarse_structure():
    """Fine and coarse checkerboards: same Gram, different Gram once pooled."""
    fine = ((torch.arange(16).view(-1, 1) + torch.arange(16)) % 2).float()
    coarse = ((torch.arange(16).view(-1, 1) // 4 + torch.arange(16) // 4) % 2).float()
    a, b = (torch.stack([t, 1 - t]).unsqueeze(0) for t in (fine, coarse))
    assert gram_loss(a, gram_matrix(b)).item() < 1e-6
    assert dist.pyramid_gram_loss(a, dist.pyramid_gram_stats(b)).item() > 0.01


def test_mmd_samples_the_same_positions_every_call():
    s, f = _feat(1, h=40, w=40), _feat(2, h=40, w=40)  # 1600 positions > 1024 sampled
    target = dist.mmd_stats(s)
    assert target[0].shape == (1, 4, dist.MMD_SAMPLES)
    assert dist.mmd_gaussian_loss(f, target).item() == dist.mmd_gaussian_loss(f, target).item()
    assert dist.mmd_gaussian_loss(s, target).item() == pytest.approx(0.0, abs=1e-6)


def _pairing_reference(values: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each value minus the target at its stable rank, by torch's sort (float64)."""
    v = values.double()
    order = torch.argsort(v, dim=-1, stable=True)
    d = v.gather(-1, order) - targets.double().repeat(values.shape[0] // targets.shape[0], 1)
    return torch.empty_like(d).scatter_(-1, order, d), d.pow(2).sum(-1)


@pytest.mark.parametrize("threads,pipeline", [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_paired_differences_pair_each_value_with_the_target_at_its_stable_rank(dtype, threads, pipeline, monkeypatch):
    from impasto.ops import stats
    from impasto.ops.stats import paired_differences

    if pipeline:  # 16-bit rows this short are ranked on the calling thread and paired on the pool, as long ones are
        monkeypatch.setattr(stats, "PIPELINE_MIN", 100)

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 301, generator=gen).to(dtype)
    x[:, ::7] = 0.5  # ties
    x[0, :2] = torch.tensor([float("inf"), -float("inf")])
    x[4, 10:20] = -3.25  # negative ties
    x[5, :] = x[5, 0]  # a row of one value
    targets = torch.randn(3, 301, generator=gen, dtype=torch.float64).sort(dim=-1).values  # row r pairs with r % 3
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        diff, sq = paired_differences(x, targets)
    finally:
        torch.set_num_threads(before)
    ref, ref_sq = _pairing_reference(x, targets.to(torch.promote_types(dtype, torch.float32)))
    finite = torch.isfinite(ref)
    assert diff.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and diff.shape == x.shape
    assert torch.equal(torch.isfinite(diff), finite)
    assert torch.allclose(diff.double()[finite], ref[finite], rtol=1e-6, atol=1e-6)
    assert torch.allclose(sq[1:], ref_sq[1:], rtol=1e-5)
    with pytest.raises(InvalidOptionError, match="do not pair up"):
        paired_differences(x, targets[:, :300])
    with pytest.raises(InvalidOptionError, match="do not pair up"):
        paired_differences(x, torch.cat([targets, targets[:1]]))  # 4 target rows for 6 rows
    with pytest.raises(InvalidOptionError, match="do not pair up"):
        paired_differences(x, targets[:0])


def test_paired_differences_rank_a_signed_zero_below_an_unsigned_one():
    """bf16 ranks by bit patterns: -0 before +0 (they are equal, so only which of them takes which target changes)."""
    from impasto.ops.stats import paired_differences

    x = torch.tensor([[0.0, -0.0, -1.0, 2.0]], dtype=torch.bfloat16)
    diff, sq = paired_differences(x, torch.tensor([[10.0, 20.0, 30.0, 40.0]]))
    assert diff.tolist() == [[-30.0, -20.0, -11.0, -38.0]]
    assert sq.item() == pytest.approx(30**2 + 20**2 + 11**2 + 38**2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sorted_distance_matches_differentiating_through_the_sort(dtype):
    """The paired form (no autograd through the sort) has the value and gradient of the textbook one."""
    gen = torch.Generator().manual_seed(4)
    v = torch.randn(2, 3, 500, generator=gen, dtype=dtype, requires_grad=True)
    target = torch.randn(1, 3, 64, generator=gen, dtype=dtype).sort(dim=-1).values
    loss = dist.sorted_distance(v, target)
    (grad,) = torch.autograd.grad(loss, v)
    ref = (v.sort(dim=-1).values - quantile_values(target, 500)).pow(2).mean()
    (ref_grad,) = torch.autograd.grad(ref, v)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert loss.item() == pytest.approx(ref.item(), rel=tol)
    assert torch.allclose(grad, ref_grad, rtol=tol, atol=tol * 1e-3)
    small = torch.randn(1, 3, 20, generator=gen, dtype=dtype)  # fewer values than target quantiles
    ref_small = (small.sort(dim=-1).values - quantile_values(target, 20)).pow(2).mean()
    assert dist.sorted_distance(small, target).item() == pytest.approx(ref_small.item(), rel=tol)


def test_paired_differences_work_in_a_forked_child_after_the_parent_used_its_threads():
    import multiprocessing

    from impasto.ops.stats import paired_differences

    x = torch.randn(4, 1000, generator=torch.Generator().manual_seed(5))
    t = torch.linspace(-3, 3, 1000).unsqueeze(0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        paired_differences(x, t)  # the parent's pool exists now (float32 rows are split over it)
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            diff, _ = pool.apply_async(paired_differences, (x, t)).get(timeout=60)
    finally:
        torch.set_num_threads(before)
    assert torch.allclose(diff.double(), _pairing_reference(x, t)[0])


def test_paired_differences_from_several_threads_at_once():
    """Callers on several threads (a server running jobs side by side) share the pool safely."""
    from concurrent.futures import ThreadPoolExecutor

    from impasto.ops.stats import paired_differences

    xs = [torch.randn(rows, 2000, generator=torch.Generator().manual_seed(rows)) for rows in (2, 3, 4, 5, 6, 7)]
    t = torch.linspace(-3, 3, 2000).unsqueeze(0)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with ThreadPoolExecutor(6) as callers:
            diffs = list(callers.map(lambda x: paired_differences(x, t)[0], xs * 4))
    finally:
        torch.set_num_threads(before)
    for x, diff in zip(xs * 4, diffs):
        assert torch.allclose(diff.double(), _pairing_reference(x, t)[0])


def test_the_target_is_resampled_like_quantile_values_for_every_count():
    gen = torch.Generator().manual_seed(6)
    target = torch.randn(2, 3, 50, generator=gen, dtype=torch.float64).sort(dim=-1).values
    for m in (1, 2, 7, 50, 333):
        assert torch.allclose(dist._resampled(target, m), quantile_values(target, m), atol=1e-12)
    single = torch.tensor([[[2.5]]], dtype=torch.float64)
    assert torch.equal(dist._resampled(single, 4), torch.full((1, 1, 4), 2.5, dtype=torch.float64))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("name", ["gram_centered", "gram_shifted", "gram_pyramid", "histogram", "sliced_wasserstein", "w2"])
def test_the_statistics_losses_take_bf16_features_as_gram_does(name, layout):
    """Under mixed precision their products run in bf16 (as Gram's) and the sorted ones rank bf16 values by 16-bit
    keys: the loss stays within 2 % of the float32 one, the gradient points the same way, in the features' layout."""
    from impasto.losses.registry import get_style_loss

    loss = get_style_loss(name)
    g = torch.Generator().manual_seed(0)
    style, f32 = torch.rand(1, 16, 24, 20, generator=g), torch.rand(1, 16, 24, 20, generator=g)
    target = loss.statistics(style)
    f16 = f32.to(torch.bfloat16).float()  # the same values, exact in bf16
    a = f16.clone().requires_grad_(True)
    b = f16.clone().to(torch.bfloat16).contiguous(memory_format=layout).requires_grad_(True)
    la, lb = loss.distance(a, target), loss.distance(b, target)
    (ga,), (gb,) = torch.autograd.grad(la, a), torch.autograd.grad(lb, b)
    assert lb.dtype == torch.float32 and lb.item() == pytest.approx(la.item(), rel=0.02)
    assert torch.nn.functional.cosine_similarity(ga.flatten(), gb.float().flatten(), dim=0) > 0.99
    assert gb.dtype == torch.bfloat16 and gb.is_contiguous(memory_format=layout)


def test_sorted_distance_of_bf16_values_is_the_float32_one_of_the_same_values():
    """The 16-bit ranking gives the float32 path's value and gradient (rounded to bf16) on bf16-exact values, also
    for a batch of two against one target and values in a channels-last layout."""
    gen = torch.Generator().manual_seed(8)
    v = (torch.randn(2, 5, 30, 40, generator=gen).relu() * 3).to(torch.bfloat16)  # many ties at zero
    target = torch.randn(1, 5, 64, generator=gen).sort(dim=-1).values
    a = v.float().requires_grad_(True)
    b = v.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    la, lb = dist.sorted_distance(a, target), dist.sorted_distance(b, target)
    (ga,), (gb,) = torch.autograd.grad(la, a), torch.autograd.grad(lb, b)
    assert lb.item() == pytest.approx(la.item(), rel=1e-6)
    assert torch.allclose(gb.float(), ga, rtol=1e-2, atol=1e-8) and gb.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(InvalidOptionError, match="do not match"):
        dist.sorted_distance(v, target[:, :4])


def test_the_resampled_target_is_kept_only_while_it_is_the_same():
    gen = torch.Generator().manual_seed(9)
    target = torch.randn(1, 2, 50, generator=gen).sort(dim=-1).values
    v = torch.randn(1, 2, 300, generator=gen)
    first = dist.sorted_distance(v, target).item()
    assert dist.sorted_distance(v, target).item() == first  # from the kept resampling
    assert dist.sorted_distance(v[..., :200], target).item() == pytest.approx(  # another size: resampled again
        (v[..., :200].sort(dim=-1).values - quantile_values(target, 200)).pow(2).mean().item(), rel=1e-5)
    target.add_(1.0)  # changed in place: resampled again
    assert dist.sorted_distance(v, target).item() == pytest.approx(
        (v.sort(dim=-1).values - quantile_values(target, 300)).pow(2).mean().item(), rel=1e-5)
