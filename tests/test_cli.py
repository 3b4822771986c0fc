"""The command line: one readable line and a non-zero exit for user errors, options generated from Options."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from impasto.cli import main
from impasto.io.image import load_image, save_image
from impasto.methods.optimization import Options

FAST = ["--encoder", "tiny", "--size", "40", "--scale-iterations", "3,3", "--precision", "fp32", "-q"]


@pytest.fixture()
def files(tmp_path):
    g = torch.Generator().manual_seed(0)
    content = save_image(torch.rand(1, 3, 30, 44, generator=g), tmp_path / "content.png")
    style = save_image(torch.rand(1, 3, 32, 32, generator=g), tmp_path / "style.png")
    return str(content), str(style)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1, captured.err
    return lines[0]


def test_stylize_writes_image_and_recipe_prints(files, tmp_path, capsys):
    content, style = files
    out = tmp_path / "out.png"
    assert main(["stylize", content, style, "-o", str(out), *FAST]) == 0
    assert load_image(out).shape == (1, 3, 27, 40)
    capsys.readouterr()
    assert main(["recipe", str(out)]) == 0
    recipe = json.loads(capsys.readouterr().out)
    assert recipe["options"]["encoder"] == "tiny" and recipe["options"]["scale_iterations"] == [3, 3]
    out2 = tmp_path / "again.png"
    assert main(["recipe", str(out), "--rerun", "-o", str(out2)]) == 0
    assert torch.equal(load_image(out), load_image(out2))


def test_layer_sources_and_blend_flags(files, tmp_path):
    content, style = files
    out = tmp_path / "mix.png"
    args = ["stylize", content, style, style, "-o", str(out), "--style-blend", "0.7,0.3",
            "--layer-sources", "relu1_1-relu3_1=0", "--layer-sources", "relu4_1=1", *FAST]
    assert main(args) == 0
    from impasto.api import load_recipe

    sources = load_recipe(out)["options"]["layer_sources"]
    assert sources == [["relu1_1", 0], ["relu2_1", 0], ["relu3_1", 0], ["relu4_1", 1]]


def test_a_list_option_given_twice_takes_both_values(files, tmp_path):
    from impasto.api import load_recipe

    content, style = files
    out = tmp_path / "layers.png"
    assert main(["stylize", content, style, "-o", str(out), *FAST, "--style-layers", "relu1_1",
                 "--style-layers", "relu2_1,relu3_1"]) == 0  # once kept only the last; now all of them
    assert load_recipe(out)["options"]["style_layers"] == ["relu1_1", "relu2_1", "relu3_1"]


@pytest.mark.parametrize(
    ("args", "expected", "code"),
    [
        (["stylize", "/no/such.jpg", "{style}", "-o", "{out}"], "no such file", 3),
        (["stylize", "{content}", "{style}", "-o", "{out}", "--styl-weight", "3"], "No such option", 2),
        (["stylize", "{content}", "{style}", "-o", "{out}", "--style-layers", "relu1_1,relu9_9"], "unknown layer 'relu9_9'", 2),
        (["stylize", "{content}", "{style}", "-o", "{out}", "--size", "abc"], "is not a valid integer", 2),
        (["stylize", "{content}", "{style}", "-o", "{out}", "--optimizer", "sgd"], "optimizer must be one of", 2),
        (["stylize", "{content}", "-o", "{out}"], "at least one style image", 2),
        (["stylize", "{content}", "{style}", "-o", "{out}", "--strength", "0.5"], "--strength does not apply to --method optimization", 2),
        (["stylize", "{content}", "{style}", "-o", "{tmp}/x.bmp"], "must end in one of .png", 2),
        (["stylize", "{content}", "{style}", "-o", "{out}", "--layer-sources", "relu1_1"], "must look like", 2),
        (["stylize", "{content}", "{style}", "-o", "{out}", "--style-blend", "none", "--style-blend", "1"],
         "--style-blend none cannot be combined", 2),
        (["stylize", "{content}", "{style}", "-o", "{out}", "--checkpoint", "{tmp}/none.ckpt", "--resume"], "none.ckpt does not exist", 5),
        (["stylize", "{content}", "{style}"], "Missing option '-o'", 2),
        (["recipe", "{style}"], "holds no impasto recipe", 3),
        (["frobnicate"], "No such command", 2),
    ],
)
def test_user_errors_are_one_line(files, tmp_path, capsys, args, expected, code):
    content, style = files
    values = {"content": content, "style": style, "out": str(tmp_path / "o.png"), "tmp": str(tmp_path)}
    argv = [a.format(**values) for a in args]
    if argv[0] == "stylize" and "-o" in argv:
        argv = [argv[0], *FAST, *argv[1:]]  # the case's own flags come last and win
    assert main(argv) == code
    line = _one_error_line(capsys)
    assert expected in line


def test_help_lists_every_option_with_default(capsys):
    assert main(["stylize", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(Options):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
    assert "[default: 300]" in text and "[default: relu4_2]" in text and "[default: lbfgs]" in text


def test_weights_list_offline(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("IMPASTO_HOME", str(tmp_path))
    monkeypatch.setenv("IMPASTO_OFFLINE", "1")
    assert main(["weights", "list"]) == 0
    text = capsys.readouterr().out
    assert "vgg16" in text and "importable offline" in text and "vgg19" in text and "unavailable" in text


def test_weights_verify_with_empty_cache_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("IMPASTO_HOME", str(tmp_path))
    assert main(["weights", "verify"]) == 2
    assert "no weights are cached" in _one_error_line(capsys)



def test_weights_slice_writes_a_file_the_trainers_take(capsys, monkeypatch, tmp_path):
    from impasto.features.vgg import tiny_state
    from impasto.io import weights as weights_io

    loaded = weights_io.LoadedWeights(source=weights_io.REGISTRY["vgg16"], state=tiny_state("vgg16"), sha256="e" * 64)
    monkeypatch.setattr(weights_io, "load", lambda name, progress=None: loaded)
    out = tmp_path / "vgg16_conv2_1.safetensors"
    assert main(["weights", "slice", "vgg16", "conv2_1", "-o", str(out)]) == 0
    assert "up to conv2_1" in capsys.readouterr().out
    assert weights_io.load_slice(out)[1]["upto"] == "conv2_1"
    assert main(["weights", "slice", "vgg16", "conv2_1", "-o", str(tmp_path / "x.pt")]) == 2
    assert "must end in .safetensors" in _one_error_line(capsys)


def test_ctrl_c_saves_checkpoint_and_resume_finishes_identically(files, tmp_path):
    """A real SIGINT to the CLI process: one-line message, exit 130, checkpoint kept; --resume == uninterrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    content, style = files
    ckpt = tmp_path / "run.ckpt"
    base = [sys.executable, "-c", "import sys; from impasto.cli import main; sys.exit(main())", "stylize", content, style,
            "--encoder", "tiny", "--size", "40", "--scale-iterations", "600", "--precision", "fp32", "-q"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([*base, "-o", str(tmp_path / "a.png"), "--checkpoint", str(ckpt), "--checkpoint-every", "5"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "cancelled" in lines[0] and "--resume" in lines[0], err
    assert not (tmp_path / "a.png").exists() and ckpt.exists()

    resumed = subprocess.run([*base, "-o", str(tmp_path / "a.png"), "--checkpoint", str(ckpt), "--resume"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    full = subprocess.run([*base, "-o", str(tmp_path / "b.png")], capture_output=True, text=True, env=env, timeout=120)
    assert full.returncode == 0, full.stderr
    assert torch.equal(load_image(tmp_path / "a.png"), load_image(tmp_path / "b.png"))


def test_train_feedforward_then_stylize_export_and_run_onnx(tmp_path, capsys):
    """The feed-forward workflow from the command line on tiny images and the tiny loss network."""
    photos = tmp_path / "photos"
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        save_image(torch.rand(1, 3, 40, 40, generator=g), photos / f"{i}.png")
    style = save_image(torch.rand(1, 3, 32, 32, generator=g), tmp_path / "style.png")
    model = tmp_path / "m.safetensors"
    args = ["train", "feedforward", "--style", str(style), "--content-dir", str(photos), "-o", str(model),
            "--steps", "4", "--batch-size", "2", "--crop", "32", "--width", "8", "--encoder", "tiny", "--precision", "fp32", "-q"]
    assert main(args) == 0, capsys.readouterr().err
    assert model.is_file() and model.with_suffix(".loss.png").is_file() and model.with_suffix(".ckpt").is_file()
    content = save_image(torch.rand(1, 3, 30, 34, generator=g), tmp_path / "c.png")
    out = tmp_path / "ff.png"
    assert main(["stylize", str(content), "--method", "feedforward", "--model", str(model), "-o", str(out),
                 "--precision", "fp32", "-q"]) == 0  # onnxruntime runs fp32: compare like with like
    assert load_image(out).shape == (1, 3, 30, 34)
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(model), "--onnx", str(onnx_file)]) == 0
    out2 = tmp_path / "ff_onnx.png"
    assert main(["stylize", str(content), "--method", "feedforward", "--model", str(onnx_file), "-o", str(out2), "-q"]) == 0
    assert float((load_image(out) - load_image(out2)).abs().max()) <= 2 / 255
    capsys.readouterr()
    assert main(["stylize", str(content), "--method", "feedforward", "--model", str(tmp_path / "nope.safetensors"),
                 "-o", str(out), "-q"]) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert main(["stylize", str(content), "--method", "feedforward", "--model", str(model), "--iterations", "3",
                 "-o", str(out), "-q"]) == 2
    assert "--iterations does not apply to --method feedforward" in _one_error_line(capsys)


def test_stylize_video_frame_folder_and_gif(tmp_path, capsys):
    from PIL import Image

    from impasto.methods import feedforward as ff
    from impasto.io.models import save_model

    torch.manual_seed(0)
    net = ff.TransformerNet(width=4)
    model = save_model(tmp_path / "m.safetensors", net.state_dict(), {"name": "m", "architecture": ff.architecture(net)})
    frames = tmp_path / "frames"
    g = torch.Generator().manual_seed(3)
    for i in range(3):
        save_image(torch.rand(1, 3, 24, 32, generator=g), frames / f"f{i:03d}.png")
    out = tmp_path / "out"
    assert main(["stylize-video", str(frames), "-o", str(out), "--model", str(model), "-q"]) == 0
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["frame_00001.png", "frame_00002.png", "frame_00003.png"]
    assert load_image(written[0]).shape == (1, 3, 24, 32)
    # an interrupted run continues: existing frames are kept as they are
    stamp = written[1].stat().st_mtime_ns
    written[2].unlink()
    assert main(["stylize-video", str(frames), "-o", str(out), "--model", str(model), "-q"]) == 0
    assert written[1].stat().st_mtime_ns == stamp and written[2].exists()
    gif = tmp_path / "a.gif"
    pics = [Image.new("RGB", (20, 16), c) for c in ("red", "green")]
    pics[0].save(gif, save_all=True, append_images=pics[1:])
    assert main(["stylize-video", str(gif), "-o", str(tmp_path / "gifout"), "--model", str(model), "-q"]) == 0
    assert len(list((tmp_path / "gifout").glob("*.png"))) == 2
    capsys.readouterr()
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(b"\x00" * 10)
    assert main(["stylize-video", str(mp4), "-o", str(tmp_path / "o.mp4"), "--model", str(model), "-q"]) == 3
    assert "cannot be opened as a video" in _one_error_line(capsys)  # a damaged file: one line, no output
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o.mp4.part").exists()


def test_train_decoder_takes_unpool_as_a_flag_and_style_dirs(tmp_path, capsys):
    """The README's decoder command: --unpool is a flag (--no-unpool its opposite), --style-dir repeats."""
    from impasto.features.decoder import load_decoder

    g = torch.Generator().manual_seed(4)
    for i in range(2):
        save_image(torch.rand(1, 3, 40, 40, generator=g), tmp_path / "photos" / f"{i}.png")
        save_image(torch.rand(1, 3, 36, 36, generator=g), tmp_path / "styles" / f"{i}.png")
    base = ["train", "decoder", "--level", "relu2_1", "--content-dir", str(tmp_path / "photos"), "--steps", "2",
            "--batch-size", "2", "--crop", "32", "--encoder", "tiny", "--precision", "fp32", "-q"]
    assert main([*base, "--unpool", "--style-dir", str(tmp_path / "styles"), "-o", str(tmp_path / "u.safetensors")]) == 0
    captured = capsys.readouterr()
    assert "styled" in captured.out + captured.err  # the stylised half of each batch has its own loss
    assert load_decoder(str(tmp_path / "u.safetensors"))[0].unpool
    assert main([*base, "--no-unpool", "-o", str(tmp_path / "n.safetensors")]) == 0
    assert not load_decoder(str(tmp_path / "n.safetensors"))[0].unpool
    capsys.readouterr()
    assert main(["train", "decoder", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--unpool / --no-unpool" in text and "--style-dir" in text and "--style-transform" in text


@pytest.mark.parametrize(("method", "hint"), [("optimization", "add --checkpoint FILE"), ("adain", None)])
def test_a_cancelled_run_suggests_a_checkpoint_only_where_the_method_takes_one(files, tmp_path, capsys, monkeypatch, method, hint):
    from impasto import api
    from impasto.errors import CancelledError

    def cancelled(*args, **kwargs):
        raise CancelledError("cancelled at step 3")
    monkeypatch.setattr(api, "stylize", cancelled)
    content, style = files
    assert main(["stylize", content, style, "-o", str(tmp_path / "out.png"), "--method", method]) != 0
    line = _one_error_line(capsys)
    assert "cancelled at step 3" in line
    assert (hint in line) if hint else ("checkpoint" not in line)
