"""The main job: stylise example images offline and write the results plus a contact sheet.

Inputs come from a data folder shaped like ``../shared/data`` (``content/``, ``style/``) when
one is found; otherwise impasto generates a content scene and a brush-stroke style itself,
so the demo never needs the internet.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from impasto import api
from impasto.events import Callback
from impasto.io.image import load_image, save_image
from impasto.ops.geometry import contact_sheet

# (content, style) pairs chosen to show different looks; all are in shared/data (see SOURCES.md).
DEMO_PAIRS = (
    ("content/kodim23.jpg", "style/vangogh_starry_night.jpg"),
    ("content/kodim13.jpg", "style/hokusai_great_wave.jpg"),
    ("content/skimage_astronaut.jpg", "style/munch_the_scream.jpg"),
    ("content/kodim08.jpg", "style/kandinsky_composition_vii.jpg"),
    ("content/skimage_chelsea.jpg", "style/picabia_udnie.jpg"),
)


def find_data_dir(explicit: Path | None = None) -> Path | None:
    """The first of: ``explicit``, ``$IMPASTO_DATA``, ``../shared/data`` next to the cwd or the source tree."""
    candidates = [explicit, os.environ.get("IMPASTO_DATA"), Path.cwd().parent / "shared" / "data",
                  Path(__file__).resolve().parents[3] / "shared" / "data"]
    for cand in candidates:
        if cand and (Path(cand) / "content").is_dir() and (Path(cand) / "style").is_dir():
            return Path(cand)
    return None


def generated_content(size: int = 384, seed: int = 0) -> Tensor:
    """A simple synthetic landscape (sky gradient, sun, two hill ridges, a lake) in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size * 2 // 3, size
    y = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
    x = torch.linspace(0, 1, w).view(1, w).expand(h, w)
    img = torch.stack([0.35 + 0.4 * y, 0.55 + 0.3 * y, 0.95 - 0.2 * y])
    sun = ((x - 0.72) ** 2 + (y - 0.25) ** 2).sqrt() < 0.08
    img[:, sun] = torch.tensor([1.0, 0.85, 0.4]).view(3, 1)
    for level, amp, freq, colour in ((0.55, 0.08, 7.0, (0.25, 0.45, 0.25)), (0.68, 0.05, 11.0, (0.15, 0.32, 0.15))):
        ridge = level + amp * torch.sin(x[0] * freq + float(torch.rand(1, generator=gen)) * 6)
        img[:, y > ridge.view(1, w)] = torch.tensor(colour).view(3, 1)
    lake = y > 0.85
    img[:, lake] = torch.tensor([0.2, 0.4, 0.7]).view(3, 1) + 0.05 * torch.sin(x[lake] * 90).view(1, -1)
    return img.clamp(0, 1).unsqueeze(0)


def generated_style(size: int = 384, strokes: int = 900, seed: int = 1) -> Tensor:
    """A painterly texture: many short, thick, oriented strokes in a warm/cool palette."""
    gen = torch.Generator().manual_seed(seed)
    palette = torch.tensor([[0.93, 0.78, 0.25], [0.12, 0.22, 0.55], [0.85, 0.35, 0.15],
                            [0.15, 0.5, 0.6], [0.95, 0.95, 0.85], [0.1, 0.1, 0.15]])
    img = torch.full((3, size, size), 0.5)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    for _ in range(strokes):
        cy, cx = (torch.rand(2, generator=gen) * size).tolist()
        angle = math.sin(cx / size * 6) + math.cos(cy / size * 5)  # a swirling flow field
        length, width = 10 + 18 * float(torch.rand(1, generator=gen)), 2.5 + 3 * float(torch.rand(1, generator=gen))
        u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        mask = (u.abs() < length) & (v.abs() < width)
        colour = palette[int(torch.randint(len(palette), (1,), generator=gen))]
        shade = 0.85 + 0.3 * float(torch.rand(1, generator=gen))
        img[:, mask] = (colour * shade).clamp(0, 1).view(3, 1)
    return img.unsqueeze(0)


def run_demo(
    output: Path,
    *,
    data_dir: Path | None = None,
    size: int = 512,
    pairs: int = 3,
    iterations: int | None = None,
    callback: Callback | None = None,
    on_pair: Callable[[int, int, str, str], None] | None = None,
) -> list[Path]:
    """Stylise ``pairs`` examples into ``output``; returns the files written (results, inputs, sheet)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    data = find_data_dir(data_dir)
    jobs: list[tuple[str, object, str, object]] = []
    if data is not None:
        for content_rel, style_rel in DEMO_PAIRS[: max(1, pairs)]:
            jobs.append((Path(content_rel).stem, str(data / content_rel), Path(style_rel).stem, str(data / style_rel)))
    else:
        content_path = save_image(generated_content(), output / "generated_content.png")
        style_path = save_image(generated_style(), output / "generated_style.png")
        jobs.append(("generated_content", str(content_path), "generated_style", str(style_path)))
    options = {"size": size}
    if iterations is not None:
        options["iterations"] = iterations
    written: list[Path] = []
    rows: list[list[Tensor]] = []
    for i, (c_name, c_src, s_name, s_src) in enumerate(jobs):
        if on_pair:
            on_pair(i, len(jobs), c_name, s_name)
        result = api.stylize(c_src, s_src, options=options, callback=callback)
        written.append(result.save(output / f"{c_name}__{s_name}.png"))
        rows.append([load_image(c_src), load_image(s_src), result.image])
    written.append(save_image(contact_sheet(rows), output / "contact_sheet.png"))
    return written
