"""Tests for impasto.features.vgg: layer plan, shapes, truncation, normalisation, pooling, and the
real VGG-16 checked against onnxruntime running the source ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from impasto.errors import InvalidOptionError, WeightsUnavailableError
from impasto.features.vgg import VGGEncoder, layer_names, load_encoder, tiny_state
from impasto.io import weights

from conftest import data_dir

CHELSEA = data_dir() / "content" / "skimage_chelsea.jpg"
TINY_WIDTHS = {1: 4, 2: 8, 3: 16, 4: 32, 5: 32}  # tiny encoder: width 4 * (1, 2, 4, 8, 8)


def _image(h: int, w: int, seed: int = 0, n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------- layer names and shapes

def test_layer_names_vgg16_order() -> None:
    names = layer_names("vgg16")
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names[-1] == "pool5" and "relu5_3" in names and "relu5_4" not in names
    assert len(names) == 13 * 2 + 5
    assert len(layer_names("vgg19")) == 16 * 2 + 5


def test_outputs_exactly_requested_layers_odd_size() -> None:
    layers = ["relu1_1", "relu2_1", "pool2", "relu3_1", "conv4_2", "relu5_3", "pool5"]
    enc = load_encoder("tiny", layers)
    out = enc(_image(37, 50))
    assert list(out) == layers  # nothing extra (requested in forward order, returned in forward order)
    expected = {
        "relu1_1": (4, 37, 50),
        "relu2_1": (8, 18, 25),
        "pool2": (8, 9, 12),
        "relu3_1": (16, 9, 12),  # H/4, W/4 (floored per pooling)
        "conv4_2": (32, 4, 6),
        "relu5_3": (32, 2, 3),
        "pool5": (32, 1, 1),
    }
    for name, (c, h, w) in expected.items():
        assert tuple(out[name].shape) == (1, c, h, w), name
        assert out[name].dtype == torch.float32
    assert (out["relu3_1"] >= 0).all() and (out["conv4_2"] < 0).any()  # relu vs pre-activation


def test_duplicate_layers_are_returned_once() -> None:
    enc = load_encoder("tiny", ["relu2_1", "relu1_1", "relu2_1"])
    assert enc.layers == ("relu2_1", "relu1_1")
    assert sorted(enc(_image(16, 16))) == ["relu1_1", "relu2_1"]


def test_batch_items_are_independent() -> None:
    enc = load_encoder("tiny", ["relu3_1"])
    batch = _image(20, 24, n=2)
    both = enc(batch)["relu3_1"]
    one = enc(batch[1:])["relu3_1"]
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-6)


def test_truncated_after_deepest_layer() -> None:
    enc = load_encoder("tiny", ["relu2_1"])
    assert "conv3_1" not in enc.convs
    assert set(enc.convs) == {"conv1_1", "conv1_2", "conv2_1"}
    deep = load_encoder("tiny", ["relu1_1", "relu4_1"])
    assert "conv4_1" in deep.convs and "conv4_2" not in deep.convs


def test_gradient_flows_to_input_but_weights_frozen() -> None:
    enc = load_encoder("tiny", ["relu3_1"])
    assert all(not p.requires_grad for p in enc.parameters())
    assert not enc.training
    image = _image(24, 24).requires_grad_()
    enc(image)["relu3_1"].square().mean().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())


# ----------------------------------------------------------------- bad input

def test_unknown_layer_suggests_nearest() -> None:
    with pytest.raises(InvalidOptionError, match=r"Did you mean 'relu3_1'\?") as info:
        load_encoder("tiny", ["rleu3_1"])
    assert "unknown layer 'rleu3_1'" in str(info.value)
    with pytest.raises(InvalidOptionError, match="relu5_4"):  # vgg19-only layer on a vgg16 encoder
        load_encoder("tiny", ["relu5_4"])


def test_bad_options_raise() -> None:
    with pytest.raises(InvalidOptionError, match="at least one layer"):
        load_encoder("tiny", [])
    with pytest.raises(InvalidOptionError, match="pooling must be one of max, avg"):
        load_encoder("tiny", ["relu1_1"], pooling="mean")
    with pytest.raises(InvalidOptionError, match="Did you mean 'vgg16'"):
        load_encoder("vgg-16", ["relu1_1"])
    with pytest.raises(InvalidOptionError, match="normalization"):
        VGGEncoder("vgg16", tiny_state(), ["relu1_1"], normalization="imagenet")
    with pytest.raises(InvalidOptionError, match="architecture"):
        VGGEncoder("vgg11", tiny_state(), ["relu1_1"])


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 1, 16, 16), (1, 4, 16, 16)])
def test_bad_input_shape(shape: tuple[int, ...]) -> None:
    enc = load_encoder("tiny", ["relu1_1"])
    with pytest.raises(InvalidOptionError, match=r"\(N, 3, H, W\)"):
        enc(torch.rand(shape))


def test_auto_offline_without_weights_says_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPASTO_HOME", str(tmp_path))
    monkeypatch.setenv("IMPASTO_OFFLINE", "1")
    monkeypatch.setattr(weights, "offline_source_path", lambda name: None)
    with pytest.raises(WeightsUnavailableError, match="impasto weights"):
        load_encoder("auto", ["relu1_1"])


# ----------------------------------------------------------------- determinism, pooling, normalisation

def test_tiny_encoder_is_deterministic() -> None:
    image = _image(32, 40)
    a = load_encoder("tiny", ["relu2_1", "relu4_1"])(image)
    b = load_encoder("tiny", ["relu2_1", "relu4_1"])(image)
    for name in a:
        assert torch.equal(a[name], b[name])
    other = VGGEncoder("vgg16", tiny_state(seed=1), ["relu2_1"], normalization="torch")(image)
    assert not torch.allclose(other["relu2_1"], a["relu2_1"])  # the seed matters


def test_max_and_avg_pooling_differ() -> None:
    image = _image(32, 32)
    mx = load_encoder("tiny", ["pool1", "relu2_1"], pooling="max")(image)
    av = load_encoder("tiny", ["pool1", "relu2_1"], pooling="avg")(image)
    assert mx["pool1"].shape == av["pool1"].shape
    assert (mx["pool1"] >= av["pool1"] - 1e-6).all()  # max >= mean of the same window
    assert not torch.allclose(mx["relu2_1"], av["relu2_1"])
    # avg pooling is exactly the 2x2 window mean of relu1_2
    relu = load_encoder("tiny", ["relu1_2"])(image)["relu1_2"]
    torch.testing.assert_close(av["pool1"], relu.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)))


def test_caffe_normalization_is_bgr_0_255_mean_subtracted() -> None:
    enc = VGGEncoder("vgg16", tiny_state(), ["relu1_1"], normalization="caffe")
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    x = enc.normalize(red)
    want = torch.tensor([0 - 103.939, 0 - 116.779, 255 - 123.68]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(x, want)  # channel 0 is blue, channel 2 holds the red


def test_torch_normalization_is_rgb_mean_std() -> None:
    enc = VGGEncoder("vgg16", tiny_state(), ["relu1_1"], normalization="torch")
    image = _image(3, 5)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(enc.normalize(image), (image - mean) / std)


def test_with_layers_same_weights_new_layers() -> None:
    enc = load_encoder("tiny", ["relu5_3"])
    other = enc.with_layers(["relu1_1", "relu3_1"])
    assert other is not enc
    assert enc.layers == ("relu5_3",) and other.layers == ("relu1_1", "relu3_1")
    assert other.weights_name == enc.weights_name and other.weights_sha256 == enc.weights_sha256
    assert other.normalization == enc.normalization and other.pooling == enc.pooling
    for name in other.convs:
        assert torch.equal(other.convs[name].weight, enc.convs[name].weight)
        assert torch.equal(other.convs[name].bias, enc.convs[name].bias)
    image = _image(24, 24)
    fresh = load_encoder("tiny", ["relu1_1", "relu3_1"])(image)
    got = other(image)
    assert list(got) == ["relu1_1", "relu3_1"]
    for name in got:
        assert torch.equal(got[name], fresh[name])


def test_with_layers_reaches_deeper_than_the_truncated_encoder() -> None:
    shallow = load_encoder("tiny", ["relu2_1"])
    assert "conv3_1" not in shallow.convs
    deeper = shallow.with_layers(["relu1_1", "relu4_1"])
    assert set(deeper(_image(32, 32))) == {"relu1_1", "relu4_1"}
    full = load_encoder("tiny", ["relu4_1"])
    torch.testing.assert_close(deeper(_image(32, 32))["relu4_1"], full(_image(32, 32))["relu4_1"])


def test_forward_leaves_no_hooks_or_state() -> None:
    enc = load_encoder("tiny", ["relu2_1"])
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc(_image(16, 16))
    after = enc.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not enc._forward_hooks and not enc._forward_pre_hooks


# ----------------------------------------------------------------- real VGG-16 vs onnxruntime

def _load_chelsea(size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(CHELSEA) as img:
        img = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3) RGB in [0, 1]


def test_vgg16_matches_onnxruntime(vgg16_cache: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if not CHELSEA.is_file():
        pytest.skip(f"test photo {CHELSEA} missing")
    pairs = {
        "relu1_2": "functional_1/block1_conv2_1/Relu:0",
        "relu3_3": "functional_1/block3_conv3_1/Relu:0",
        "relu5_3": "functional_1/block5_conv3_1/Relu:0",
    }
    model = onnx.load(str(weights.offline_source_path("vgg16")))
    del model.graph.output[:]
    for tensor in pairs.values():
        model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    rgb = _load_chelsea(240)
    caffe = rgb[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68], dtype=np.float32)
    ref = session.run(list(pairs.values()), {"input": caffe[None].astype(np.float32)})

    enc = load_encoder("vgg16", list(pairs))
    assert enc.normalization == "caffe" and enc.weights_name == "vgg16"
    with torch.no_grad():
        ours = enc(torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous())
    for (name, _), want in zip(pairs.items(), ref, strict=True):
        got = ours[name].numpy()
        assert got.shape == want.shape, name  # ONNX tensors are NCHW after the first Transpose
        rel = np.linalg.norm(got - want) / np.linalg.norm(want)
        print(f"{name}: relative error vs onnxruntime {rel:.2e}")
        assert rel < 1e-4, f"{name}: relative error {rel:.2e}"
    assert ours["relu5_3"].shape == (1, 512, 15, 15)


def test_vgg16_small_image_shapes_and_sanity(vgg16_cache: Path) -> None:
    enc = load_encoder("vgg16", ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"])
    image = torch.from_numpy(_load_chelsea(64)).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        out = enc(image)
    for b, (c, s) in enumerate([(64, 64), (128, 32), (256, 16), (512, 8), (512, 4)], start=1):
        feat = out[f"relu{b}_1"]
        assert tuple(feat.shape) == (1, c, s, s)
        assert torch.isfinite(feat).all() and feat.abs().sum() > 0
    # real features react to content: a flipped image gives different deep features
    with torch.no_grad():
        flipped = enc(image.flip(-1))["relu5_1"]
    assert not torch.allclose(flipped, out["relu5_1"])


def test_auto_picks_cached_vgg16(vgg16_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPASTO_OFFLINE", "1")
    enc = load_encoder("auto", ["relu1_1"])
    assert enc.weights_name == "vgg16" and enc.normalization == "caffe"
    assert len(enc.weights_sha256) == 64


def test_with_layers_shares_the_convs_and_keeps_bf16():
    """Another layer set over the same weights reuses this encoder's conv modules, so an encoder
    moved to bf16 stays bf16 at every level (the one-pass cascade asks for one level at a time)."""
    from impasto.features.precision import to_bf16

    enc = load_encoder("tiny", ["relu3_1"])
    shallow = enc.with_layers(["relu2_1"])
    assert shallow.convs["conv1_1"] is enc.convs["conv1_1"]
    fast = to_bf16(load_encoder("tiny", ["relu2_1"])).with_layers(["relu4_1"])  # deeper: new convs converted too
    assert {p.dtype for p in fast.parameters()} == {torch.bfloat16}
    assert fast.convs["conv4_1"].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 32, 32)
    ref = enc.with_layers(["relu4_1"])(x)["relu4_1"]
    out = fast(x.to(torch.bfloat16))["relu4_1"].float()
    assert float((out - ref).abs().mean()) < 0.02 * float(ref.abs().mean())


def test_precision_choices_and_errors(monkeypatch):
    from impasto.features import precision

    assert precision.use_bf16("fp32") is False
    monkeypatch.setattr(precision, "bf16_supported", lambda: False)
    assert precision.use_bf16("auto") is False
    with pytest.raises(InvalidOptionError, match="needs a CPU with bf16 support; use --precision fp32"):
        precision.use_bf16("bf16")
    monkeypatch.setattr(precision, "bf16_supported", lambda: True)
    assert precision.use_bf16("auto") is True and precision.use_bf16("bf16") is True
    with pytest.raises(InvalidOptionError, match="Did you mean 'bf16'"):
        precision.use_bf16("bf61")


def test_device_choices_and_errors(monkeypatch):
    from impasto.features import precision

    assert precision.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(InvalidOptionError, match=rf"--device {name}: this torch .* use --device cpu"):
            precision.resolve_device(name)
    with pytest.raises(InvalidOptionError, match="Did you mean 'cuda'"):
        precision.resolve_device("cudda")
    with pytest.raises(InvalidOptionError, match="cpu, cuda or cuda:N, got 'cuda:x'"):
        precision.resolve_device("cuda:x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert precision.resolve_device("auto") == torch.device("cuda")
    assert precision.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InvalidOptionError, match=r"only 2 GPU\(s\) visible"):
        precision.resolve_device("cuda:2")
    # bf16 on a GPU asks the GPU, not the CPU
    monkeypatch.setattr(precision, "bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # Hopper
    assert precision.use_bf16("auto", torch.device("cuda")) is True
    assert precision.use_bf16("auto", torch.device("cpu")) is False
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # Volta: emulated bf16 only
    with pytest.raises(InvalidOptionError, match="needs a GPU with bf16 support"):
        precision.use_bf16("bf16", torch.device("cuda"))
