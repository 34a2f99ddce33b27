"""tools/bench_gpu.sh, checked without a GPU: every part it names runs, an unknown one is refused,
and every `python -m bench` argument list it would run (its BENCH_GPU_PLAN=1 output) is one the
bench accepts, so that a short GPU lease is not spent on a typo."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

import bench.cli
from bench.inputs import MEDIA, REAL_720P, SYNTHETIC

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "bench_gpu.sh"
PARTS = re.search(r'^PARTS="([^"]+)"', SCRIPT.read_text(), re.M).group(1).split()
PENDING = ("vsr", "diffusion", "caption")


def script(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(out), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def plans(tmp_path: Path, part: str, device: str = "cuda") -> list[list[str]]:
    proc = script(tmp_path, part, BENCH_GPU_PLAN="1", DEVICE=device)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line.removeprefix("plan:")) for line in proc.stdout.splitlines() if line.startswith("plan:")]


def test_every_part_is_handled_and_an_unknown_one_refused(tmp_path):
    assert set(PENDING) <= set(PARTS)
    for part in PARTS:
        assert plans(tmp_path, part), f"part {part} plans no bench run"
    for args in (("vsrr",), (), ("vsr", "extra")):
        proc = script(tmp_path, *args, BENCH_GPU_PLAN="1")
        assert proc.returncode == 2 and ("usage" in proc.stderr or "unknown part" in proc.stderr), args
    assert script(tmp_path, "e2e", DEVICE="cpu").returncode == 2  # no dry run of the old parts
    assert script(tmp_path, "vsr", DEVICE="gpu").returncode == 2


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_planned_bench_arguments_are_accepted(tmp_path, monkeypatch, device):
    import engine.inference

    ran = []

    def fake_run(args):
        ran.append(args)
        return {"results": {}, "ratios": {}}

    monkeypatch.setattr(bench.cli, "run", fake_run)
    if device == "cuda":  # the GPU this machine lacks: the rest of the checks still run
        monkeypatch.setattr(engine.inference, "resolve_device", lambda spec: None)
    parts = PENDING if device == "cpu" else PARTS
    for part in parts:
        outs = set()
        for args in plans(tmp_path, part, device):
            assert bench.cli.main(args) == 0, (part, args)
            parsed = ran[-1]
            assert parsed.no_plots, (part, args)
            if "--device" in args:  # caption's stages pick their own (the CPU)
                assert parsed.device in (device, "cpu"), (part, args)
            for spec in parsed.input:
                assert ((MEDIA / spec).is_file() or REAL_720P.fullmatch(spec)
                        or SYNTHETIC.fullmatch(spec)), (part, spec)
            assert parsed.out not in outs, f"{part}: two runs write {parsed.out}"
            outs.add(parsed.out)
            if device == "cpu":  # the dry run is the CPU's: tiny inputs, no full diffusion model
                assert not any(s in parsed.scenarios for s in ("diffusion-vsr-720p", "diffusion-vsr-704"))


def test_header_gives_each_pending_part_its_device_call():
    text = SCRIPT.read_text()
    carry = (ROOT / "tools" / "gpu_carry.sh").read_text()
    for part in PENDING:
        call = re.search(rf"run\(command='(bash tools/bench_gpu\.sh \"\$OUT\" {part})', carry=\['\.gpu/{part}'\]",
                         text)
        assert call and len(call.group(1)) <= 2000, part
        assert re.search(rf"^\s+{part}\) pkgs=", carry, re.M), f"gpu_carry.sh builds nothing for {part}"
