"""scripts/gpu_train.py, the lent-GPU decoder run, end to end on the CPU with a tiny encoder slice."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from impasto.errors import InvalidOptionError
from impasto.features.decoder import load_decoder
from impasto.features.vgg import tiny_state
from impasto.io import weights as weights_io
from impasto.io.image import save_image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_train.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data(root: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    for kind, n in (("photos", 20), ("paintings", 6)):
        for i in range(n):
            base = torch.rand(1, 3, 5, 7, generator=g)
            save_image(torch.nn.functional.interpolate(base, size=(48, 64), mode="bicubic").clamp(0, 1),
                       root / kind / f"{kind}_{i:02d}.png")
    save_image(torch.rand(1, 3, 40, 40, generator=g), root.parent / "style" / "stripes.png")
    return root


def test_pack_then_decoder_run_writes_a_scored_decoder(script, tmp_path):
    data = _data(tmp_path / "data")
    loaded = weights_io.LoadedWeights(source=weights_io.REGISTRY["vgg16"], state=tiny_state("vgg16"), sha256="d" * 64)
    slice_file = weights_io.write_slice(loaded, "vgg16", "conv4_1", tmp_path / "tiny_slice.safetensors")
    pack = tmp_path / "pack"
    counts = script.pack(data, pack, str(slice_file))
    # every 10th photo and every 6th painting is held out, and never in the training folders
    assert counts == {"photos_train": 18, "photos_holdout": 2, "paintings_train": 5, "paintings_holdout": 1, "styles": 1}
    held = {p.name for p in (pack / "train" / "photos_holdout").iterdir()}
    assert held == {"photos_09.png", "photos_19.png"}
    assert not held & {p.name for p in (pack / "train" / "photos_train").iterdir()}

    out = tmp_path / "out"
    report = script.main(["decoder", "--out", str(out), "--pack", str(pack), "--minutes", "0.12", "--reserve", "1",
                          "--probe-steps", "3", "--level", "relu2_1", "--device", "cpu", "--compare", "",
                          "--set", "batch_size=2", "--set", "crop=32", "--set", "learning_rate=0.003"])
    assert report == 0
    saved = json.loads((out / "report.json").read_text())
    assert saved["device"] == "cpu" and saved["steps"] >= 3 and saved["options"]["crop"] == 32
    assert saved["probe_ms_per_step"] > 0 and saved["setup_seconds"] > 0 and saved["seconds_per_step"] > 0
    assert saved["options"]["style_statistics_weight"] == 1.0 and "style_statistics" in saved["final_losses"]
    assert 5.0 < saved["heldout_psnr"] < 60.0
    decoder, meta = load_decoder(str(out / "decoder.safetensors"))
    assert meta["architecture"]["level"] == "relu2_1"
    assert meta["encoder_source_sha256"] == weights_io.REGISTRY["vgg16"].sha256  # serves the full weights
    assert not (out / "probe.safetensors").exists() and (out / "train.log").read_text().count("step ") >= 1
    with pytest.raises(InvalidOptionError, match="--set bogus=1: expected NAME=VALUE"):
        script.main(["decoder", "--out", str(out), "--pack", str(pack), "--set", "bogus=1", "--device", "cpu"])
    with pytest.raises(InvalidOptionError, match="holds no pack"):
        script.main(["decoder", "--out", str(out), "--pack", str(tmp_path / "nothing"), "--device", "cpu"])


def test_feedforward_run_trains_a_style_and_writes_samples(script, tmp_path):
    from impasto.methods.feedforward import load_network

    data = _data(tmp_path / "data")
    loaded = weights_io.LoadedWeights(source=weights_io.REGISTRY["vgg16"], state=tiny_state("vgg16"), sha256="d" * 64)
    pack = tmp_path / "pack"
    script.pack(data, pack, str(weights_io.write_slice(loaded, "vgg16", "conv4_1", tmp_path / "s.safetensors")))
    out = tmp_path / "out"
    assert script.main(["feedforward", "--style", "stripes.png", "--out", str(out), "--pack", str(pack), "--minutes",
                        "0.12", "--reserve", "1", "--probe-steps", "3", "--device", "cpu", "--samples", "2",
                        "--set", "batch_size=2", "--set", "crop=32", "--set", "style_size=32", "--set", "width=4",
                        "--set", "residual_blocks=1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] >= 3 and report["samples"] == 2 and report["options"]["style_layers"][-1] == "relu4_1"
    net, meta = load_network(str(out / "stripes.safetensors"))
    assert meta["architecture"]["width"] == 4 and (out / "samples.png").is_file()
    with pytest.raises(InvalidOptionError, match="--style nope.jpg: not in .*packed: stripes.png"):
        script.main(["feedforward", "--style", "nope.jpg", "--out", str(out), "--pack", str(pack), "--device", "cpu"])


def test_the_budget_sizes_the_run_from_the_probes_training_steps(script, tmp_path, monkeypatch):
    """Steps = (minutes - time so far - setup - reserve) / seconds per step, where the step time comes from the
    later half of the probe's *training* steps (a warm start's cheap bridge steps and the first, warm-up
    step count as setup); a budget too small for more than the probe is flagged, not overrun."""
    import dataclasses as dc
    from types import SimpleNamespace

    from impasto.events import Progress, Stage

    @dc.dataclass(frozen=True)
    class Opts:
        steps: int = 1

    clock = [0.0]
    monkeypatch.setattr(script.time, "perf_counter", lambda: clock[0])
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "encoder.safetensors").write_bytes(b"")
    calls = []

    def fake_train(options, output, fp16=False, callback=None):
        calls.append(options.steps)
        start = clock[0]
        clock[0] += 20.0  # loading
        callback(Stage(name="bridge"))
        for i in range(8):  # a warm start's bridge: fast steps that must not set the pace
            clock[0] += 0.0625
            callback(Progress(step=i + 1, total=8))
        callback(Stage(name="train"))
        for i in range(options.steps):
            clock[0] += 2.0 if i == 0 else 0.5
            callback(Progress(step=i + 1, total=options.steps, losses={"total": 1.0}))
        return SimpleNamespace(seconds=clock[0] - start, history={"total": [1.0]})

    run = script.Run(tmp_path / "out", tmp_path / "pack", "cpu", minutes=10, reserve=30)
    run.train(fake_train, Opts(), "m.safetensors", probe_steps=10)
    setup = 20.0 + 0.5 + 2.0  # loading, bridge, the first (warm-up) step
    elapsed = setup + 9 * 0.5  # the whole probe
    assert calls == [10, int((600 - elapsed - setup - 30) / 0.5)]
    assert run.facts["probe_ms_per_step"] == pytest.approx(500.0) and run.facts["seconds_per_step"] == pytest.approx(0.5)
    assert "over_budget" not in run.facts

    clock[0] = 0.0
    calls.clear()
    short = script.Run(tmp_path / "out2", tmp_path / "pack", "cpu", minutes=0.5, reserve=30)
    short.train(fake_train, Opts(), "m.safetensors", probe_steps=10)
    assert calls == [10, 10] and short.facts["over_budget"] is True


def test_set_parses_each_field_by_its_annotation(script):
    from impasto.training.decoder import DecoderOptions
    from impasto.training.feedforward import TrainOptions

    d = script._apply(DecoderOptions(), ["top_convs=1", "unpool=true", "content_dirs=a,b", "init_from=none", "crop=128"])
    assert (d.top_convs, d.unpool, d.content_dirs, d.init_from, d.crop) == (1, True, ("a", "b"), None, 128)
    t = script._apply(TrainOptions(), ["style_loss_weights=1,0.5", "style_weight=3", "style_names=x"])
    assert t.style_loss_weights == (1.0, 0.5) and t.style_weight == 3.0 and t.style_names == ("x",)
    with pytest.raises(InvalidOptionError, match="--set crop=big: 'big' is not"):
        script._apply(DecoderOptions(), ["crop=big"])


def test_pack_refuses_to_replace_a_folder_that_is_not_a_pack(script, tmp_path):
    data = _data(tmp_path / "data")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidOptionError, match="is not a pack"):
        script.pack(data, tmp_path / "precious", "unused")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
