"""AdaIN and multi-level WCT at 512 and 1024 px: impasto vs a plain reference written here, in one run.

    python bench/arbitrary.py [--sizes 512 1024] [--repeats 3] [--levels relu4_1,relu3_1,relu2_1,relu1_1] [--precision fp32]

Reference: the same shipped decoders and VGG-16 encoder, run the way the research code does it:
fp32, eager, the style re-encoded at every level (encoders built once, outside the timing), and
WCT by ``torch.linalg.svd`` of the float32 covariance (Li et al.'s code) with a fixed 1e-5
cut-off. impasto: ``impasto.methods.arbitrary.run`` / ``impasto.methods.wct.run`` as users call
them (style encoded once for all levels, float64 eigendecomposition with a relative floor, and
``--precision``, by default auto: encoder and decoders in bf16 channels-last where the CPU has
bf16). Printed: seconds (median of --repeats after a warm-up), ratio impasto/reference, and the
mean absolute difference of the two images (small: same maths, different numerics; bf16 moves
five-level WCT by about 0.02, since each level's whitening amplifies the rounding before it).
Content ``content/kodim23.jpg``, style ``style/vangogh_starry_night.jpg`` (style at 512 px).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from impasto.features.decoder import load_decoder, shipped_decoder
from impasto.features.precision import PRECISIONS, bf16_supported
from impasto.features.vgg import load_encoder
from impasto.io.image import load_image
from impasto.methods import arbitrary, wct
from impasto.ops.geometry import resize, size_for_long_side
from impasto.ops.stats import adain

DATA = Path(os.environ.get("IMPASTO_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
DEFAULT_LEVELS = wct.Options().levels
UNPOOL_LEVELS = wct.Options().unpool_levels


def reference_wct(fc: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
    """WCT as in Li et al.'s code: float32 SVD, eigenvalues below 1e-5 dropped."""
    c = fc.shape[0]
    mc = fc.mean(1, keepdim=True)
    fc0 = fc - mc
    cov_c = fc0 @ fc0.T / (fc.shape[1] - 1) + torch.eye(c)
    _, sc, vc = torch.linalg.svd(cov_c)
    kc = int((sc > 1e-5).sum())
    ms = fs.mean(1, keepdim=True)
    fs0 = fs - ms
    cov_s = fs0 @ fs0.T / (fs.shape[1] - 1)
    _, ss, vs = torch.linalg.svd(cov_s)
    ks = int((ss > 1e-5).sum())
    whitened = vc[:kc].T @ torch.diag(sc[:kc].pow(-0.5)) @ vc[:kc] @ fc0
    return vs[:ks].T @ torch.diag(ss[:ks].sqrt()) @ vs[:ks] @ whitened + ms


def reference(encoders: dict, decoders: list, content: torch.Tensor, style: torch.Tensor, kind: str) -> torch.Tensor:
    image = content
    with torch.inference_mode():
        for decoder in decoders:
            enc = encoders[decoder.level]  # one encoder per level, built once (not timed)
            if decoder.unpool:  # the shipped relu5_1 decoder unpools with the decoded image's indices
                feats, indices = enc.forward_with_indices(image)
            else:
                feats, indices = enc(image), None
            fc, fs = feats[decoder.level], enc(style)[decoder.level]
            if kind == "adain":
                out = adain(fc, fs)
            else:
                n, c, h, w = fc.shape
                out = reference_wct(fc[0].flatten(1), fs[0].flatten(1)).reshape(n, c, h, w)
            image = decoder(out, tuple(content.shape[-2:]), indices).clamp(0, 1)
    return image


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levels", default=",".join(DEFAULT_LEVELS),
                        help="WCT levels, deepest first (shipped decoders); default: wct.Options().levels")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="impasto's precision")
    args = parser.parse_args()
    levels = tuple(args.levels.split(","))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}, bf16 {'yes' if bf16_supported() else 'no'}, "
          f"impasto precision {args.precision}, load {os.getloadavg()[0]:.2f}")
    content_full = load_image(DATA / "content" / "kodim23.jpg")
    style = load_image(DATA / "style" / "vangogh_starry_night.jpg")
    style = resize(style, size_for_long_side(*style.shape[-2:], 512))
    adain_dec = [load_decoder(shipped_decoder(arbitrary.DEFAULT_LEVEL, False))[0]]
    wct_decs = [load_decoder(shipped_decoder(level, level in UNPOOL_LEVELS))[0] for level in levels]
    encoders = {level: load_encoder("vgg16", [level]) for level in {*levels, arbitrary.DEFAULT_LEVEL}}
    print(f"{'method':8} {'size':>9} {'reference s':>12} {'impasto s':>10} {'impasto/ref':>12} {'mean |diff|':>12}")
    for size in args.sizes:
        content = resize(content_full, size_for_long_side(*content_full.shape[-2:], size))
        label = f"{content.shape[-1]}x{content.shape[-2]}"
        cases = {
            "adain": (lambda: reference(encoders, adain_dec, content, style, "adain"),
                      lambda: arbitrary.run(content, style, arbitrary.Options(size=None, style_size=None,
                                                                     precision=args.precision)).image),
            "wct": (lambda: reference(encoders, wct_decs, content, style, "wct"),
                    lambda: wct.run(content, style, wct.Options(levels=levels, size=None, style_size=None,
                                                                precision=args.precision)).image),
        }
        for name, (ref_fn, imp_fn) in cases.items():
            ref_s, ref_img = timed(ref_fn, args.repeats)
            imp_s, imp_img = timed(imp_fn, args.repeats)
            diff = float((ref_img - imp_img).abs().mean())
            print(f"{name if name == 'adain' else f'wct x{len(levels)}':8} {label:>9} {ref_s:12.2f} {imp_s:10.2f} {imp_s / ref_s:12.2f} {diff:12.4f}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
