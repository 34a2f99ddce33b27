"""Stage registry and pipeline specs: names, typed options, runner keys, TOML, clear errors."""

from __future__ import annotations

import pytest

import engine.testing  # noqa: F401 - registers the test.* stages
from engine.errors import UserError
from engine.registry import available_stages, parse_pipeline


def test_builtin_and_test_stages_are_registered_by_name():
    stages = available_stages()
    assert stages["resize"].kind == "map"
    assert stages["temporal-denoise"].kind == "window"
    assert stages["test.batch-add"].kind == "batch"


def test_spec_options_are_converted_to_declared_types():
    resize, denoise, batch = parse_pipeline(
        "resize:width=640:interpolation=lanczos:workers=3:queue=2,temporal-denoise:radius=2,"
        "test.batch-add:batch_size=8")
    assert (resize.name, resize.options, resize.workers, resize.queue) == (
        "resize", {"width": 640, "interpolation": "lanczos"}, 3, 2)
    assert denoise.options == {"radius": 2} and denoise.build().overlap == 2
    assert batch.build().batch_size == 8


@pytest.mark.parametrize("text,needle", [
    ("upscale-everything", "unknown stage 'upscale-everything'; choose one of:"),
    ("resize:size=3", "has no option 'size'; valid options: width, height"),
    ("resize:width", "expected key=value"),
    ("resize:width=1.5", "not a valid int"),
    ("resize:interpolation=nearest", "choose one of: area, linear, cubic, lanczos"),
    ("resize", "give width, height or scale"),
    ("resize:width=10:workers=0", "workers must be >= 1"),
    ("temporal-denoise:workers=2", "must run with workers=1"),
    ("dedup:workers=2", "sees frames in order (each against the one before) and must run with workers=1"),
    ("test.window-sum:window_size=4:overlap=2", "window_size must exceed 2 × overlap"),
])
def test_bad_specs_fail_before_anything_runs(text, needle):
    with pytest.raises(UserError) as info:
        parse_pipeline(text)
    assert needle in str(info.value)


def test_values_with_colons_and_device_lists_on_the_command_line():
    # ":" separates options and "," stages: a value may still hold ":" (device=cuda:1), and
    # a device list is joined by "+"
    from engine.inference import device_list

    (spec,) = parse_pipeline("upscale:device=cuda:1:batch=2")
    assert (spec.options["device"], spec.options["batch"]) == ("cuda:1", 2)
    resize, up = parse_pipeline("resize:scale=2,upscale:device=cuda:0+cuda:1")
    assert up.options["device"] == "cuda:0+cuda:1" and resize.options == {"scale": 2.0}
    assert device_list("cuda:0+cuda:1") == ["cuda:0", "cuda:1"] == device_list("cuda:0,cuda:1")
    with pytest.raises(UserError, match="expected key=value, got 'width'"):
        parse_pipeline("resize:width")  # nothing before it to continue


def test_none_and_empty_mean_no_stage():
    assert parse_pipeline("none") == [] and parse_pipeline("") == []


def test_toml_pipeline(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[[stage]]\nname = "resize"\nscale = 0.5\nworkers = 2\n\n'
                    '[[stage]]\nname = "test.add"\nvalue = 3\n')
    specs = parse_pipeline(str(path))
    assert [(s.name, s.options, s.workers) for s in specs] == [
        ("resize", {"scale": 0.5}, 2), ("test.add", {"value": 3}, 1)]


@pytest.mark.parametrize("content,needle", [
    (None, "pipeline file not found"),
    ("[[stage]]\nwidth = 3\n", "has no name"),
    ("[[stage\n", "cannot read pipeline file"),
    # these ran as a plain transcode, exit 0
    ('[[stages]]\nname = "dedup"\n', "unknown key 'stages'"),
    ("", "has no \\[\\[stage\\]\\] table"),
])
def test_bad_toml(tmp_path, content, needle):
    path = tmp_path / "p.toml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=needle):
        parse_pipeline(str(path))


@pytest.mark.parametrize("options", ["width=32:scale=2", "height=32:scale=0.5"])
def test_resize_refuses_a_size_and_a_scale_together(options):
    with pytest.raises(UserError, match="give scale or width/height, not both"):  # scale won, silently
        parse_pipeline(f"resize:{options}")
