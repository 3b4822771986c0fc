"""The one validation layer: every Options field's type and range, runaway schedules, memory, thin images, paths."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import torch

from impasto import api
from impasto.errors import ImageSizeError, InvalidOptionError
from impasto.methods import optimization
from impasto.ops.geometry import scale_schedule
from impasto.options import Range, field_range
from impasto.training.decoder import DecoderOptions
from impasto.training.feedforward import TrainOptions
from impasto.validation import check_fields, check_memory, check_output, numeric_fields_without_range

OPTIONS = {**{name: module.Options for name, module in api.METHODS.items()},
           "train decoder": DecoderOptions, "train feedforward": TrainOptions}
BAD_VALUES = [0, -1, -1e-9, math.nan, math.inf, -math.inf, 1e30, 10**30]


def _numeric_fields(cls: type) -> list[tuple[str, type, bool]]:
    """(name, scalar type, is_tuple) of every numeric field."""
    found = []
    for f in dataclasses.fields(cls):
        ann = typing.get_type_hints(cls)[f.name]
        if typing.get_origin(ann) in (typing.Union, __import__("types").UnionType):
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        is_tuple = typing.get_origin(ann) is tuple
        if is_tuple:
            args = typing.get_args(ann)
            ann = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if ann in (int, float):
            found.append((f.name, ann, is_tuple))
    return found


@pytest.mark.parametrize("label", OPTIONS)
def test_every_numeric_option_declares_its_range(label):
    assert numeric_fields_without_range(OPTIONS[label]) == []
    check_fields(OPTIONS[label]())  # the defaults are valid


CASES = [(label, name, kind, is_tuple, value) for label, cls in OPTIONS.items()
         for name, kind, is_tuple in _numeric_fields(cls) for value in BAD_VALUES]


@pytest.mark.parametrize(("label", "name", "kind", "is_tuple", "value"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[4]!r}" for c in CASES])
def test_numeric_options_at_the_edges_are_refused_by_name_or_accepted_in_range(label, name, kind, is_tuple, value):
    """0, negative, NaN, inf and huge for every numeric option: a typed error naming the option, or in range."""
    cls = OPTIONS[label]
    given = (value,) if is_tuple else value
    if kind is int and isinstance(value, float) and math.isfinite(value) and value == int(value):
        given = (int(value),) if is_tuple else int(value)  # the integer the command line would give
    options = dataclasses.replace(cls(), **{name: given})
    rng: Range = field_range(next(f for f in dataclasses.fields(cls) if f.name == name))
    scalar = given[0] if is_tuple else given
    right_type = isinstance(scalar, int) if kind is int else isinstance(scalar, (int, float))
    acceptable = right_type and math.isfinite(scalar) and scalar in rng
    if acceptable:
        check_fields(options)
        return
    with pytest.raises(InvalidOptionError) as info:
        check_fields(options)
    message = str(info.value)
    assert "--" + name.replace("_", "-") in message
    assert rng.text() in message


@pytest.mark.parametrize(("value", "message"), [("12", r"must be an integer in \[1, 100000\], got '12'"),
                                                (True, "must be an integer"), (1.5, "must be an integer .*, got 1.5"),
                                                (None, "must be an integer")])
def test_wrong_types_are_refused(value, message):
    with pytest.raises(InvalidOptionError, match=message):
        check_fields(dataclasses.replace(optimization.Options(), iterations=value))


def test_range_text_and_membership():
    assert Range(0, 1, high_open=True).text() == "in [0, 1)"
    assert Range(0, None, low_open=True).text() == "> 0"
    assert 0.999 in Range(0, 1, high_open=True) and 1 not in Range(0, 1, high_open=True)
    assert 0 not in Range(0, None, low_open=True) and 0 in Range(0, 5)


@pytest.mark.parametrize(("factor", "min_side"), [(1.0000001, 32), (1.01, 32), (math.sqrt(2), 0), (2.0, -5), (1.2, 1)])
def test_scale_schedule_always_ends(factor, min_side):
    sizes = scale_schedule(512, min_side, factor)
    assert sizes[-1] == 512 and len(sizes) < 700 and sizes == sorted(set(sizes))


@pytest.mark.parametrize(("changes", "message"), [
    ({"scale_factor": 1.0000001}, r"--scale-factor \(scale_factor\) must be in \[1.1, 8\], got 1"),
    ({"min_size": 0}, r"--min-size \(min_size\) must be in \[16, 16384\], got 0"),
    ({"min_size": -3}, r"--min-size \(min_size\) must be in \[16, 16384\]"),
    ({"scale_factor": 1.1, "min_size": 16, "size": 4096}, "more than 12 scales; raise --scale-factor"),
])
def test_runaway_schedules_are_refused_before_work(changes, message):
    content = torch.rand(1, 3, 60, 80)
    with pytest.raises(InvalidOptionError, match=message):
        optimization.run(content, torch.rand(1, 3, 32, 32), optimization.Options(encoder="tiny", **changes))


def test_memory_estimate_refuses_with_the_largest_size_that_fits(monkeypatch):
    monkeypatch.setenv("IMPASTO_MEMORY_LIMIT_MB", "2000")
    with pytest.raises(InvalidOptionError, match=r"--size 20000 would need about .* GB of memory, but 2.0 GB is available; "
                                                 r"the largest --size that fits is about (\d+)") as info:
        check_memory("--method x", "--size", 20000, [20000 * 15000], 2600)
    fits = int(str(info.value).rsplit("about ", 1)[1])
    check_memory("--method x", "--size", fits, [fits * fits * 0.75], 2600)  # really fits


@pytest.mark.parametrize("method", list(api.METHODS))
def test_every_method_refuses_a_huge_size_before_any_work(method, monkeypatch):
    """--size 20000 (a typo) is refused with the largest size that fits, before weights load."""
    monkeypatch.setenv("IMPASTO_MEMORY_LIMIT_MB", "3000")
    opts = {"size": 16000}
    if method == "optimization":
        opts["encoder"] = "tiny"
    if method == "feedforward":
        opts["tile_size"] = 8192  # untiled work per tile is what costs memory
    with pytest.raises(InvalidOptionError, match="the largest --size that fits is about"):
        api.stylize(torch.rand(1, 3, 40, 60), None if method == "feedforward" else torch.rand(1, 3, 40, 40),
                    method=method, options=opts)


def test_style_scale_counts_in_the_memory_estimate(monkeypatch):
    monkeypatch.setenv("IMPASTO_MEMORY_LIMIT_MB", "3000")
    opts = optimization.Options(encoder="tiny", size=512, style_scale=16.0, iterations=1)
    with pytest.raises(InvalidOptionError, match="would need about"):
        optimization.run(torch.rand(1, 3, 60, 80), torch.rand(1, 3, 40, 40), opts)


@pytest.mark.parametrize("method", list(api.METHODS))
def test_thin_images_are_refused_with_the_methods_minimum(method):
    strip = torch.rand(1, 3, 1, 300)
    opts = {"size": 300}
    if method == "optimization":
        opts["encoder"] = "tiny"
    with pytest.raises(ImageSizeError, match=rf"content image is 300x1 px as processed, but --method {method} needs at least 16 px"):
        api.stylize(strip, None if method == "feedforward" else torch.rand(1, 3, 40, 40), method=method, options=opts)


def test_a_wide_banner_drops_the_coarse_scales_it_cannot_have():
    plan = optimization.scale_plan(optimization.Options(), 26, 520)  # 20:1 at 512: 256 px would be 13 px high
    assert [size for size, _ in plan] == [(18, 362), (26, 512)]  # 256 px is left out
    assert sum(n for _, n in plan) == optimization.Options().iterations
    plan = optimization.scale_plan(optimization.Options(), 200, 300)
    assert len(plan) == 3


def test_thin_style_image_names_the_style(tmp_path):
    opts = optimization.Options(encoder="tiny", size=64, iterations=1)
    with pytest.raises(ImageSizeError, match="style image 2 is .* needs at least 16 px"):
        optimization.run(torch.rand(1, 3, 60, 80), [torch.rand(1, 3, 40, 40), torch.rand(1, 3, 2, 400)], opts)


def test_outputs_never_replace_inputs(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"x")
    folder = tmp_path / "frames"
    folder.mkdir()
    with pytest.raises(InvalidOptionError, match=r"-o .*photo.jpg is the content image .*photo.jpg; .*--overwrite"):
        check_output(photo, [("content image", photo)])
    with pytest.raises(InvalidOptionError, match="is the content image"):  # another spelling of the same file
        check_output(tmp_path / "." / "photo.jpg", [("content image", str(photo))])
    with pytest.raises(InvalidOptionError, match="is a folder; give a file name"):
        check_output(folder, [("content image", photo)])
    with pytest.raises(InvalidOptionError, match="is the input frames"):
        check_output(folder, [("input frames", folder)], folder=True)
    with pytest.raises(InvalidOptionError, match="is inside the input frames"):
        check_output(folder / "styled", [("input frames", folder)], folder=True)
    check_output(tmp_path / "out.png", [("content image", photo), ("style image 1", None)])
    check_output(photo, [("content image", photo)], overwrite=True)
