"""Encoders run with the threading chosen per codec (engine/encoders.py), read back from the
encoder's own output, not from our variables."""

from __future__ import annotations

import json
import re

import pytest

from conftest import run_engine
from engine.sink import encoder_settings


def x264_options(path) -> dict[str, str]:
    """The settings x264 wrote into its stream's SEI ("... options: threads=3 ...")."""
    data = path.read_bytes()
    match = re.search(rb"options: ([^\0]+)", data)
    assert match, "no x264 settings SEI in the output"
    return dict(tok.split("=", 1) for tok in match.group(1).decode().split() if "=" in tok)


@pytest.mark.parametrize("pipeline", ["none", "resize:width=96:height=64"])
def test_x264_encodes_on_frame_threads_not_slices(clip, tmp_path, pipeline):
    out, report = tmp_path / "out.mp4", tmp_path / "report.json"
    result = run_engine("stream", clip(frames=24, width=128, height=96), out, "--encoder", "x264",
                        "--preset", "ultrafast", "--pipeline", pipeline, "--report", report)
    assert result.returncode == 0, result.stderr
    options = x264_options(out)
    # sliced threads (PyAV's default SLICE) cost ~12 % against frame threads: issue 18
    assert options["sliced_threads"] == "0"
    assert "slices" not in options or options["slices"] == "1"
    recorded = json.loads(report.read_text())["encoder"]
    assert recorded["thread_type"] == "FRAME"
    assert recorded["settings"]["sliced_threads"] == options["sliced_threads"]
    assert recorded["settings"]["threads"] == options["threads"]


@pytest.mark.parametrize("encoder,ext,thread_type", [("prores", ".mov", "AUTO"), ("ffv1", ".mkv", "SLICE")])
def test_report_records_encoder_threading(clip, tmp_path, encoder, ext, thread_type):
    out, report = tmp_path / f"out{ext}", tmp_path / "report.json"
    result = run_engine("stream", clip(frames=6), out, "--encoder", encoder, "--report", report)
    assert result.returncode == 0, result.stderr
    recorded = json.loads(report.read_text())["encoder"]
    assert recorded["codec"] in ("prores_ks", "ffv1") and recorded["thread_type"] == thread_type


def test_encoder_settings_parses_the_sei_text():
    packet = b"\x00\x00\x01\x06\x05x264 - core 165 - options: cabac=0 threads=3 lookahead_threads=1 " \
             b"sliced_threads=0 nr=0\x00\x80rest"
    assert encoder_settings(packet) == {"threads": "3", "lookahead_threads": "1", "sliced_threads": "0"}
    assert encoder_settings(b"no sei here") == {}
    x265 = b"x265 (build 216) - options: cpuid=1111039 frame-threads=2 no-wpp pmode no-pme crf=20.0\x00"
    assert encoder_settings(x265) == {"frame-threads": "2", "wpp": "0", "pmode": "1", "pme": "0", "crf": "20.0"}


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_x265s_settings_are_reported_in_every_container(clip, tmp_path, ext):
    # into .mp4 (global headers) x265's settings are in the extradata, not the first packet
    out, report = tmp_path / f"out{ext}", tmp_path / "report.json"
    result = run_engine("stream", clip(frames=6), out, "--encoder", "x265", "--preset", "ultrafast",
                        "--report", report)
    assert result.returncode == 0, result.stderr
    settings = json.loads(report.read_text())["encoder"]["settings"]
    assert settings["frame-threads"].isdigit() and settings["rc"] == "crf" and "wpp" in settings


def test_one_preset_name_works_for_x264_and_nvenc():
    """`--preset ultrafast` failed NVENC's open ('Error setting option preset'), so `auto`
    skipped the GPU encoder for a name; p1..p7 failed x264's."""
    from engine.encoders import ENCODERS, preset_for

    assert preset_for(ENCODERS["h264_nvenc"], "ultrafast") == ("p1", "--preset ultrafast is p1 for h264_nvenc")
    assert preset_for(ENCODERS["h264_nvenc"], "p6")[0] == "p6"
    assert preset_for(ENCODERS["x264"], "p2") == ("superfast", "--preset p2 is superfast for libx264")
    assert preset_for(ENCODERS["x265"], None) == ("medium", None)
    # the scales meet at the defaults, both ways
    assert preset_for(ENCODERS["h264_nvenc"], "medium")[0] == ENCODERS["h264_nvenc"].default_preset == "p5"
    assert preset_for(ENCODERS["x264"], "p5")[0] == ENCODERS["x264"].default_preset == "medium"
    assert preset_for(ENCODERS["hevc_nvenc"], "llhq") == ("llhq", None)  # NVENC's own other names pass


def test_an_encoder_that_would_not_open_keeps_its_first_reason(monkeypatch):
    from engine import encoders

    reasons = iter(["Cannot load libcuda.so.1", "Operation not permitted", None])
    monkeypatch.setattr(encoders, "_failures", {})
    monkeypatch.setattr(encoders, "_try_open", lambda *args: next(reasons))
    assert encoders.try_open("h264_nvenc", "yuv420p", {"preset": "p5"}) == "Cannot load libcuda.so.1"
    assert encoders.try_open("h264_nvenc", "yuv420p", {"preset": "p5"}) == "Cannot load libcuda.so.1"
    assert encoders.try_open("h264_nvenc", "yuv420p", {"preset": "p5"}) is None  # tried again: it opens now


def test_nvenc_quality_and_lossless_options(monkeypatch):
    """NVENC's cq is a quality target only with no bitrate (its default, 2 Mb/s, capped it), and
    its cq 0 means "automatic": --crf 0 is its lossless tune. Opening NVENC needs its hardware
    (the H100/H200 have none), so the options are checked as they would be handed to it."""
    from engine import encoders

    monkeypatch.setattr(encoders, "try_open", lambda *a, **k: None)
    choice = encoders.choose_encoder("h264_nvenc", ".mp4", 8, crf=23)
    assert (choice.options["cq"], choice.options["b"]) == ("23", "0")
    lossless = encoders.choose_encoder("hevc_nvenc", ".mkv", 10, crf=0, source_pix_fmt="yuv420p10le")
    assert lossless.options.get("tune") == "lossless" and "cq" not in lossless.options


def test_an_nvenc_only_preset_is_not_dropped_on_another_encoder(monkeypatch):
    """`--preset hq` with auto on a machine without NVENC silently made ProRes in a .mov."""
    from engine import encoders
    from engine.errors import UserError

    real = encoders.try_open
    monkeypatch.setattr(encoders, "try_open", lambda codec, *a, **k: (
        "h264_nvenc failed to open: Cannot load libcuda.so.1" if codec.endswith("_nvenc") else real(codec, *a, **k)))
    with pytest.raises(UserError, match="x264 has no preset 'hq' \\(NVENC's own name") as err:
        encoders.choose_encoder("auto", ".mov", 8, preset="hq")
    assert "prores has no preset 'hq'" in str(err.value)
    assert encoders.choose_encoder("auto", ".mov", 8, preset="p4").name == "x264"  # the shared scale works
