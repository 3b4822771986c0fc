"""Video benchmark: speed of the feed-forward + blend pipeline, warping error of every method with and
without its temporal mode, and the optimisation method's warm start, as ratios in one run.

1. Feed-forward ``composition_vii`` + ``blend`` at 640x360 (the butterfly clip as an h264 mp4 with audio):
   frames per second end to end (decode, flow, network, blend, encode), with the time split, for the bare
   pipeline and for ``stylize-video`` (which also writes each frame as a resumable PNG), against
   ``--temporal none`` in the same process. Target: >= 12 fps on this 2-core CPU.
2. Warping error (Lai et al. 2018; ``impasto eval-video``) of each method with its temporal mode against
   ``--temporal none`` on the same clip. Target: <= 0.5x for every method, style still there. A contact
   strip (frames t, t+1, t+2; none above, temporal below) per method is written to ``--out``.
3. Optimisation with ``loss`` at ``--opt-size``: seconds per frame after the first against per-frame
   stylisation with the same settings, and both warping errors. Target: <= 0.5x at equal or better error.

    IMPASTO_OFFLINE=1 PYTHONPATH=src python bench/video.py [--frames 16] [--methods feedforward adain ...]
        [--opt-frames 3] [--opt-size 640] [--skip-opt] [--out bench/out/video] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("IMPASTO_DATA") or HERE.parents[1] / "shared" / "data")
CLIP = DATA / "video" / "butterfly"
STYLE = DATA / "style" / "vangogh_starry_night.jpg"
PHOTO_STYLE = DATA / "photo"
METHODS = ("feedforward", "adain", "wct", "photowct", "optimization")


def _frames(n: int) -> list[Any]:
    from impasto.io.image import load_image

    return [load_image(p) for p in sorted(CLIP.glob("*.png"))[:n]]


def pipeline_speed(clip: Path, work: Path) -> dict[str, Any]:
    """The blend pipeline by hand, stage by stage, then stylize-video end to end (blend and none)."""
    import torch

    from impasto import api
    from impasto.features.flow import estimate_flow
    from impasto.io.video import VideoWriter, decode_video, probe_video
    from impasto.methods import feedforward
    from impasto.methods.video import Options as TemporalOptions
    from impasto.methods.video import _photometric, resolve_flow
    from impasto.ops.flow import consistency_weights, warp

    prepared = feedforward.prepare(None, feedforward.Options(model="composition_vii"))
    opts = TemporalOptions()
    flow_method = resolve_flow(opts, "blend")
    split = {"decode": 0.0, "flow": 0.0, "network": 0.0, "blend": 0.0, "encode": 0.0}
    info = probe_video(clip)
    prepared(torch.rand(1, 3, info.height, info.width))  # warm-up
    frames = 0
    started = time.perf_counter()
    with VideoWriter(work / "pipeline.mp4", info.fps, audio_from=clip) as writer:
        t = time.perf_counter()
        previous = None
        for _, frame in decode_video(clip):
            split["decode"] += time.perf_counter() - t
            t = time.perf_counter()
            styled = prepared(frame).image
            split["network"] += time.perf_counter() - t
            if previous is not None:
                t = time.perf_counter()
                backward, forward = estimate_flow(frame, previous[0], flow_method), estimate_flow(previous[0], frame, flow_method)
                split["flow"] += time.perf_counter() - t
                t = time.perf_counter()
                c = consistency_weights(forward, backward)
                weight = opts.blend_strength * c * _photometric(frame, warp(previous[0], backward), opts.blend_tolerance)
                warped = warp(previous[1], backward)
                styled = (styled + weight * (warped - styled)).clamp(0, 1)
                split["blend"] += time.perf_counter() - t
            previous = (frame, styled)
            t = time.perf_counter()
            writer.write(styled)
            split["encode"] += time.perf_counter() - t
            frames += 1
            t = time.perf_counter()
        t = time.perf_counter()
        writer.close()
        split["encode"] += time.perf_counter() - t
    total = time.perf_counter() - started
    ends = {}
    for mode in ("none", "blend"):
        out = work / f"e2e_{mode}.mp4"
        t = time.perf_counter()
        api.stylize_video(clip, out, method="feedforward", options={"model": "composition_vii"}, temporal={"temporal": mode})
        ends[mode] = frames / (time.perf_counter() - t)
    return {"frames": frames, "size": f"{info.width}x{info.height}", "flow": flow_method,
            "pipeline_fps": frames / total, "split_ms_per_frame": {k: 1000 * v / frames for k, v in split.items()},
            "stylize_video_fps": ends}


def _method_args(method: str, opt_size: int) -> tuple[list[Path], dict[str, Any]]:
    if method == "feedforward":
        return [], {"model": "composition_vii"}
    if method == "photowct":
        return [sorted(PHOTO_STYLE.glob("*"))[0]], {"smooth": "fast"}
    if method == "optimization":
        return [STYLE], {"size": opt_size}
    return [STYLE], {}


def warping(method: str, clip_dir: Path, work: Path, opt_size: int, on_time: dict[str, list[float]]) -> dict[str, Any]:
    from impasto import api
    from impasto.io.image import load_image
    from impasto.io.plot import labelled_grid, to_pil

    styles, options = _method_args(method, opt_size)
    runs = {}
    for mode in ("none", "auto"):
        out = work / f"{method}_{mode}"
        stamps: list[float] = []
        summary = api.stylize_video(clip_dir, out, styles or None, method=method, options=options,
                                    temporal={"temporal": mode}, overwrite=True,
                                    on_frame=lambda i, n: stamps.append(time.perf_counter()))
        stamps.append(time.perf_counter())
        on_time[f"{method}_{mode}"] = [b - a for a, b in zip(stamps, stamps[1:])]
        runs[mode] = out
        del summary
    report = api.evaluate_video(clip_dir, [runs["none"], runs["auto"]])
    none, temporal = (report[str(runs[m])]["mean_short"] for m in ("none", "auto"))
    picks = [min(i, len(list(runs["none"].glob("frame_*.png"))) - 1) for i in (2, 3, 4)]
    rows = [[(to_pil(load_image(runs[m] / f"frame_{i + 1:05d}.png")), f"{method} {m if m == 'none' else 'temporal'}",
              f"t+{k}") for k, i in enumerate(picks)] for m in ("none", "auto")]
    labelled_grid(rows, height=240).save(work / f"strip_{method}.png")
    return {"method": method, "none": none, "temporal": temporal, "ratio": temporal / none if none else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--methods", nargs="*", default=[m for m in METHODS if m != "optimization"])
    parser.add_argument("--opt-frames", type=int, default=3)
    parser.add_argument("--opt-size", type=int, default=640)
    parser.add_argument("--skip-opt", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "video")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from impasto.io.image import save_image
    from impasto.io.video import write_test_clip

    args.out.mkdir(parents=True, exist_ok=True)
    frames = _frames(args.frames)
    results: dict[str, Any] = {"machine": {"threads": torch.get_num_threads(), "cpu": os.uname().machine}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = write_test_clip(work / "butterfly.mp4", frames, fps=30)
        if not args.skip_speed:
            speed = pipeline_speed(clip, work)
            results["feedforward_blend_speed"] = speed
            split = ", ".join(f"{k} {v:.0f} ms" for k, v in speed["split_ms_per_frame"].items())
            print(f"feedforward composition_vii + blend at {speed['size']}, {speed['frames']} frames, flow {speed['flow']}:")
            print(f"  pipeline {speed['pipeline_fps']:.2f} fps (target >= 12); per frame: {split}")
            e2e = speed["stylize_video_fps"]
            print(f"  stylize-video end to end (resumable PNG frames): blend {e2e['blend']:.2f} fps, none {e2e['none']:.2f} "
                  f"fps ({e2e['blend'] / e2e['none']:.2f}x of none)")
            sys.stdout.flush()

        clip_dir = work / "clip"
        for i, frame in enumerate(frames):
            save_image(frame, clip_dir / f"{i:04d}.png")
        times: dict[str, list[float]] = {}
        rows = []
        for method in args.methods:
            row = warping(method, clip_dir, args.out, args.opt_size, times)
            rows.append(row)
            print(f"warping error {method:<12} none {row['none']:.5f}  temporal {row['temporal']:.5f}  "
                  f"ratio {row['ratio']:.2f}x (target <= 0.5)")
            sys.stdout.flush()
        results["warping"] = rows

        if not args.skip_opt:
            opt_dir = work / "opt_clip"
            for i, frame in enumerate(frames[: args.opt_frames]):
                save_image(frame, opt_dir / f"{i:04d}.png")
            row = warping("optimization", opt_dir, args.out, args.opt_size, times)
            per_frame = times["optimization_none"]
            warm = times["optimization_auto"]
            later = sum(warm[1:]) / max(1, len(warm) - 1)
            base = sum(per_frame[1:]) / max(1, len(per_frame) - 1)
            row.update({"s_per_frame_none": base, "s_per_later_frame_loss": later, "s_first_frame_loss": warm[0],
                        "time_ratio": later / base})
            results["optimization"] = row
            print(f"optimization at {args.opt_size} px, {args.opt_frames} frames: later frames {later:.1f} s with loss vs "
                  f"{base:.1f} s per-frame ({later / base:.2f}x, target <= 0.5); warping error {row['temporal']:.5f} vs "
                  f"{row['none']:.5f} ({row['ratio']:.2f}x)")
    print(f"contact strips in {args.out}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
