"""bench/loss_grid.py keeps every cell with its settings, so a grid of hours is built over several runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _grid_module():
    spec = importlib.util.spec_from_file_location("loss_grid_bench", REPO / "bench" / "loss_grid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cached_once(grid, loss, tmp_path, capsys) -> list[str]:
    """Grid arguments for one tiny cell of ``loss``, run twice: made, then reused."""
    args = ["--size", "32", "--iterations", "2", "--losses", loss, "--pairs", "1", "--encoder", "tiny",
            "--out", str(tmp_path / "grid.png")]
    assert grid.main(args) == 0 and grid.main(args) == 0
    assert capsys.readouterr().out.count("cached") == 1
    return args


def test_cells_are_kept_and_reused_until_a_setting_changes(tmp_path, capsys):
    grid = _grid_module()
    out = tmp_path / "grid.png"
    args = ["--size", "32", "--iterations", "2", "--losses", "gram", "mean_std", "--pairs", "1", "--encoder", "tiny", "--out", str(out)]
    assert grid.main(args) == 0
    first = capsys.readouterr().out
    assert "cached" not in first and out.is_file()
    cells = sorted(p.name for p in (tmp_path / "grid_cells").iterdir())
    assert cells == ["kodim23__vangogh_starry_night__gram.json", "kodim23__vangogh_starry_night__gram.png",
                     "kodim23__vangogh_starry_night__mean_std.json", "kodim23__vangogh_starry_night__mean_std.png"]
    gram_png = tmp_path / "grid_cells" / "kodim23__vangogh_starry_night__gram.png"
    stamp = gram_png.stat().st_mtime_ns
    assert grid.main(args) == 0
    assert capsys.readouterr().out.count("cached") == 2 and gram_png.stat().st_mtime_ns == stamp
    (tmp_path / "grid_cells" / "kodim23__vangogh_starry_night__mean_std.json").unlink()  # a cell cut off before its settings
    assert grid.main(args) == 0
    again = capsys.readouterr().out
    assert again.count("cached") == 1 and "gram" in again.split("cached")[0].splitlines()[-1]
    changed = [*args[:3], "3", *args[4:]]  # --iterations 3: every cell again
    assert grid.main(changed) == 0
    assert "cached" not in capsys.readouterr().out
    meta = json.loads((tmp_path / "grid_cells" / "kodim23__vangogh_starry_night__gram.json").read_text())
    assert meta["settings"]["iterations"] == 3
    with Image.open(out) as im:
        assert im.width > im.height  # one row: content, style and two loss cells side by side


def test_a_changed_default_makes_the_cells_again(tmp_path, capsys, monkeypatch):
    """Cells made before a default changed (as style_weight 200 -> 50 did) are not reused."""
    import functools

    import impasto.methods.optimization as optimization

    grid = _grid_module()
    args = _cached_once(grid, "gram", tmp_path, capsys)
    monkeypatch.setattr(optimization, "Options", functools.partial(optimization.Options, style_weight=123.0))
    assert grid.main(args) == 0
    assert "cached" not in capsys.readouterr().out
    meta = json.loads((tmp_path / "grid_cells" / "kodim23__vangogh_starry_night__gram.json").read_text())
    assert meta["settings"]["options"]["style_weight"] == 123.0


def test_a_changed_gain_makes_the_cell_again(tmp_path, capsys, monkeypatch):
    """A cell made before its loss's gain changed (as mrf's 0.01 -> 0.04 did) is not reused."""
    import dataclasses

    from impasto.losses import registry

    grid = _grid_module()
    args = _cached_once(grid, "mean_std", tmp_path, capsys)
    louder = dataclasses.replace(registry.STYLE_LOSSES["mean_std"], gain=3.0)
    monkeypatch.setitem(registry.STYLE_LOSSES, "mean_std", louder)
    assert grid.main(args) == 0
    assert "cached" not in capsys.readouterr().out
    meta = json.loads((tmp_path / "grid_cells" / "kodim23__vangogh_starry_night__mean_std.json").read_text())
    assert meta["settings"]["gain"] == 3.0
    assert grid.main([*args[:5], "gram+mean_std", *args[6:]]) == 0  # a combination: one gain per loss
    meta = json.loads((tmp_path / "grid_cells" / "kodim23__vangogh_starry_night__gram+mean_std.json").read_text())
    assert meta["settings"]["gain"] == [1.0, 3.0]


def test_a_cell_made_before_an_option_existed_is_reused_while_the_option_keeps_the_old_behaviour(tmp_path, capsys):
    """protect_faces 0 (the grid holds it there) runs as before the option existed: the 27 cells of hours stay
    valid."""
    grid = _grid_module()
    args = _cached_once(grid, "gram", tmp_path, capsys)
    meta_path = tmp_path / "grid_cells" / "kodim23__vangogh_starry_night__gram.json"
    meta = json.loads(meta_path.read_text())
    del meta["settings"]["options"]["protect_faces"]  # as written before the option existed
    meta_path.write_text(json.dumps(meta))
    assert grid.main(args) == 0
    assert capsys.readouterr().out.count("cached") == 1


def test_the_mrf_cells_match_every_step_as_they_were_made(tmp_path, capsys):
    """The grid holds --match-every at 1 (its default before 2026-12-04): the three MRF cells of 15-20 min each
    stay valid; at the new default (10) they would be made again."""
    grid = _grid_module()
    args = ["--size", "96", "--iterations", "2", "--losses", "mrf", "--pairs", "1", "--encoder", "tiny",
            "--out", str(tmp_path / "grid.png")]  # 96 px: the tiny encoder's relu4_1 holds 3x3 patches
    assert grid.main(args) == 0
    meta = json.loads((tmp_path / "grid_cells" / "kodim23__vangogh_starry_night__mrf.json").read_text())
    assert meta["settings"]["options"]["match_every"] == 1
    from impasto.methods.optimization import Options

    assert Options().match_every != 1  # otherwise this test checks nothing
