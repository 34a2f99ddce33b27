"""The benchmark harness's logic: statistics, ratios, comparison, JSON schema, plots.

Nothing here is timed; the tiny end-to-end run only checks the shape of what is recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.cli import compare, derive_ratios
from bench.stats import ratio, summarize
from conftest import ROOT


def test_summarize_median_and_spread():
    s = summarize([10.0, 12.0, 11.0, 30.0])
    assert s["median"] == 11.5 and s["min"] == 10.0 and s["max"] == 30.0 and s["n"] == 4
    assert s["spread"] == pytest.approx(20.0 / 11.5)
    with pytest.raises(ValueError):
        summarize([])
    assert ratio(1.0, 0.0) is None and ratio(3.0, 2.0) == 1.5


def _result(scenario, spec, frames, fps, rss, cpu_per_frame=0.01, size="64x48"):
    return {"scenario": scenario, "input": spec, "frames": frames, "size": size,
            "fps": summarize([fps]), "wall_s": summarize([frames / fps]),
            "cpu_s": summarize([frames * cpu_per_frame]), "peak_rss_mib": summarize([rss])}


def test_ratios_pair_cases_measured_on_the_same_input():
    results = {
        "transcode-floor@a": _result("transcode-floor", "a", 100, 200.0, 100.0),
        "passthrough@a": _result("passthrough", "a", 100, 190.0, 110.0, cpu_per_frame=0.0106),
        "transcode-floor@b": _result("transcode-floor", "b", 1000, 100.0, 101.0),
        "passthrough@b": _result("passthrough", "b", 1000, 120.0, 121.0),
    }
    ratios = derive_ratios(results)
    assert ratios["passthrough_vs_floor@a"] == pytest.approx(0.95)
    assert ratios["passthrough_vs_floor@b"] == pytest.approx(1.2)
    # time ratios, engine over floor: wall from fps, CPU over every thread
    assert ratios["passthrough_over_floor_wall_time@a"] == pytest.approx(200.0 / 190.0)
    assert ratios["passthrough_over_floor_cpu_time@a"] == pytest.approx(1.06)
    assert ratios["passthrough_rss_growth_1000_vs_100_frames"] == pytest.approx(1.1)
    # memory against length only between inputs of one frame size: across sizes it would be the size's
    results["passthrough@b"]["size"] = results["transcode-floor@b"]["size"] = "1280x720"
    assert not [k for k in derive_ratios(results) if "rss_growth" in k]


def test_model_ratios_engine_against_its_bounds_naive_and_dedup():
    results = {f"{name}@c": _result(name, "c", 240, fps, 100.0) for name, fps in [
        ("model-only", 3.0), ("io-floor", 800.0), ("upscale", 2.85), ("upscale-dedup", 3.6),
        ("naive-sequential", 2.5)]}
    ratios = derive_ratios(results)
    assert ratios["upscale_vs_slower_of_model_and_io@c"] == pytest.approx(0.95)  # model is slower
    assert ratios["upscale_vs_naive@c"] == pytest.approx(1.14)
    assert ratios["dedup_speedup@c"] == pytest.approx(3.6 / 2.85)
    # the engine's own run (run_s, without the model load and checks) when the child gives it:
    # model-only's set-up is untimed as well
    results["upscale@c"]["run_s"] = 240 / 2.9
    assert derive_ratios(results)["upscale_vs_slower_of_model_and_io@c"] == pytest.approx(2.9 / 3.0)


def test_run_keeps_what_the_ratios_need_from_each_child(monkeypatch):
    # the children report TFLOPS (model-only) and the run's own time without set-up (run_s):
    # the collected results must keep them, or the ratios fall back or vanish
    import argparse

    import bench.cli as cli

    def child(name, path, settings):
        result = {"frames": 48, "fps": 10.0, "wall_s": 4.8, "cpu_s": 1.0, "peak_rss_mib": 100.0}
        if name == "model-only":
            result.update(tflops=100.0, peak_tflops_fp16=1000.0)
        if name == "upscale":
            result.update(run_s=2.0, stages=[{"name": "upscale", "busy_s": 1.9, "workers": 1}])
        return result

    monkeypatch.setattr(cli, "run_child", child)
    monkeypatch.setattr(cli, "machine", lambda: {})
    monkeypatch.setattr(cli, "resolve", lambda spec: spec)
    monkeypatch.setattr(cli, "frame_size", lambda path: "64x48")
    options = ("encoder preset crf pipeline model device precision batch ring flow window overlap convert "
               "compile compile_mode cuda_graphs decode opencv_threads").split()
    args = argparse.Namespace(input=["x"], scenarios=["model-only", "upscale"], warmup=0, repeats=1,
                              **dict.fromkeys(options))
    doc = cli.run(args)
    assert doc["results"]["upscale@x"]["run_s"] == 2.0
    assert doc["ratios"]["model_tflops_share_of_peak@x"] == pytest.approx(0.1)
    assert doc["ratios"]["upscale_thread_busy_share@x"] == pytest.approx(0.95)  # 1.9 of 2.0, not of 4.8


def test_segment_ratios_against_single_pass_and_the_segment_length():
    results = {f"{name}@d": {**_result(name, "d", 1000, 100.0, 90.0), "wall_s": summarize([wall]),
                             "output_bytes": size}
               for name, wall, size in [("single-pass", 10.0, 1000), ("segmented-10s", 12.5, 1100),
                                        ("segmented-60s", 10.5, 1010)]}
    results["kill-resume@d"] = {**_result("kill-resume", "d", 1000, 50.0, 90.0),
                                "lost_frames": 720, "segment_frames": 1440}
    ratios = derive_ratios(results)
    assert ratios["segmented_10s_time_overhead@d"] == pytest.approx(1.25)
    assert ratios["segmented_10s_size_ratio@d"] == pytest.approx(1.1)
    assert ratios["segmented_60s_time_overhead@d"] == pytest.approx(1.05)
    assert ratios["kill_lost_frames_vs_segment@d"] == pytest.approx(0.5)


def test_compare_reports_relative_change():
    a = {"results": {"x@i": _result("x", "i", 10, 100.0, 1)}, "ratios": {"r": 0.9}}
    b = {"results": {"x@i": _result("x", "i", 10, 150.0, 1), "y@i": _result("y", "i", 10, 5.0, 1)},
         "ratios": {"r": 1.1}}
    text = compare(a, b)
    assert "x@i" in text and "1.500" in text
    assert "y@i" in text and "n/a" in text
    assert "0.9" in text and "1.1" in text
    assert "differ" not in text
    a["settings"], b["settings"] = {"opencv_threads": 0, "crf": 23}, {"opencv_threads": 1, "crf": 23}
    assert compare(a, b).splitlines()[0] == "settings differ: opencv_threads: 0 → 1"


def bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, says", [
    (("model-only", "--precision", "fp64"), "--precision must be auto, fp32, fp16 or bf16, got 'fp64'"),
    (("model-only", "--batch", "-2"), "--batch must be 0 (auto) to 256"),  # used to spin for ever
    (("vsr-model-only", "--window", "4", "--overlap", "8"), "--overlap must be >= 0 and less than half"),
    (("decode", "--repeats", "0"), "--repeats must be >= 1"),
    (("single-pass", "--pipeline", "nosuch"), "unknown stage 'nosuch'"),
    (("io-floor", "--model", "nosuch"), "unknown model 'nosuch'"),
    (("model-only", "--device", "cuda:7"), "device cuda:7 was asked for"),
    (("decode", "--input", "0x90:10"), "even width and height"),
    (("decode", "--input", "4x:10"), "unknown size '4x'"),
    (("kill-resume",), "kill-resume needs an input longer than 2.5 segments"),
])
def test_settings_a_case_would_refuse_are_refused_before_any_case_runs(tmp_path, args, says):
    if "--input" not in args:
        args += ("--input", "64x48:24")
    r = bench("decode", *args, "--repeats", "1", "--warmup", "0", "--out", str(tmp_path / "r.json")) \
        if args[0] != "decode" else bench(*args, "--out", str(tmp_path / "r.json"))
    assert r.returncode != 0 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "decode@" not in r.stderr  # nothing ran
    assert not (tmp_path / "r.json").exists()


def test_a_failing_case_says_why_in_one_line_and_writes_no_results(tmp_path):
    out = tmp_path / "r.json"
    r = bench("decode", "pipeline", "--pipeline", "test.fail-map:at=3", "--input", "64x48:24",
              "--repeats", "1", "--warmup", "0", "--out", str(out), env={"ENGINE_STAGE_MODULES": "engine.testing"})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "bench: scenario pipeline on synthetic-64x48-24.mp4 failed: stage 'test.fail-map' at frame seq 3" in r.stderr
    assert "bench: 1 of 2 runs had finished; no results file is written" in r.stderr
    assert not out.exists()


def test_an_existing_file_wins_over_a_spec_of_its_name(tmp_path, monkeypatch):
    from bench.inputs import resolve

    clip = tmp_path / "anime-720p-mine.mp4"  # was taken for the 720p bench clip
    clip.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve("anime-720p-mine.mp4") == clip


def test_tiny_run_writes_schema_and_plots(tmp_path):
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "decode", "transcode-floor", "passthrough",
         "--input", "64x48:24", "--repeats", "1", "--warmup", "0", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert {"created", "machine", "settings", "results", "ratios"} <= set(doc)
    assert {"cores", "av", "ffmpeg", "gpus"} <= set(doc["machine"])
    for key in ("decode@64x48:24", "transcode-floor@64x48:24", "passthrough@64x48:24"):
        r = doc["results"][key]
        assert r["frames"] == 24
        assert r["fps"]["median"] > 0 and r["peak_rss_mib"]["median"] > 0
    stages = doc["results"]["passthrough@64x48:24"]["stages"]
    assert [s["name"] for s in stages] == ["decode", "encode"]
    assert all({"busy_s", "wait_in_s", "wait_out_s"} <= set(s) for s in stages)
    assert "passthrough_vs_floor@64x48:24" in doc["ratios"]
    for suffix in ("fps", "stages"):
        png = tmp_path / f"run-{suffix}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_say_what_each_case_ran_at_and_read(tmp_path):
    """The file's settings are the options the cases read (a vsr run listed the upscale model),
    cpu_s covers the timed part as wall_s does (vsr-deform-cost gave the whole scenario's CPU
    time, 6× its wall time on 2 cores), and size is what the case ran at (diffusion-vsr resizes)."""
    import os

    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "vsr-deform-cost", "diffusion-vsr-tiny", "--input", "64x48:4",
         "--device", "cpu", "--repeats", "1", "--warmup", "0", "--out", str(out), "--no-plots"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "ENGINE_BENCH_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert (tmp_path / "cache" / "diffusion-vsr-tiny").is_dir()  # not in the checkout
    assert {"device", "precision"} <= set(doc["settings"]) and not {"model", "encoder", "pipeline"} & set(doc["settings"])
    tiny = doc["results"]["diffusion-vsr-tiny@64x48:4"]
    assert tiny["size"] == tiny["settings"]["input"] == "80x48"
    assert doc["results"]["vsr-deform-cost@64x48:4"]["size"] == "64x48"
    for r in doc["results"].values():
        assert r["cpu_s"]["median"] <= r["wall_s"]["median"] * (os.cpu_count() or 1) * 1.5 + 0.05, r["scenario"]
