"""One labelled grid of every registered style loss on a few pairs: rows are pairs, columns are losses.

Each cell is the optimisation method with its defaults except ``--style-loss``; the losses are looked at,
not scored (what each keeps and loses is in the README of bench/ and in the issue notes). Every cell is
kept in ``<out>_cells/`` with its settings and reused by a later run with the same ones, so a grid that
takes hours (512 px: ~3 s a step) can be built over several sittings, stopped at any time.

    IMPASTO_OFFLINE=1 PYTHONPATH=src python bench/loss_grid.py [--size 512] [--iterations 300]
        [--losses gram histogram ...] [--out bench/out/loss_grid.png]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("IMPASTO_DATA") or HERE.parents[1] / "shared" / "data")
PAIRS = (("content/kodim23.jpg", "style/vangogh_starry_night.jpg"),
         ("content/skimage_astronaut.jpg", "style/hokusai_great_wave.jpg"),
         ("content/kodim13.jpg", "style/kandinsky_composition_vii.jpg"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--losses", nargs="+", help="default: every registered loss")
    parser.add_argument("--pairs", type=int, default=len(PAIRS), help="first N of the three pairs")
    parser.add_argument("--out", default=str(HERE / "out" / "loss_grid.png"))
    parser.add_argument("--encoder", default="auto", help="auto, vgg16, vgg19 (tiny: tests)")
    args = parser.parse_args(argv)

    from dataclasses import asdict

    import torch

    from impasto.io.image import load_image, save_image
    from impasto.io.plot import labelled_grid, to_pil
    from impasto.losses.registry import parse_style_losses, style_loss_names
    from impasto.methods.optimization import Options, run

    from impasto.api import without_added_defaults

    def _comparable(settings: Any) -> Any:  # an option added since a cell was made, at its old value, keeps the cell
        if not isinstance(settings, dict) or not isinstance(settings.get("options"), dict):
            return settings
        return {**settings, "options": without_added_defaults("optimization", settings["options"])}

    names = args.losses or list(style_loss_names())
    cells = Path(args.out).with_name(Path(args.out).stem + "_cells")
    cells.mkdir(parents=True, exist_ok=True)
    rows = []
    for content_name, style_name in PAIRS[: args.pairs]:
        content, style = load_image(DATA / content_name), load_image(DATA / style_name)
        row = [(to_pil(content), Path(content_name).stem, ""), (to_pil(style), Path(style_name).stem, "")]
        for name in names:
            cell = cells / f"{Path(content_name).stem}__{Path(style_name).stem}__{name}"
            # faces held unprotected and MRF matched every step (the optimisation's defaults before 2026-12-04):
            # the grid compares the style losses, and its cells of hours stay valid across those defaults' change
            options = Options(size=args.size, iterations=args.iterations, style_loss=name, encoder=args.encoder,
                              protect_faces=0.0, match_every=1)
            # every option, defaults included, and the loss's gain (one per loss of a+b): a cell made before a
            # default or a gain changed is made again (a change inside a loss's code is not seen: delete its cells)
            gains = [loss.gain for loss, _ in parse_style_losses(name)]
            settings = {"size": args.size, "iterations": args.iterations, "style_loss": name, "encoder": args.encoder,
                        "gain": gains[0] if len(gains) == 1 else gains,
                        "content": content_name, "style": style_name, "torch": torch.__version__,
                        "options": json.loads(json.dumps(asdict(options), default=str))}
            meta_path, png = cell.with_suffix(".json"), cell.with_suffix(".png")
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() and png.is_file() else None
            if meta is not None and _comparable(meta.get("settings")) == _comparable(settings):
                image, seconds = load_image(png), meta["seconds"]
                print(f"{Path(content_name).stem:20} {name:20} cached ({seconds:.1f} s)", flush=True)
            else:
                started = time.perf_counter()
                image = run(content, style, options).image
                seconds = time.perf_counter() - started
                save_image(image, png)  # the PNG first: a cell counts only once its settings are written
                meta_path.write_text(json.dumps({"settings": settings, "seconds": round(seconds, 2)}, indent=1))
                print(f"{Path(content_name).stem:20} {name:20} {seconds:6.1f} s  load {os.getloadavg()[0]:.2f}", flush=True)
            row.append((to_pil(image), name, f"{seconds:.0f} s"))
        rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(rows, height=min(args.size, 256)).save(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
