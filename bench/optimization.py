"""Benchmark of optimisation-based style transfer (impasto.methods.optimization) on CPU.

Figures are ratios against a named baseline run in the same process (see DESIGN.md):

1. Seconds per L-BFGS iteration at each size, for
   - "reference": a plain fp32 eager PyTorch loop written below (same VGG-16 weights, same layers,
     Gram by ``torch.bmm`` with autograd, MSE losses, ``torch.optim.LBFGS(max_iter=1)``), and
   - "impasto": ``impasto.methods.optimization.run`` single scale, timed from its Progress events.
   The first two steps of each run are warm-up and are not counted.
2. End-to-end seconds for a 512 px result with the default multi-scale schedule, from image
   tensors in memory to the result tensor, encoder loading included.

Run from the repository root::

    PYTHONPATH=src python bench/optimization.py [--sizes 256 512] [--steps 10] [--skip-e2e]
        [--threads N] [--json PATH] [--out-dir bench/out]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from impasto.events import Event, Progress, Stage
from impasto.features.precision import use_bf16
from impasto.features.vgg import VGGEncoder, load_encoder
from impasto.io.image import load_image, save_image
from impasto.losses.objective import layer_weights
from impasto.methods.optimization import DEFAULT_STYLE_LAYERS, Options, run, style_layer_prior
from impasto.ops.geometry import contact_sheet, resize, size_for_long_side

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("IMPASTO_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CONTENT = DATA / "content" / "kodim23.jpg"
STYLE = DATA / "style" / "vangogh_starry_night.jpg"
SQUARE_CONTENT = DATA / "content" / "skimage_astronaut.jpg"  # 512x512: the most pixels a 512 px result can have
SQUARE_STYLE = DATA / "style" / "munch_the_scream.jpg"

ENCODER = "vgg16"
CONTENT_LAYERS = Options().content_layers  # impasto's defaults, so the figures are those of a default run
STYLE_LAYERS = DEFAULT_STYLE_LAYERS
WARMUP_STEPS = 2  # steps not counted in the per-iteration figures
RATIO_TARGET = 0.5  # impasto s/iter over reference s/iter
SANITY_TOLERANCE = 0.02  # each loss term after N steps, impasto in fp32 vs the reference
E2E_TARGET_S = 60.0  # seconds for a default 512 px result on 2 CPU cores


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    bf16 = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return {
        "cpu": cpu_model(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_bf16": bf16,
    }


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------- inputs


def inputs_at(content: Tensor, style: Tensor, long_side: int) -> tuple[Tensor, Tensor]:
    """Content and style resized so their long sides equal ``long_side`` (as impasto does at style_scale=1)."""
    c = resize(content, size_for_long_side(content.shape[-2], content.shape[-1], long_side))
    s = resize(style, size_for_long_side(style.shape[-2], style.shape[-1], long_side))
    return c.contiguous(), s.contiguous()


def loss_weights() -> tuple[float, float, float]:
    """(content, style, tv) weights, taken from impasto's own defaults so both loops weigh alike."""
    o = Options()
    return o.content_weight, o.resolved_style_weight(), o.tv_weight


# --------------------------------------------------------------------------- reference loop


def gram(f: Tensor) -> Tensor:
    """``F F^T / (H W)`` by torch.bmm; autograd does the backward."""
    n, c, h, w = f.shape
    flat = f.reshape(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (h * w)


def tv(image: Tensor) -> Tensor:
    return (image[..., :, 1:] - image[..., :, :-1]).pow(2).mean() + (image[..., 1:, :] - image[..., :-1, :]).pow(2).mean()


class ReferenceObjective:
    """The Gatys objective in plain fp32 eager PyTorch.

    Per-layer division by the target's mean square (a constant computed once) and impasto's default
    per-layer style weights (by VGG block, summing to 1) are applied as impasto does, so both loops
    minimise the same function and their losses can be compared.
    """

    def __init__(self, encoder: VGGEncoder, content: Tensor, style: Tensor) -> None:
        self.encoder = encoder
        self.cw, self.sw, self.tvw = loss_weights()
        with torch.no_grad():
            cf = encoder(content)
            sf = encoder(style)
        self.content_targets = {k: cf[k] for k in CONTENT_LAYERS}
        self.style_targets = {k: gram(sf[k]) for k in STYLE_LAYERS}
        self.content_norm = {k: float(t.pow(2).mean()) + 1e-8 for k, t in self.content_targets.items()}
        self.style_norm = {k: float(t.pow(2).mean()) + 1e-8 for k, t in self.style_targets.items()}
        self.style_weights = layer_weights(STYLE_LAYERS, None, style_layer_prior)

    def __call__(self, image: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        feats = self.encoder(image)
        c = sum(F.mse_loss(feats[k], t) / self.content_norm[k] for k, t in self.content_targets.items()) / len(CONTENT_LAYERS)
        s = sum(self.style_weights[k] * F.mse_loss(gram(feats[k]), t) / self.style_norm[k] for k, t in self.style_targets.items())
        t = tv(image)
        total = self.cw * c + self.sw * s + self.tvw * t
        return total, {"content": c, "style": s, "tv": t}


def run_reference(encoder: VGGEncoder, content: Tensor, style: Tensor,
                  steps: int) -> tuple[list[float], list[dict[str, float]]]:
    """``steps`` L-BFGS iterations; returns per-step seconds and the losses of every step."""
    objective = ReferenceObjective(encoder, content, style)
    x = content.clone().requires_grad_(True)
    # Same optimiser settings as impasto's L-BFGS path (one closure evaluation per step, its default memory).
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=Options().lbfgs_history, tolerance_grad=0.0,
                            tolerance_change=0.0)
    last: dict[str, Tensor] = {}

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        total, parts = objective(x)
        total.backward()
        last.update({k: v.detach() for k, v in parts.items()}, total=total.detach())
        return total

    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step(closure)
        losses.append({k: float(v) for k, v in last.items()})
        times.append(time.perf_counter() - t0)
    return times, losses


# --------------------------------------------------------------------------- impasto


class StepClock:
    """Callback that timestamps Progress events (and notes Stage sizes)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stamps: list[float] = []
        self.scales: list[dict[str, Any]] = []
        self.losses: list[dict[str, float]] = []

    def __call__(self, event: Event) -> None:
        now = time.perf_counter()
        if isinstance(event, Stage) and event.name == "scale":
            self.scales.append({"size": list(event.size or ()), "started_s": now - self.start, "steps": 0})
        elif isinstance(event, Progress):
            self.stamps.append(now)
            self.losses.append(dict(event.losses))
            if self.scales:
                self.scales[-1]["steps"] += 1

    def step_times(self) -> list[float]:
        """Seconds of steps 2..N (step 1 has no preceding event to measure from)."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


def run_impasto(content: Tensor, style: Tensor, long_side: int, steps: int,
                precision: str = "auto") -> tuple[list[float], list[dict[str, float]], str]:
    """Single-scale run; returns per-step seconds for steps 2..N, the losses of every step and the weights name."""
    options = Options(size=long_side, scale_iterations=(steps,), encoder=ENCODER,
                      content_layers=CONTENT_LAYERS, style_layers=STYLE_LAYERS, precision=precision)
    clock = StepClock()
    result = run(content, style, options, callback=clock)
    return clock.step_times(), clock.losses, result.weights


# --------------------------------------------------------------------------- figures


def summarise(step_seconds: list[float]) -> dict[str, float]:
    return {"median": statistics.median(step_seconds), "mean": statistics.fmean(step_seconds),
            "min": min(step_seconds), "max": max(step_seconds), "n": len(step_seconds)}


def per_iteration(content: Tensor, style: Tensor, sizes: list[int], steps: int) -> list[dict[str, Any]]:
    encoder = load_encoder(ENCODER, list(dict.fromkeys([*CONTENT_LAYERS, *STYLE_LAYERS])), pooling="max")
    rows = []
    for size in sizes:
        c, s = inputs_at(content, style, size)
        print(f"  {size} px ({c.shape[-1]}x{c.shape[-2]}): reference ...", end="", flush=True)
        ref_times, ref_losses = run_reference(encoder, c, s, steps)
        print(" impasto ...", end="", flush=True)
        imp_times, imp_losses, weights = run_impasto(c, s, size, steps)
        if use_bf16(Options().precision):  # the timed run was bf16: an fp32 one for the sanity check
            print(" impasto fp32 (untimed, for the sanity check) ...", end="", flush=True)
            _, fp32_losses, _ = run_impasto(c, s, size, steps, precision="fp32")
        else:  # the timed run was fp32 already
            fp32_losses = imp_losses
        print(f" done (load avg {load_average()})", flush=True)
        # Reference: times of steps 1..N -> drop the first WARMUP_STEPS.
        # Impasto: intervals are steps 2..N -> drop WARMUP_STEPS - 1 more.
        ref = summarise(ref_times[WARMUP_STEPS:])
        imp = summarise(imp_times[WARMUP_STEPS - 1:])
        rows.append({
            "size": size, "hw": list(c.shape[-2:]), "steps": steps, "weights": weights,
            "reference": {**ref, "step_seconds": ref_times, "first_losses": ref_losses[0], "final_losses": ref_losses[-1]},
            "impasto": {**imp, "step_seconds": imp_times, "first_losses": imp_losses[0], "final_losses": imp_losses[-1]},
            "impasto_fp32": {"first_losses": fp32_losses[0], "final_losses": fp32_losses[-1]},
            "ratio": imp["median"] / ref["median"],
        })
        rows[-1]["sanity_gap"] = sanity_gap(rows[-1])
    return rows


def sanity_gap(row: dict[str, Any]) -> float:
    """Largest relative difference, over the content, style and TV terms and the total, between impasto in fp32
    and the reference after N steps: both loops take the same L-BFGS path in fp32 when they minimise the same
    function, so a gap above SANITY_TOLERANCE means the objectives differ and the timings are not comparable."""
    ref, imp = row["reference"]["final_losses"], row["impasto_fp32"]["final_losses"]
    return max(abs(imp[k] - ref[k]) / max(abs(ref[k]), 1e-12) for k in ("content", "style", "tv", "total"))


def print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print(f"Seconds per L-BFGS iteration (median of steps {WARMUP_STEPS + 1}..N; mean in brackets)")
    print(f"{'size':>6} {'H x W':>10} {'reference s/it':>20} {'impasto s/it':>20} {'impasto/ref':>12}")
    for r in rows:
        ref, imp = r["reference"], r["impasto"]
        hw = f"{r['hw'][0]}x{r['hw'][1]}"
        verdict = "ok" if r["ratio"] <= RATIO_TARGET else "above target"
        print(f"{r['size']:>6} {hw:>10} {ref['median']:>10.3f} ({ref['mean']:6.3f}) {imp['median']:>10.3f} ({imp['mean']:6.3f})"
              f" {r['ratio']:>8.2f}  [{verdict}, target <= {RATIO_TARGET}]")
    print()
    print("Sanity: losses of both loops (content {}, Gram style, TV, per-layer normalised, weights from Options()).".format(
        CONTENT_LAYERS[0]))
    print("In fp32 impasto follows the reference's L-BFGS path step for step when the two minimise the same function:")
    print(f"every term after N steps must agree within {SANITY_TOLERANCE:.0%}. The timed run (precision auto) is shown too;")
    print("in bf16 the path (no line search) differs from the third step on, so its final losses can be far apart.")
    print(f"{'size':>6} {'run':>13} {'step':>6} {'content':>11} {'style':>11} {'tv':>11} {'total':>11}")
    for r in rows:
        for when in ("first", "final"):
            for name in ("reference", "impasto", "impasto_fp32"):
                fl = r[name][f"{when}_losses"]
                print(f"{r['size']:>6} {name:>13} {1 if when == 'first' else r['steps']:>6} "
                      + " ".join(f"{fl.get(k, float('nan')):>11.4g}" for k in ("content", "style", "tv", "total")))
        verdict = "ok" if r["sanity_gap"] <= SANITY_TOLERANCE else "OBJECTIVES DIFFER"
        print(f"{'':>6} fp32 vs reference after {r['steps']} steps, largest term gap {r['sanity_gap']:.2%}"
              f"  [{verdict}, <= {SANITY_TOLERANCE:.0%}]")


# --------------------------------------------------------------------------- end to end


def end_to_end(content: Tensor, style: Tensor, out_dir: Path, name: str = "optimization_512") -> dict[str, Any]:
    options = Options(size=512)
    clock = StepClock()
    t0 = time.perf_counter()
    result = run(content, style, options, callback=clock)  # loads the encoder itself
    seconds = time.perf_counter() - t0
    image = result.image
    ends = [s["started_s"] for s in clock.scales[1:]] + [clock.stamps[-1] - clock.start if clock.stamps else seconds]
    for scale, end in zip(clock.scales, ends):
        scale["seconds"] = end - scale["started_s"]
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = {"method": "optimization", "options": asdict(options), "weights": result.weights,
              "weights_sha256": result.weights_sha256, "steps": result.steps}
    result_path = save_image(image, out_dir / f"{name}.png", recipe=recipe)
    sheet_path = save_image(contact_sheet([[content, style, image]]), out_dir / f"{name}_sheet.png")
    return {"seconds": seconds, "run_seconds": result.seconds, "steps": result.steps, "weights": result.weights,
            "hw": list(image.shape[-2:]), "scales": clock.scales, "final_losses": result.final_losses,
            "result": str(result_path), "sheet": str(sheet_path),
            "options": {k: v for k, v in asdict(options).items() if k in ("size", "iterations", "min_size", "encoder", "precision", "optimizer")}}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="long sides in pixels (default: 256 512)")
    p.add_argument("--steps", type=int, default=10, help=f"L-BFGS steps per size and run (default: 10; > {WARMUP_STEPS})")
    p.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end 512 px run")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    p.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out", help="where the e2e images go (default: bench/out)")
    args = p.parse_args(argv)
    if args.steps <= WARMUP_STEPS:
        p.error(f"--steps must be more than the {WARMUP_STEPS} warm-up steps")
    if min(args.sizes) < 16:
        p.error("--sizes must be at least 16 pixels")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    print(f"machine: {machine['cpu']} | usable CPUs {machine['cpus_usable']} | torch threads {machine['torch_threads']}"
          f" | torch {machine['torch']} | python {machine['python']} | CPU bf16 {'yes' if machine['cpu_bf16'] else 'no'}")
    print(f"load average at start: {load_average()} (values above the thread count mean other work shares the CPUs)")
    print(f"content: {CONTENT.name}  style: {STYLE.name}  encoder: {ENCODER}  impasto precision: {Options().precision}"
          f" (-> {'bf16' if machine['cpu_bf16'] else 'fp32'} on this CPU)")
    content, style = load_image(CONTENT), load_image(STYLE)

    report: dict[str, Any] = {"machine": machine, "load_average_start": load_average(),
                              "content": str(CONTENT), "style": str(STYLE), "steps": args.steps,
                              "warmup_steps": WARMUP_STEPS}
    print(f"\n1. per-iteration timing, {args.steps} steps per run")
    rows = per_iteration(content, style, args.sizes, args.steps)
    report["per_iteration"] = rows
    print_table(rows)

    e2e_cases = [("optimization_512", content, style),
                 ("optimization_512_square", load_image(SQUARE_CONTENT), load_image(SQUARE_STYLE))]
    for name, e2e_content, e2e_style in ([] if args.skip_e2e else e2e_cases):
        print(f"\n2. end to end, Options(size=512) defaults, {name} (load avg {load_average()}) ...", flush=True)
        e2e = end_to_end(e2e_content, e2e_style, args.out_dir, name)
        report.setdefault("end_to_end", {})[name] = e2e
        verdict = "ok" if e2e["seconds"] <= E2E_TARGET_S else "above target"
        print(f"end to end: {e2e['seconds']:.1f} s for {e2e['hw'][1]}x{e2e['hw'][0]} px, {e2e['steps']} steps,"
              f" weights {e2e['weights']}  [{verdict}, target <= {E2E_TARGET_S:.0f} s on 2 cores;"
              f" here {machine['torch_threads']} threads]")
        if e2e["scales"]:
            print(f"  setup before the first scale (encoder load, input hashing): {e2e['scales'][0]['started_s']:.1f} s")
        for s in e2e["scales"]:
            print(f"  scale {s['size'][1]}x{s['size'][0]}: {s['steps']} steps, {s['seconds']:.1f} s"
                  f" ({s['seconds'] / max(1, s['steps']):.3f} s/step incl. setup)")
        print(f"  result: {e2e['result']}\n  sheet:  {e2e['sheet']}")

    report["load_average_end"] = load_average()
    print(f"\nload average at end: {report['load_average_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"figures written to {args.json}")
    differ = [r["size"] for r in rows if r["sanity_gap"] > SANITY_TOLERANCE]
    if differ:
        print(f"the sanity check failed at {', '.join(map(str, differ))} px: the reference no longer minimises impasto's"
              " objective, so the ratios above compare different work", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
