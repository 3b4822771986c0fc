"""Feed-forward networks: architecture, conditional IN, training/resume, tiling, ONNX, model files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from impasto.errors import CancelledError, CheckpointError, InvalidOptionError, WeightsError
from impasto.events import CancelToken, Progress
from impasto.io.image import save_image
from impasto.io.models import load_model, save_model
from impasto.methods import feedforward as ff
from impasto.training.feedforward import TrainOptions, train


def _smooth(h: int, w: int, seed: int, n: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, h // 8 + 2, w // 8 + 2, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffdata")
    photos = root / "photos"
    for i in range(4):
        save_image(_smooth(48, 56, i), photos / f"p{i}.png")
    styles = [save_image(torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(10 + i)), root / f"s{i}.png")
              for i in range(2)]
    return photos, styles


def _opts(data, **kw) -> TrainOptions:
    photos, styles = data
    base = dict(styles=(str(styles[0]),), content_dirs=(str(photos),), steps=12, batch_size=2, crop=32, width=8,
                style_size=40, encoder="tiny", precision="fp32", learning_rate=5e-3)
    base.update(kw)
    return TrainOptions(**base)


def _random_model(tmp_path, n_styles=1, width=8, seed=0, gentle=False):
    torch.manual_seed(seed)
    net = ff.TransformerNet(n_styles=n_styles, width=width)
    for norm in net.norms():  # non-trivial affine parameters
        nn.init.normal_(norm.weight, 1.0, 0.2)
        nn.init.normal_(norm.bias, 0.0, 0.2)
    if gentle:  # outputs near mid-grey, rarely clipped
        with torch.no_grad():
            net.out.conv.weight.mul_(0.05)
            net.out.conv.bias.fill_(0.5)
    meta = {"name": "random", "architecture": ff.architecture(net),
            "styles": [{"name": f"style{i}"} for i in range(n_styles)]}
    return save_model(tmp_path / f"random{n_styles}.safetensors", net.state_dict(), meta)


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (9, 130), (1, 5)])
def test_output_shape_for_odd_sizes(size):
    net = ff.TransformerNet(n_styles=2, width=4).eval()
    x = torch.rand(3, 3, *size) if min(size) > 1 else torch.rand(1, 3, 2, 5)
    out = net(x, torch.tensor([[1.0, 0.0]] * x.shape[0]))
    assert out.shape == x.shape


def test_conditional_in_with_one_style_equals_instance_norm():
    cin = ff.ConditionalInstanceNorm(6, n_styles=1)
    ref = nn.InstanceNorm2d(6, affine=True)
    with torch.no_grad():
        w, b = torch.randn(6), torch.randn(6)
        cin.weight.copy_(w.view(1, 6))
        cin.bias.copy_(b.view(1, 6))
        ref.weight.copy_(w)
        ref.bias.copy_(b)
    x = torch.randn(2, 6, 9, 11)
    torch.testing.assert_close(cin(x, torch.ones(2, 1)), ref(x), rtol=1e-5, atol=1e-5)
    one = x[:1].contiguous(memory_format=torch.channels_last)  # the single-image (batch-norm) path
    out = cin(one, torch.ones(1, 1))
    torch.testing.assert_close(out, ref(x[:1]), rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)  # no layout copy for the next conv


def test_conditional_in_mixes_style_parameters():
    cin = ff.ConditionalInstanceNorm(4, n_styles=2)
    with torch.no_grad():
        cin.weight.copy_(torch.tensor([[1.0] * 4, [3.0] * 4]))
    x = torch.randn(1, 4, 5, 5)
    a, b, half = (cin(x, torch.tensor([m])) for m in ([1.0, 0.0], [0.0, 1.0], [0.5, 0.5]))
    torch.testing.assert_close(half, (a + b) / 2)


def test_training_lowers_loss_and_resume_continues_identically(data, tmp_path):
    full = train(_opts(data), tmp_path / "full.safetensors")
    losses = full.history["total"]
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])
    assert (tmp_path / "full.loss.png").is_file()

    token = CancelToken()

    def stop(event):
        if isinstance(event, Progress) and event.step == 7:
            token.cancel()

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(CancelledError):
        train(_opts(data), tmp_path / "part.safetensors", checkpoint=ckpt, checkpoint_every=5, callback=stop, cancel=token)
    assert ckpt.with_suffix(".loss.png").is_file()
    seen = []
    resumed = train(_opts(data), tmp_path / "part.safetensors", checkpoint=ckpt, resume=True,
                    callback=lambda e: seen.append(e.step) if isinstance(e, Progress) else None)
    assert seen[0] == 8  # continues at the step after the checkpoint
    assert resumed.history["total"] == losses  # same losses step for step
    a, _ = load_model(tmp_path / "full.safetensors")
    b, _ = load_model(tmp_path / "part.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_run(data, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    train(_opts(data, steps=4), tmp_path / "m.safetensors", checkpoint=ckpt, checkpoint_every=2)
    with pytest.raises(CheckpointError, match="different training run"):
        train(_opts(data, steps=4, style_weight=1.0), tmp_path / "m.safetensors", checkpoint=ckpt, resume=True)


def test_training_device_is_checked_and_not_part_of_the_run(data, tmp_path, monkeypatch):
    """--device cuda without a GPU is refused before any work; a run checkpointed on one device resumes on
    another (here cpu -> auto, both the CPU) with the same losses."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidOptionError, match="--device cuda: .*use --device cpu"):
        train(_opts(data, steps=4, device="cuda"), tmp_path / "g.safetensors")
    assert not (tmp_path / "g.safetensors").exists()
    full = train(_opts(data, steps=4, device="cpu"), tmp_path / "full.safetensors").history["total"]
    ckpt = tmp_path / "d.ckpt"
    token = CancelToken()

    def stop(event):
        if isinstance(event, Progress) and event.step == 2:
            token.cancel()

    with pytest.raises(CancelledError):
        train(_opts(data, steps=4, device="cpu"), tmp_path / "p.safetensors", checkpoint=ckpt, callback=stop, cancel=token)
    resumed = train(_opts(data, steps=4, device="auto"), tmp_path / "p.safetensors", checkpoint=ckpt, resume=True)
    assert resumed.history["total"] == full


def test_same_seed_reproduces_training(data, tmp_path):
    a = train(_opts(data, steps=4), tmp_path / "a.safetensors").history["total"]
    b = train(_opts(data, steps=4), tmp_path / "b.safetensors").history["total"]
    c = train(_opts(data, steps=4, seed=1), tmp_path / "c.safetensors").history["total"]
    assert a == b and a != c


def test_multi_style_model_selects_and_interpolates(data, tmp_path):
    photos, styles = data
    path = train(_opts(data, styles=tuple(map(str, styles)), style_names=("red", "blue"), steps=6),
                 tmp_path / "multi.safetensors").model_path
    content = _smooth(40, 48, 99)
    outs = {}
    for key, kw in {"red": {"style": "red"}, "blue": {"style": "1"}, "mix": {"style_weights": (0.5, 0.5)}}.items():
        outs[key] = ff.run(content, None, ff.Options(model=str(path), **kw)).image
    assert not torch.allclose(outs["red"], outs["blue"])
    assert not torch.allclose(outs["mix"], outs["red"]) and not torch.allclose(outs["mix"], outs["blue"])
    with pytest.raises(InvalidOptionError, match="Did you mean 'red'"):
        ff.run(content, None, ff.Options(model=str(path), style="rde"))
    with pytest.raises(InvalidOptionError, match="needs 2 non-negative weights"):
        ff.run(content, None, ff.Options(model=str(path), style_weights=(1.0,)))


def test_strength_and_colour(tmp_path):
    from impasto.ops.color import rgb_to_yuv

    path = _random_model(tmp_path, gentle=True)
    content = _smooth(40, 48, 5)
    zero = ff.run(content, None, ff.Options(model=str(path), strength=0.0)).image
    torch.testing.assert_close(zero, content)
    lum = ff.run(content, None, ff.Options(model=str(path), color="luminance")).image
    inside = ((lum > 0.01) & (lum < 0.99)).all(dim=1, keepdim=True).expand(-1, 2, -1, -1)  # not clipped by clamping
    assert inside.float().mean() > 0.3
    diff = (rgb_to_yuv(lum)[:, 1:] - rgb_to_yuv(content)[:, 1:])[inside]
    assert float(diff.abs().max()) < 0.01


def test_tiled_matches_untiled_and_has_no_seams(tmp_path):
    net, meta = ff.load_network(str(_random_model(tmp_path, width=8)))
    image = _smooth(300, 330, 3)
    mix = ff.style_mix(meta, None, None)
    whole = ff.stylize_tensor(net, image, mix, tile_size=4096)
    tiled = ff.stylize_tensor(net, image, mix, tile_size=192, tile_overlap=64, stats_size=4096)
    assert tiled.shape == whole.shape
    inner = (slice(None), slice(None), slice(16, -16), slice(16, -16))
    spread = float((whole - whole.mean()).abs().mean())
    assert float((tiled - whole)[inner].abs().mean()) < 0.05 * spread
    # seams: horizontal gradient at every tile start column, relative to the untiled image's gradient there
    starts = ff._starts(330, 192, 64)[1:]
    assert starts and all(x % 4 == 0 for x in starts)
    for x in starts:
        for col in (x, x + 63):  # both ends of the blended band
            jump_tiled = (tiled[..., col] - tiled[..., col - 1]).abs().mean()
            jump_whole = (whole[..., col] - whole[..., col - 1]).abs().mean()
            assert float(jump_tiled) < 1.5 * float(jump_whole) + 1e-3, (x, col)


def test_tiled_statistics_from_downscaled_probe_stay_close(tmp_path):
    net, meta = ff.load_network(str(_random_model(tmp_path, width=8)))
    image = _smooth(256, 256, 4)
    mix = ff.style_mix(meta, None, None)
    whole = ff.stylize_tensor(net, image, mix, tile_size=4096)
    spread = float((whole - whole.mean()).abs().mean())
    errors = [float((ff.stylize_tensor(net, image, mix, tile_size=128, tile_overlap=48, stats_size=s) - whole).abs().mean())
              for s in (256, 128, 32)]
    # exact statistics: close; statistics from a smaller probe: further off the smaller the probe
    assert errors[0] < 0.1 * spread and errors[0] < errors[1] < errors[2]


def test_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    path = _random_model(tmp_path, n_styles=2)
    onnx_path = ff.export_onnx(str(path), str(tmp_path / "m.onnx"))
    content = _smooth(45, 61, 8)  # not a multiple of 4: padding happens outside the graph
    for kw in ({"style": "style1"}, {"style_weights": (0.3, 0.7)}):
        a = ff.run(content, None, ff.Options(model=str(path), precision="fp32", **kw)).image
        b = ff.run(content, None, ff.Options(model=onnx_path, **kw)).image
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_bf16_inference_stays_close_to_fp32(tmp_path):
    """bf16 (the default where the CPU has it) changes pixels by rounding only, not visibly."""
    from impasto.features.precision import bf16_supported

    if not bf16_supported():
        pytest.skip("this CPU has no bf16")
    path = _random_model(tmp_path, n_styles=1)
    content = _smooth(64, 80, 9)
    a = ff.run(content, None, ff.Options(model=str(path), precision="fp32")).image
    b = ff.run(content, None, ff.Options(model=str(path), precision="bf16")).image
    assert not torch.equal(a, b)  # bf16 really ran
    assert float((a - b).abs().mean()) < 2 / 255 and float((a - b).abs().max()) < 24 / 255


def test_bad_model_files_give_clear_errors(tmp_path):
    text = tmp_path / "x.safetensors"
    text.write_text("not a model")
    with pytest.raises(WeightsError, match="not a safetensors model file"):
        ff.load_network(str(text))
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(WeightsError, match="not an impasto model"):
        ff.load_network(str(plain))
    with pytest.raises(InvalidOptionError, match="does not exist"):
        ff.load_network(str(tmp_path / "missing.safetensors"))
    with pytest.raises(InvalidOptionError, match="no model named"):
        ff.load_network("no_such_style")
    wrong = save_model(tmp_path / "wrong.safetensors", {"w": torch.zeros(2)},
                       {"architecture": {"name": "johnson-in", "n_styles": 1, "width": 8, "n_residual": 5}})
    with pytest.raises(WeightsError, match="does not fit its declared architecture"):
        ff.load_network(str(wrong))
    bogus_onnx = tmp_path / "x.onnx"
    bogus_onnx.write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="not a loadable ONNX model"):
        ff.load_network(str(bogus_onnx))
