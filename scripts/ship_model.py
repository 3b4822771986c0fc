"""Make a trained model shippable: fp16 weights plus credits, into src/impasto/models/.

    python scripts/ship_model.py trained.safetensors NAME --source "..." --licence "..." [--note "..."]

The training recipe already sits in the model's metadata (written by 'impasto train ...'). For a
feed-forward style network this adds the style image's source and licence lines (from
../shared/data/SOURCES.md); for a decoder (no style) they describe its training images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from impasto.io.models import load_model, save_model, shipped_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("name")
    parser.add_argument("--source", required=True, help="where the style image comes from")
    parser.add_argument("--licence", required=True, help="the style image's licence / public-domain reason")
    parser.add_argument("--note", default="", help="anything a user should know (held-out images, quality)")
    args = parser.parse_args()
    state, meta = load_model(args.model)
    if meta.get("styles"):
        for style in meta["styles"]:
            style.update(source=args.source, licence=args.licence)
    else:
        meta["training_data"] = {"source": args.source, "licence": args.licence}
    meta.update(name=args.name, note=args.note)
    out = save_model(shipped_dir() / f"{args.name}.safetensors", state, meta, fp16=True)
    print(f"shipped {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
