"""Benchmark of every registered style loss in the optimisation method, as ratios to Gram in the same run.

For each loss: seconds per L-BFGS iteration at ``--size`` (default 512) with each loss's default style layers
(relu1_1..relu4_1; the patch loss at its own relu3_1 and relu4_1, with ``--exemplars`` style images pooled
into one bank and its matches refreshed every ``--match-every`` steps), the first two steps not counted, the
mean over the timed steps (a whole number of match refreshes: set ``--steps`` to a multiple of
``--match-every``), and the peak resident memory of a fresh process that runs only that loss. Targets
(issue: the style-loss zoo): statistics losses <= 1.5x Gram, MRF <= 3x Gram.

    IMPASTO_OFFLINE=1 PYTHONPATH=src python bench/losses.py [--size 512] [--steps 10] [--exemplars 4]
        [--match-every N] [--losses gram histogram ...] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("IMPASTO_DATA") or HERE.parents[1] / "shared" / "data")
CONTENT = DATA / "content" / "kodim23.jpg"
STYLES = [DATA / "style" / n for n in ("vangogh_starry_night.jpg", "hokusai_great_wave.jpg",
                                       "kandinsky_composition_vii.jpg", "munch_the_scream.jpg")]
WARMUP = 2
TARGETS = {"statistics": 1.5, "patch": 3.0}


def one(name: str, size: int, steps: int, exemplars: int, threads: int, match_every: int | None) -> dict[str, Any]:
    """Run one loss in this process and return its timing (called in a fresh subprocess per loss)."""
    import torch

    from impasto.events import Progress
    from impasto.io.image import load_image
    from impasto.losses.registry import get_style_loss
    from impasto.methods.optimization import Options, run

    torch.set_num_threads(threads)
    loss = get_style_loss(name)
    patch = loss.blend == "pool"
    styles = [load_image(p) for p in STYLES[: exemplars if patch else 1]]
    every = {} if match_every is None else {"match_every": match_every}  # None: the method's default
    options = Options(size=size, scale_iterations=(steps + WARMUP,), encoder="vgg16", style_loss=name, **every)
    stamps: list[float] = []
    result = run(load_image(CONTENT), styles, options,
                 callback=lambda e: stamps.append(time.perf_counter()) if isinstance(e, Progress) else None)
    step = [b - a for a, b in zip(stamps[WARMUP - 1:], stamps[WARMUP:])]
    return {"loss": name, "kind": "patch" if patch else "statistics",
            "styles": len(styles), "layers": list(options.all_style_layers()), "s_per_iter": statistics.mean(step),
            "match_every": options.match_every,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "final_style_loss": result.final_losses.get("style")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loss (after 2 warm-up steps)")
    parser.add_argument("--match-every", type=int, help="patch losses: refresh the matches every N steps "
                        "(default: the optimisation method's default)")
    parser.add_argument("--exemplars", type=int, default=4, help="style images pooled for the patch loss")
    parser.add_argument("--losses", nargs="+", help="default: every registered loss")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.size, args.steps, args.exemplars, args.threads, args.match_every)))
        return 0

    from impasto.losses.registry import style_loss_names

    names = args.losses or list(style_loss_names())
    if "gram" not in names:
        names.insert(0, "gram")
    print(f"{args.size} px, {args.steps} timed L-BFGS steps, {args.threads} threads, load {os.getloadavg()[0]:.2f}, "
          f"content {CONTENT.name}", flush=True)
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--size", str(args.size), "--steps", str(args.steps),
               "--exemplars", str(args.exemplars), "--threads", str(args.threads),
               *(["--match-every", str(args.match_every)] if args.match_every else [])]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")})
        if done.returncode != 0:
            print(f"{name:20} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        every = f"  matches every {r['match_every']}" if r["kind"] == "patch" else ""
        print(f"{name:20} {r['s_per_iter']:7.3f} s/iter  peak {r['peak_rss_mb']:7.0f} MB  styles {r['styles']}{every}  "
              f"layers {','.join(r['layers'])}  load {os.getloadavg()[0]:.2f}", flush=True)
    base = next((r["s_per_iter"] for r in rows if r["loss"] == "gram"), None)
    if base:
        print("\nratio to gram (target: statistics <= 1.5x, patch <= 3x)")
        for r in rows:
            r["ratio"] = r["s_per_iter"] / base
            verdict = "ok" if r["ratio"] <= TARGETS[r["kind"]] else "over target"
            print(f"{r['loss']:20} {r['ratio']:5.2f}x  {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
