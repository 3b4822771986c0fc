"""Reliability as a careless user meets it: every bad invocation exits non-zero with one line that names the
option or file, no traceback, no 'internal error', no output or temp file left, and the inputs unchanged.

Cases are grouped by category (see CATEGORY counts in the module); all run on tiny generated files and the
tiny random encoder, so a refusal that happens late (after real work) would show as a slow or failing test.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin

from impasto.cli import main
from impasto.io.image import load_image, save_image
from impasto.io.models import save_model
from impasto.methods import feedforward as ff

FAST = ["--encoder", "tiny", "--size", "40", "--scale-iterations", "3,3", "--precision", "fp32", "-q"]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def ws(tmp_path):
    """A workspace: content, style, a tiny feed-forward model, a frame folder."""
    g = torch.Generator().manual_seed(0)
    inputs = tmp_path / "in"
    content = save_image(torch.rand(1, 3, 30, 44, generator=g), inputs / "content.png")
    style = save_image(torch.rand(1, 3, 32, 32, generator=g), inputs / "style.png")
    jpeg = save_image(torch.rand(1, 3, 30, 44, generator=g), inputs / "photo.jpg")
    torch.manual_seed(0)
    net = ff.TransformerNet(width=4)
    model = save_model(inputs / "m.safetensors", net.state_dict(), {"name": "m", "architecture": ff.architecture(net)})
    torch.manual_seed(1)
    net2 = ff.TransformerNet(width=4)
    model2 = save_model(inputs / "m2.safetensors", net2.state_dict(), {"name": "m2", "architecture": ff.architecture(net2)})
    frames = inputs / "frames"
    for i in range(3):
        save_image(torch.rand(1, 3, 24, 32, generator=g), frames / f"f{i:03d}.png")
    return {"dir": tmp_path, "in": inputs, "content": str(content), "style": str(style), "jpeg": str(jpeg),
            "model": str(model), "model2": str(model2), "frames": str(frames), "out": tmp_path / "out"}


def refused(capsys, ws, argv, *needles, code=None):
    """Run argv; assert the refusal contract and that every needle is in the one error line."""
    before = _digest(ws["in"])
    out_before = _digest(ws["out"]) if ws["out"].exists() else {}
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert rc != 0, captured.err
    if code is not None:
        assert rc == code
    assert "Traceback" not in captured.err + captured.out and "internal error" not in captured.err
    assert len(lines) == 1, captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert _digest(ws["in"]) == before, "an input file changed"
    after = _digest(ws["out"]) if ws["out"].exists() else {}
    assert after == out_before, "output written or changed by a refused run"
    assert not [p for p in ws["dir"].rglob("*") if ".tmp" in p.name], "temporary file left behind"
    return lines[0]


# ------------------------------------------------------------------ 1. outputs never destroy inputs

@pytest.mark.parametrize("which", ["content", "style"])
def test_output_equal_to_an_input_is_refused(ws, capsys, which):
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "-o", ws[which], *FAST],
            f"-o {ws[which]} is the {which} image", "--overwrite", code=2)


def test_output_equal_to_an_input_by_another_spelling_is_refused(ws, capsys):
    other = str(Path(ws["in"]) / "." / "content.png")
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "-o", other, *FAST], "is the content image")


def test_overwrite_allows_replacing_the_content(ws, capsys):
    target = Path(ws["dir"]) / "copy.png"
    target.write_bytes(Path(ws["content"]).read_bytes())
    assert main(["stylize", str(target), ws["style"], "-o", str(target), "--overwrite", *FAST]) == 0
    assert load_image(target).shape == (1, 3, 27, 40)


def test_output_an_existing_folder_is_refused(ws, capsys):
    ws["out"].mkdir()
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "-o", ws["out"], *FAST], "is a folder; give a file name")


def test_output_equal_to_the_checkpoint_or_a_mask_is_refused(ws, capsys):
    ckpt = Path(ws["in"]) / "run.ckpt"
    ckpt.write_bytes(b"x")
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "-o", ckpt.with_suffix(".png"), *FAST,
                         "--checkpoint", ckpt.with_suffix(".png")], "is the checkpoint")
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "--method", "adain", "--content-mask", ws["content"],
                         "-o", ws["content"]], "is the content image")


def test_unwritable_output_is_one_line(ws, capsys):
    blocker = Path(ws["dir"]) / "file"
    blocker.write_text("x")
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "-o", blocker / "out.png", *FAST], "cannot write", code=7)


def test_rerun_never_overwrites_the_recipe_image_or_its_inputs(ws, capsys):
    out = Path(ws["dir"]) / "result.png"
    assert main(["stylize", ws["content"], ws["style"], "-o", str(out), *FAST]) == 0
    refused(capsys, ws, ["recipe", out, "--rerun", "-o", out], "is the image the recipe was read from")
    refused(capsys, ws, ["recipe", out, "--rerun", "-o", ws["content"]], "is the content image")


# ------------------------------------------------------------------ 3-5, 8, 12. numbers: 0, negative, NaN, inf, huge

NUMERIC = [  # (method, flag, extra args)
    ("optimization", "--size", FAST[:2]), ("optimization", "--min-size", FAST[:2]),
    ("optimization", "--scale-factor", FAST[:2]), ("optimization", "--style-scale", FAST[:2]),
    ("optimization", "--learning-rate", FAST[:2]), ("optimization", "--seed", FAST[:2]),
    ("optimization", "--style-weight", FAST[:2]), ("optimization", "--content-weight", FAST[:2]),
    ("optimization", "--tv-weight", FAST[:2]), ("optimization", "--ratio", FAST[:2]),
    ("optimization", "--iterations", FAST[:2]), ("optimization", "--lbfgs-history", FAST[:2]),
    ("optimization", "--style-blend", FAST[:2]),
    ("adain", "--size", []), ("adain", "--style-size", []), ("adain", "--alpha", []),
    ("wct", "--size", []), ("wct", "--style-size", []), ("wct", "--alpha", []),
    ("photowct", "--size", []), ("photowct", "--smooth-strength", []), ("photowct", "--sigma", []),
    ("photowct", "--fast-radius", []), ("photowct", "--fast-eps", []),
    ("feedforward", "--size", []), ("feedforward", "--strength", []), ("feedforward", "--tile-size", []),
    ("feedforward", "--stats-size", []), ("feedforward", "--tile-overlap", []),
]
INT_FLAGS = {"--size", "--min-size", "--seed", "--iterations", "--lbfgs-history", "--style-size", "--fast-radius",
             "--tile-size", "--stats-size", "--tile-overlap"}


def _bad_values(flag: str) -> list[str]:
    if flag in INT_FLAGS:
        return ["0", "-1", "1000000", str(2**70)] if flag not in ("--seed", "--tile-overlap") else ["-1", str(2**70)]
    return ["nan", "inf", "-inf", "-1", "1e300"]


CASES = [(m, f, extra, v) for m, f, extra in NUMERIC for v in _bad_values(f)]


@pytest.mark.parametrize(("method", "flag", "extra", "value"), CASES, ids=[f"{c[0]}{c[1]}={c[3]}" for c in CASES])
def test_bad_numbers_are_refused_naming_the_option(ws, capsys, method, flag, extra, value, monkeypatch):
    monkeypatch.setenv("IMPASTO_MEMORY_LIMIT_MB", "4000")  # the same refusal on any machine
    styles = [] if method == "feedforward" else [ws["style"]]
    model = ["--model", ws["model"]] if method == "feedforward" else []
    line = refused(capsys, ws, ["stylize", ws["content"], *styles, "-o", ws["out"] / "o.png", "--method", method,
                                *extra, *model, flag, value, "-q"])
    assert flag in line or (value == "1000000" and "--size" in line)


def test_stats_size_zero_names_stats_size_not_tile_size(ws, capsys):
    line = refused(capsys, ws, ["stylize", ws["content"], "--method", "feedforward", "--model", ws["model"],
                                "--stats-size", "0", "-o", ws["out"] / "o.png"], "--stats-size")
    assert "tile" not in line


def test_huge_size_is_refused_with_the_largest_that_fits(ws, capsys, monkeypatch):
    monkeypatch.setenv("IMPASTO_MEMORY_LIMIT_MB", "4000")
    line = refused(capsys, ws, ["stylize", ws["content"], ws["style"], "--size", "16000", "-o", ws["out"] / "o.png",
                                "--encoder", "tiny"], "--size 16000 would need about", "the largest --size that fits is about")
    assert "GB is available" in line


@pytest.mark.parametrize(("scale_factor", "min_size"), [("1.0000001", "32"), ("1.01", "32"), ("1.1", "16")])
def test_runaway_schedules_are_refused(ws, capsys, scale_factor, min_size):
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "--encoder", "tiny", "--size", "4096",
                         "--scale-factor", scale_factor, "--min-size", min_size, "-o", ws["out"] / "o.png"],
            "--scale-factor")


# ------------------------------------------------------------------ 7. thin images

def test_a_thin_strip_is_refused_naming_the_file_and_minimum(ws, capsys):
    strip = save_image(torch.rand(1, 3, 1, 200), Path(ws["in"]) / "strip.png")
    for method, styles in (("optimization", [ws["style"], "--encoder", "tiny"]), ("adain", [ws["style"]]),
                           ("feedforward", ["--model", ws["model"]])):
        refused(capsys, ws, ["stylize", strip, *styles, "--method", method, "-o", ws["out"] / "o.png", "-q"],
                str(strip), f"--method {method} needs at least 16 px")


def test_a_20_to_1_banner_runs_with_defaults_for_optimisation(ws, capsys):
    banner = save_image(torch.rand(1, 3, 20, 400), Path(ws["in"]) / "banner.png")
    out = ws["out"] / "banner.png"
    assert main(["stylize", str(banner), ws["style"], "--encoder", "tiny", "--size", "512", "--iterations", "4",
                 "-o", str(out), "-q"]) == 0
    assert load_image(out).shape == (1, 3, 26, 512)


# ------------------------------------------------------------------ 11. options that would be silently ignored

def test_options_that_would_be_ignored_are_refused(ws, capsys):
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "--method", "adain", "--checkpoint",
                         ws["dir"] / "c.ckpt", "-o", ws["out"] / "o.png"], "--method adain runs in one pass", "optimization")
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "--method", "wct", "--resume", "--checkpoint",
                         ws["dir"] / "c.ckpt", "-o", ws["out"] / "o.png"], "cannot checkpoint or resume")
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "--method", "feedforward", "--model", ws["model"],
                         "-o", ws["out"] / "o.png"], "--method feedforward takes no style image")
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "--keep-alpha", "-o", ws["out"] / "o.jpg", *FAST],
            "--keep-alpha: JPEG has no transparency")
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "--checkpoint-every", "0", "--checkpoint",
                         ws["dir"] / "c.ckpt", "-o", ws["out"] / "o.png", *FAST], "--checkpoint-every")


# ------------------------------------------------------------------ 9. forged checkpoints and recipes

def _checkpoint(ws) -> tuple[Path, dict]:
    ckpt = Path(ws["dir"]) / "run.ckpt"
    assert main(["stylize", ws["content"], ws["style"], "--encoder", "tiny", "--size", "40", "--scale-iterations",
                 "4,4", "--precision", "fp32", "-q", "-o", str(Path(ws["dir"]) / "first.png"),
                 "--checkpoint", str(ckpt), "--checkpoint-every", "2"]) == 0
    return ckpt, torch.load(ckpt, weights_only=True)


FORGERIES = {
    "missing step": lambda s: s.pop("step"),
    "missing image": lambda s: s.pop("image"),
    "step out of range": lambda s: s.update(step=10**6),
    "negative step": lambda s: s.update(step=-3),
    "scale out of range": lambda s: s.update(scale_index=9),
    "step not an int": lambda s: s.update(step="2"),
    "image wrong shape": lambda s: s.update(image=torch.zeros(1, 3, 5, 5)),
    "image NaN": lambda s: s.update(image=torch.full_like(s["image"], math.nan)),
    "optimizer not a state": lambda s: s.update(optimizer={"x": 1}),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_checkpoints_are_refused(ws, capsys, forgery):
    ckpt, state = _checkpoint(ws)
    FORGERIES[forgery](state)
    torch.save(state, ckpt)
    capsys.readouterr()
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "--encoder", "tiny", "--size", "40",
                         "--scale-iterations", "4,4", "--precision", "fp32", "-q", "-o", ws["out"] / "o.png",
                         "--checkpoint", ckpt, "--resume"], f"checkpoint {ckpt} is damaged", code=5)


def _png_with_recipe(path: Path, text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("impasto:recipe", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def _good_recipe(ws) -> dict:
    out = Path(ws["dir"]) / "made.png"
    assert main(["stylize", ws["content"], ws["style"], "-o", str(out), *FAST]) == 0
    return json.loads(Image.open(out).info["impasto:recipe"])


RECIPE_FORGERIES = {
    "deeply nested": lambda r: '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "no inputs": lambda r: json.dumps({k: v for k, v in r.items() if k != "inputs"}),
    "inputs not an object": lambda r: json.dumps({**r, "inputs": [1, 2]}),
    "no content hash": lambda r: json.dumps({**r, "inputs": {**r["inputs"], "content": {"path": "x"}}}),
    "unknown method": lambda r: json.dumps({**r, "method": "magic"}),
    "bad option value": lambda r: json.dumps({**r, "options": {**r["options"], "size": "huge"}}),
    "unknown option": lambda r: json.dumps({**r, "options": {**r["options"], "sizee": 3}}),
}


@pytest.mark.parametrize("forgery", RECIPE_FORGERIES)
def test_forged_recipes_are_refused(ws, capsys, forgery):
    recipe = _good_recipe(ws)
    path = _png_with_recipe(Path(ws["in"]) / "forged.png", RECIPE_FORGERIES[forgery](recipe))
    capsys.readouterr()
    refused(capsys, ws, ["recipe", path, "--rerun", "-o", ws["out"] / "again.png"])


# ------------------------------------------------------------------ 6. video: reuse only what this run would make

def _video(ws, *args):
    return main(["stylize-video", ws["frames"], "-o", str(ws["out"]), *args])


def test_video_frames_made_with_another_model_are_redone(ws, capsys):
    assert _video(ws, "--model", ws["model"], "-q") == 0
    first = {p.name: p.read_bytes() for p in ws["out"].glob("*.png")}
    assert len(first) == 3
    capsys.readouterr()
    assert _video(ws, "--model", ws["model2"]) == 0
    assert "3 stylised" not in capsys.readouterr().err
    second = {p.name: p.read_bytes() for p in ws["out"].glob("*.png")}
    assert all(first[n] != second[n] for n in first)  # every frame made again with the new model
    assert _video(ws, "--model", ws["model2"]) == 0
    assert "0 stylised, 3 kept from an earlier run" in " ".join(capsys.readouterr().err.split())


def test_video_frames_are_redone_when_the_model_file_changes_in_place(ws, capsys):
    assert _video(ws, "--model", ws["model"], "-q") == 0
    Path(ws["model"]).write_bytes(Path(ws["model2"]).read_bytes())
    capsys.readouterr()
    assert _video(ws, "--model", ws["model"]) == 0
    assert "3 redone" in capsys.readouterr().err


def test_video_frames_are_redone_when_an_input_frame_changes(ws, capsys):
    assert _video(ws, "--model", ws["model"], "-q") == 0
    save_image(torch.zeros(1, 3, 24, 32), Path(ws["frames"]) / "f001.png")
    capsys.readouterr()
    assert _video(ws, "--model", ws["model"]) == 0
    text = " ".join(capsys.readouterr().err.split())
    assert "1 redone" in text and "2 kept" in text


def _truncate(ws, name="f001.png"):
    bad = Path(ws["frames"]) / name
    bad.write_bytes(bad.read_bytes()[:60])
    return bad


def test_video_bad_frame_stops_by_default_naming_the_frame(ws, capsys):
    bad = _truncate(ws)
    before = _digest(ws["in"])
    assert _video(ws, "--model", ws["model"], "-q") == 3
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(line) == 1 and "f001.png" in line[0] and "--on-bad-frame skip" in line[0]
    assert sorted(p.name for p in ws["out"].glob("*.png")) == ["frame_00001.png"]  # the frames before it are kept
    assert _digest(ws["in"]) == before and bad.exists()


def test_video_bad_frame_skip_and_copy(ws, capsys):
    _truncate(ws)
    assert _video(ws, "--model", ws["model"], "--on-bad-frame", "skip", "-q") == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "1 bad, skipped (f001.png)" in err  # said even with -q
    assert sorted(p.name for p in ws["out"].glob("*.png")) == ["frame_00001.png", "frame_00003.png"]
    assert _video(ws, "--model", ws["model"], "--on-bad-frame", "copy") == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "1 bad, replaced by the previous frame (f001.png)" in err and "bad frame:" in err
    assert (ws["out"] / "frame_00002.png").read_bytes() == (ws["out"] / "frame_00001.png").read_bytes()


def test_video_output_inside_or_equal_to_the_input_folder_is_refused(ws, capsys):
    refused(capsys, ws, ["stylize-video", ws["frames"], "-o", ws["frames"], "--model", ws["model"]],
            "is the input frames", "--overwrite")
    refused(capsys, ws, ["stylize-video", ws["frames"], "-o", Path(ws["frames"]) / "styled", "--model", ws["model"]],
            "is inside the input frames")
    refused(capsys, ws, ["stylize-video", ws["frames"], ws["style"], "-o", ws["out"], "--model", ws["model"]],
            "takes no style image")
    refused(capsys, ws, ["stylize-video", ws["frames"], "-o", ws["out"], "--model", ws["model"], "--on-bad-frame", "drop"],
            "--on-bad-frame")


# ------------------------------------------------------------------ 13. models list

def test_models_list_is_compact_with_details_behind_show_and_json(capsys):
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert 3 <= len(lines) <= 30 and max(len(line) for line in lines) <= 80
    assert lines[0].split() == ["name", "kind", "size", "style/level"]
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name", "kind", "licence", "size_mb", "file"} <= set(rows[0])
    assert main(["models", "show", "starry_night"]) == 0
    assert "licence:" in capsys.readouterr().out
    assert main(["models", "show", "starry_nite"]) == 2
    assert "Did you mean 'starry_night'" in capsys.readouterr().err


# ------------------------------------------------------------------ the guard: every raise is a typed ImpastoError

def _typed_errors() -> set[str]:
    import inspect

    from impasto import errors

    return {name for name, obj in vars(errors).items() if inspect.isclass(obj) and issubclass(obj, errors.ImpastoError)}


def _untyped_raises(source: str, typed: set[str]) -> list[tuple[int, str]]:
    """(line, raised name) of every raise that is not a typed error, a re-raise, or a local helper returning one."""
    import ast
    import builtins

    tree = ast.parse(source)
    helpers = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
               and isinstance(node.returns, (ast.Name, ast.Constant))
               and (getattr(node.returns, "id", None) or getattr(node.returns, "value", None)) in typed}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue  # bare re-raise
        if isinstance(node.exc, ast.Name) and not isinstance(getattr(builtins, node.exc.id, None), type):
            continue  # re-raising a caught exception held in a variable
        func = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name not in typed and name not in helpers:
            found.append((node.lineno, name or ast.unparse(node.exc)))
    return found


def test_every_raise_in_impasto_is_a_typed_impasto_error():
    """A user-caused failure must never reach the CLI as 'internal error': the library raises only
    ImpastoError subclasses (or re-raises a caught exception, or calls a local helper that returns one)."""
    import impasto

    typed = _typed_errors()
    bad = [f"{path.name}:{line} raises {name}" for path in Path(impasto.__file__).parent.rglob("*.py")
           for line, name in _untyped_raises(path.read_text(), typed)]
    assert not bad, "\n".join(bad)


def test_the_guard_catches_an_untyped_raise():
    source = ("def bad(x) -> 'CheckpointError':\n    return CheckpointError(x)\n"
              "def f(e):\n    raise ValueError('x')\n    raise CheckpointError('ok')\n    raise bad('ok')\n"
              "    raise e\n    raise errors.InvalidOptionError('ok')\n    raise RuntimeError\n")
    assert _untyped_raises(source, _typed_errors()) == [(4, "ValueError"), (9, "RuntimeError")]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_demo_refuses_no_pairs(capsys, value, tmp_path):
    assert main(["demo", "-o", str(tmp_path / "demo"), "--pairs", value]) == 2
    err = capsys.readouterr().err
    assert "--pairs" in err and "Traceback" not in err and not (tmp_path / "demo").exists()


def test_non_regular_model_checkpoint_and_weights_files_are_named_as_such(ws, capsys):
    import os

    fifo = Path(ws["in"]) / "pipe.safetensors"
    os.mkfifo(fifo)
    refused(capsys, ws, ["stylize", ws["content"], "--method", "feedforward", "--model", fifo, "-o", ws["out"] / "o.png"],
            "is a named pipe (FIFO), not a regular file")
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], *FAST, "--checkpoint", fifo, "--resume",
                         "-o", ws["out"] / "o.png"], "is a named pipe (FIFO)")
    refused(capsys, ws, ["weights", "import", fifo], "is a named pipe (FIFO)")
    refused(capsys, ws, ["stylize", ws["content"], ws["style"], "--method", "adain", "--decoder", ws["in"],
                         "-o", ws["out"] / "o.png"])
