"""Video end to end: mp4 in and out with audio, cuts, refusals, the temporal layer, resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
import torch

from conftest import REPO, data_dir
from impasto import api
from impasto.cli import main
from impasto.errors import InvalidImageError, InvalidOptionError
from impasto.io.image import load_image, save_image
from impasto.io.models import save_model
from impasto.io.video import decode_video, frame_sources, probe_video, write_test_clip
from impasto.methods import feedforward as ff
from impasto.methods import optimization
from impasto.methods.video import Options as TemporalOptions
from impasto.methods.video import Temporal, pair_warping_error


@pytest.fixture(scope="module")
def butterfly() -> list[torch.Tensor]:
    """Six real frames (the butterfly clip) at 160 x 90."""
    paths = sorted((data_dir() / "video" / "butterfly").glob("*.png"))[:6]
    return [torch.nn.functional.interpolate(load_image(p), size=(90, 160), mode="area") for p in paths]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    torch.manual_seed(0)
    net = ff.TransformerNet(width=4)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    return str(save_model(path, net.state_dict(), {"name": "m", "architecture": ff.architecture(net)}))


@pytest.fixture(scope="module")
def clip(tmp_path_factory, butterfly) -> Path:
    """A 6-frame 12 fps h264 mp4 with a 440 Hz AAC tone."""
    return write_test_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", butterfly, fps=12)


def _audio_packets(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(c.streams.audio[0]) if p.size)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# ------------------------------------------------------------------ io

def test_mp4_round_trip_keeps_frames_fps_and_audio(clip, tiny_model, tmp_path):
    out = tmp_path / "styled.mp4"
    summary = api.stylize_video(clip, out, method="feedforward", options={"model": tiny_model, "precision": "fp32"})
    assert summary.video == out and out.is_file() and not (tmp_path / "styled.mp4.frames").exists()
    src, got = probe_video(clip), probe_video(out)
    assert (got.frames, got.fps, got.width, got.height) == (src.frames, src.fps, src.width, src.height)
    assert got.has_audio and _audio_packets(out) == _audio_packets(clip)  # copied packet for packet
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264" and c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_frame_sources_points_a_video_file_to_the_decoder(clip):
    with pytest.raises(InvalidOptionError, match="not a frame folder or GIF; read a video file with decode_video"):
        frame_sources(clip)


def test_decoding_is_close_to_the_frames_and_cuts_by_time(clip, butterfly):
    frames = [f for _, f in decode_video(clip)]
    assert len(frames) == len(butterfly)
    assert float((frames[2] - butterfly[2]).abs().mean()) < 0.03  # h264 at its default quality
    cut = [n for n, _ in decode_video(clip, start=1 / 12, duration=3 / 12)]
    assert cut == ["frame 1", "frame 2", "frame 3"]
    assert [n for n, _ in decode_video(clip, every=2)] == ["frame 1", "frame 3", "frame 5"]


def test_cut_and_every_give_the_matching_rate_and_length(clip, tiny_model, tmp_path):
    out = tmp_path / "half.mp4"
    api.stylize_video(clip, out, method="feedforward", options={"model": tiny_model}, cut=api.VideoCut(every=2))
    info = probe_video(out)
    assert info.frames == 3 and info.fps == 6 and not info.has_audio


def test_odd_sized_frames_are_padded_to_even_for_h264(tmp_path, tiny_model):
    frames = tmp_path / "frames"
    for i in range(2):
        save_image(torch.rand(1, 3, 33, 45, generator=torch.Generator().manual_seed(i)), frames / f"{i}.png")
    out = tmp_path / "odd.mp4"
    api.stylize_video(frames, out, method="feedforward", options={"model": tiny_model}, fps=10)
    info = probe_video(out)
    assert (info.width, info.height, info.frames, info.fps) == (46, 34, 2, 10)


@pytest.mark.parametrize(("make", "needle"), [
    (lambda p: "http://example.com/clip.mp4", "not URLs"),
    (lambda p: (p / "list.m3u8").write_text("#EXTM3U\nhttp://example.com/a.ts\n") and str(p / "list.m3u8"), "playlists"),
    (lambda p: (p / "sneaky.mp4").write_text("#EXTM3U\nhttp://example.com/a.ts\n") and str(p / "sneaky.mp4"), "playlist"),
    (lambda p: (p / "list.txt").write_text("file 'a.mp4'\n") and str(p / "list.txt"), "concat"),
    (lambda p: "/dev/zero", "a device"),
])
def test_non_local_inputs_are_refused_in_one_line(tmp_path, tiny_model, capsys, make, needle):
    source = make(tmp_path)
    code = main(["stylize-video", source, "-o", str(tmp_path / "o.mp4"), "--model", tiny_model, "-q"])
    assert code == 2
    assert needle in _one_error_line(capsys)
    assert not (tmp_path / "o.mp4").exists()


def test_an_over_long_clip_is_refused_before_decoding(clip, tiny_model, tmp_path, capsys, monkeypatch):
    import impasto.io.video as video_io

    monkeypatch.setattr(video_io, "MAX_FRAMES", 4)
    assert main(["stylize-video", str(clip), "-o", str(tmp_path / "o.mp4"), "--model", tiny_model, "-q"]) == 2
    line = _one_error_line(capsys)
    assert "6 frames to stylise; at most 4" in line and "--start/--duration" in line
    assert main(["stylize-video", str(clip), "-o", str(tmp_path / "o.mp4"), "--model", tiny_model, "-q",
                 "--duration", str(3 / 12)]) == 0  # a cut under the cap goes through


def test_a_truncated_mp4_is_a_clear_error_and_leaves_no_output(clip, tiny_model, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    assert main(["stylize-video", str(broken), "-o", str(tmp_path / "o.mp4"), "--model", tiny_model, "-q"]) == 3
    assert "truncated" in _one_error_line(capsys)
    assert not any(p.name.startswith("o.mp4") for p in tmp_path.iterdir())


def test_bad_cut_and_output_options(clip, tiny_model, tmp_path):
    with pytest.raises(InvalidOptionError, match="--every"):
        api.stylize_video(clip, tmp_path / "o.mp4", options={"model": tiny_model}, cut=api.VideoCut(every=0))
    with pytest.raises(InvalidOptionError, match=".mp4"):
        api.stylize_video(clip, tmp_path / "o.mkv", options={"model": tiny_model})
    with pytest.raises(InvalidOptionError, match="cut video files"):
        api.stylize_video(data_dir() / "video" / "butterfly", tmp_path / "f", options={"model": tiny_model},
                          cut=api.VideoCut(start=1.0))
    with pytest.raises(InvalidImageError, match="past its end|no frames"):
        api.stylize_video(clip, tmp_path / "late.mp4", options={"model": tiny_model}, cut=api.VideoCut(start=30.0))
    assert not (tmp_path / "late.mp4").exists()


def test_temporal_options_are_checked_with_the_fix(tiny_model, tmp_path, clip, capsys):
    assert main(["stylize-video", str(clip), "-o", str(tmp_path / "o.mp4"), "--model", tiny_model, "--temporal", "loss"]) == 2
    assert "--temporal blend" in _one_error_line(capsys)
    assert main(["stylize-video", str(clip), "-o", str(tmp_path / "o.mp4"), "--model", tiny_model, "--flow", "dis-robst"]) == 2
    assert "dis-robust" in _one_error_line(capsys)


def test_eval_video_prints_a_table_and_writes_a_plot(clip, tiny_model, tmp_path, capsys):
    runs = []
    for mode in ("none", "blend"):
        runs.append(tmp_path / f"{mode}.mp4")
        api.stylize_video(clip, runs[-1], options={"model": tiny_model}, temporal={"temporal": mode})
    capsys.readouterr()
    plot = tmp_path / "errors.png"
    assert main(["eval-video", str(clip), *map(str, runs), "--plot", str(plot), "--long-term", "2", "-q"]) == 0
    table = capsys.readouterr().out
    assert "none.mp4" in table and "blend.mp4" in table and "1.00x" in table and plot.is_file()
    assert main(["eval-video", str(clip), *map(str, runs), "--json"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    none, blend = (report[str(r)] for r in runs)
    assert len(none["short"]) == 5 and blend["mean_short"] < none["mean_short"]
    short = tmp_path / "short.mp4"
    api.stylize_video(clip, short, options={"model": tiny_model}, cut=api.VideoCut(duration=3 / 12))
    assert main(["eval-video", str(clip), str(short)]) == 2
    assert "fewer frames" in _one_error_line(capsys)


# ------------------------------------------------------------------ the temporal layer

def _errors(sources, results):
    return [pair_warping_error(sources[i - 1], sources[i], results[i - 1], results[i]) for i in range(1, len(results))]


def test_blend_lowers_the_warping_error_of_a_one_pass_method(butterfly, tiny_model):
    prepared = ff.prepare(None, ff.Options(model=tiny_model, precision="fp32"))
    runs = {}
    for mode in ("none", "blend"):
        layer = Temporal(prepared, TemporalOptions(temporal=mode), takes_loss=False)
        outs = []
        for frame in butterfly:
            result, _ = layer.step(frame)
            outs.append(result.image)
            layer.remember(frame, result.image)
        runs[mode] = outs
    none, blend = sum(_errors(butterfly, runs["none"])), sum(_errors(butterfly, runs["blend"]))
    assert blend < 0.6 * none
    torch.testing.assert_close(runs["blend"][0], runs["none"][0])  # the first frame is the method's own


def test_blend_does_not_smear_a_moving_object(tiny_model):
    """A bright square jumps 20 px on a flat background: where the square is now, the result is the
    method's own output for this frame, not a ghost of the previous one."""
    background = torch.full((1, 3, 64, 96), 0.3)
    a, b = background.clone(), background.clone()
    a[..., 20:44, 20:44] = 0.9
    b[..., 20:44, 40:64] = 0.9
    prepared = ff.prepare(None, ff.Options(model=tiny_model, precision="fp32"))
    layer = Temporal(prepared, TemporalOptions(temporal="blend", blend_strength=1.0), takes_loss=False)
    first, _ = layer.step(a)
    layer.remember(a, first.image)
    second, _ = layer.step(b)
    own = prepared(b).image
    uncovered = (slice(None), slice(None), slice(22, 42), slice(22, 38))  # square in a, background in b
    to_own = float((second.image - own)[uncovered].abs().mean())
    to_ghost = float((second.image - first.image)[uncovered].abs().mean())  # the square's old stylisation
    assert to_own < 0.25 * to_ghost  # measured 0.045 vs 0.27


def test_loss_mode_warm_starts_and_lowers_the_warping_error(butterfly):
    options = optimization.Options(encoder="tiny", size=96, scale_iterations=(20,), precision="fp32")
    prepared = optimization.prepare(butterfly[0].flip(-2).contiguous(), options)
    runs, steps = {}, {}
    for mode in ("none", "loss"):
        layer = Temporal(prepared, TemporalOptions(temporal=mode, warm_iterations=10, long_term=(1, 2)),
                         takes_loss=True)
        outs, counts = [], []
        for frame in butterfly[:4]:
            result, facts = layer.step(frame)
            outs.append(result.image)
            counts.append(result.steps)
            layer.remember(frame, result.image)
        runs[mode], steps[mode] = outs, counts
    assert steps["loss"] == [20, 10, 10, 10] and steps["none"] == [20] * 4
    assert sum(_errors(butterfly[:4], runs["loss"])) < 0.5 * sum(_errors(butterfly[:4], runs["none"]))


# ------------------------------------------------------------------ resume

def _cli_video(args: list[str]) -> list[str]:
    return [sys.executable, "-c", "import sys; from impasto.cli import main; sys.exit(main(sys.argv[1:]))", *args]


def test_a_killed_run_resumes_and_gives_the_frames_of_an_uninterrupted_one(tmp_path, butterfly):
    frames = tmp_path / "frames"
    for i, frame in enumerate(butterfly):
        save_image(frame, frames / f"{i:03d}.png")
    common = ["stylize-video", str(frames), str(data_dir() / "style" / sorted(os.listdir(data_dir() / "style"))[0]),
              "--method", "optimization", "--encoder", "tiny", "--size", "96", "--scale-iterations", "40",
              "--precision", "fp32", "--warm-iterations", "20", "-q"]
    whole = tmp_path / "whole"
    assert main([*common[:3], "-o", str(whole), *common[3:]]) == 0
    killed = tmp_path / "killed"
    env = {**os.environ, "IMPASTO_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(_cli_video([*common[:3], "-o", str(killed), *common[3:]]), env=env)
    deadline = time.monotonic() + 120
    while not (killed / "frame_00003.png").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert still_running, "the run finished before it could be killed; the test needs a slower run"
    done_before = sorted(p.name for p in killed.glob("frame_*.png"))
    assert 3 <= len(done_before) < len(butterfly)
    assert main([*common[:3], "-o", str(killed), *common[3:]]) == 0
    for name in sorted(p.name for p in whole.glob("frame_*.png")):
        torch.testing.assert_close(load_image(killed / name), load_image(whole / name), rtol=0, atol=0)


def test_multi_pass_refines_in_alternating_directions_and_resumes(tmp_path, butterfly):
    frames = tmp_path / "frames"
    for i, frame in enumerate(butterfly[:4]):
        save_image(frame, frames / f"{i:03d}.png")
    style = data_dir() / "style" / "vangogh_starry_night.jpg"
    options = {"encoder": "tiny", "size": 64, "scale_iterations": (8,), "precision": "fp32"}
    one = api.stylize_video(frames, tmp_path / "one", style, method="optimization", options=options,
                            temporal={"warm_iterations": 4})
    three = api.stylize_video(frames, tmp_path / "three", style, method="optimization", options=options,
                              temporal={"warm_iterations": 4, "passes": 3, "pass_iterations": 3})
    passes = [api.read_recipe(p)["pass"] for p in three.frames]
    assert passes == [2, 3, 3, 3]  # pass 2 runs backwards from the last frame, pass 3 forwards from the first
    assert not (tmp_path / "three" / ".sources").exists()
    assert len(three.warping_errors) == len(one.warping_errors) + 6
    a, b = load_image(three.frames[1]), load_image(one.frames[1])
    assert not torch.equal(a, b)
    # a finished multi-pass run is kept as it is when run again
    stamp = {p.name: p.stat().st_mtime_ns for p in three.frames}
    again = api.stylize_video(frames, tmp_path / "three", style, method="optimization", options=options,
                              temporal={"warm_iterations": 4, "passes": 3, "pass_iterations": 3})
    assert again.reused == 4 and {p.name: p.stat().st_mtime_ns for p in again.frames} == stamp
    # a run cancelled inside pass 3 continues there and ends with the frames of the uninterrupted run
    from impasto.errors import CancelledError
    from impasto.events import CancelToken

    token = CancelToken()
    stop_at = 4 * 2 + 2  # on_frame's count: pass 3, its second refinement

    def on_frame(i, n):
        if i == stop_at:
            token.cancel()

    with pytest.raises(CancelledError):
        api.stylize_video(frames, tmp_path / "stopped", style, method="optimization", options=options,
                          temporal={"warm_iterations": 4, "passes": 3, "pass_iterations": 3}, cancel=token,
                          on_frame=on_frame)
    stopped = sorted((tmp_path / "stopped").glob("frame_*.png"))
    assert [api.read_recipe(p)["pass"] for p in stopped] == [2, 3, 2, 1]  # stopped after refining frame 2
    api.stylize_video(frames, tmp_path / "stopped", style, method="optimization", options=options,
                      temporal={"warm_iterations": 4, "passes": 3, "pass_iterations": 3})
    for done, whole in zip(stopped, three.frames, strict=True):
        torch.testing.assert_close(load_image(done), load_image(whole), rtol=0, atol=0)
    with pytest.raises(InvalidOptionError, match="--temporal loss"):
        api.stylize_video(frames, tmp_path / "x", method="feedforward", temporal={"passes": 2})


def test_flows_are_estimated_once_and_kept_for_later_passes(tmp_path, butterfly, monkeypatch):
    import impasto.methods.video as video_method
    from impasto.io.flow import FlowCache

    frames = tmp_path / "frames"
    for i, frame in enumerate(butterfly[:4]):
        save_image(frame, frames / f"{i:03d}.png")
    calls = []
    real = video_method.estimate_flow
    monkeypatch.setattr(video_method, "estimate_flow", lambda a, b, m: calls.append(m) or real(a, b, m))
    options = {"encoder": "tiny", "size": 64, "scale_iterations": (4,), "precision": "fp32"}
    api.stylize_video(frames, tmp_path / "out", data_dir() / "style" / "vangogh_starry_night.jpg", method="optimization",
                      options=options, temporal={"warm_iterations": 2, "long_term": (1,), "passes": 3, "pass_iterations": 2})
    assert len(calls) == 6  # 3 neighbour pairs x 2 directions, all in the first pass; passes 2 and 3 read them back
    assert not (tmp_path / "out" / ".flow").exists()  # scratch removed once every frame is made
    cache = FlowCache(tmp_path / "cache")
    a, b = butterfly[0], butterfly[1]
    first = cache.get(a, b, "dis-fast", real)
    (next((tmp_path / "cache").glob("*.flo"))).write_bytes(b"damaged")
    torch.testing.assert_close(cache.get(a, b, "dis-fast", real), first)  # a damaged file is estimated again
    assert cache.key(a, b, "dis-fast") != cache.key(b, a, "dis-fast") != cache.key(a, b, "dis-medium")
