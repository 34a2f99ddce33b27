"""The device data path on the CPU: planes in, device tensors between model stages, pictures out.

The same code runs on CUDA (engine/inference.py); here the "device" is the CPU, so what is
checked is the routing and the arithmetic: which form pixels take between stages, how often
a device frame comes back to the host, and that the results match the host RGB path.
"""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

import engine.testing  # noqa: F401  (registers the test.* stages)
import stages  # noqa: F401  (registers upscale)
from engine import colour
from engine.frame import Frame
from engine.registry import make_spec
from engine.runner import Pipeline, RunnerOptions
from engine.source import VideoSource
from engine.testing import CollectingSink

MODEL = "animevideov3-x2"


def _run(path, pipeline: list[tuple[str, dict]], frames: int = 4):
    source = VideoSource(str(path), max_frames=frames)
    sink = CollectingSink()
    specs = [make_spec(name, options) for name, options in pipeline]
    try:
        pipe = Pipeline(source, specs, sink, RunnerOptions(join_timeout_s=30))
        result = pipe.run()
    finally:
        source.close()
    return sink.frames, result


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(float) - b.astype(float)) ** 2).mean()
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


def _settings(result, index: int) -> dict:
    return result.stages[index + 1].settings  # stages[0] is the source


def test_two_model_stages_pass_device_tensors_without_touching_the_host(clip):
    path = clip(frames=4, width=64, height=48)
    before = colour.TRANSFERS["device_to_host"]
    frames, result = _run(path, [("upscale", {"model": MODEL}), ("upscale", {"model": MODEL})])
    assert colour.TRANSFERS["device_to_host"] == before  # no frame came back between the models
    first, second = _settings(result, 0), _settings(result, 1)
    assert first["handoff"] == "device" and set(first["batches"]) == {"planes→device"}
    assert second["handoff"] == "array" and set(second["batches"]) == {"tensor→array"}
    assert [f.seq for f in frames] == [0, 1, 2, 3]
    assert all(f.data.shape == (192, 256, 3) and f.data.dtype == np.uint8 for f in frames)

    # Before a CPU stage the model hands host RGB straight from its runner: no tensor at all.
    before = colour.TRANSFERS["device_to_host"]
    _, result = _run(path, [("upscale", {"model": MODEL}), ("test.add", {"value": "0"})], frames=2)
    assert _settings(result, 0)["handoff"] == "array" and set(_settings(result, 0)["batches"]) == {"planes→array"}
    assert colour.TRANSFERS["device_to_host"] == before

    # A stage that wants host RGB after all (here a model stage told convert=host) brings each
    # frame back once, in Frame.data (the one place); the result differs from the all-device
    # path only by that rounding to 8 bits between the models (sharpened by the second model:
    # the house's model bar, 45 dB, not one level).
    host, result = _run(path, [("upscale", {"model": MODEL}), ("upscale", {"model": MODEL, "convert": "host"})])
    assert colour.TRANSFERS["device_to_host"] == before + 4
    assert set(_settings(result, 1)["batches"]) == {"array→array"}
    for a, b in zip(frames, host):
        assert _psnr(a.data, b.data) > 45


def test_planes_in_match_rgb_in_within_rounding(clip):
    """The runner on a decoded picture's planes computes what it computes on their exact RGB."""
    from engine.inference import InferenceRunner, InferenceSettings
    from engine.models.loader import load_model

    with av.open(str(clip(frames=4, width=64, height=48))) as container:
        picture = next(container.decode(video=0))
    planes = colour.Planes.of(picture)
    rgb = colour.yuv_to_rgb([torch.from_numpy(np.ascontiguousarray(a))[None] for a in planes.arrays],
                            planes.fmt, planes.spec)
    exact = (rgb[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    model = load_model(MODEL)
    runner = InferenceRunner(model, model.scale, InferenceSettings(device="cpu"))
    runner.open()
    (_, from_planes), = runner.submit([planes])
    (_, from_rgb), = runner.submit([exact])
    # the planes' RGB is kept in float, the array's rounded to 8 bits: the model's 45 dB bar
    assert _psnr(from_planes[0], from_rgb[0]) > 45
    # and the output as the encoder's pictures: the same image, converted on the device
    out = colour.PictureFormat.of("yuv420p", 1, 1)
    (_, pictures), = runner.submit([planes], output=out)
    assert pictures[0].format.name == "yuv420p" and pictures[0].colorspace == 1
    back = pictures[0].to_ndarray(format="rgb24", src_colorspace=1, src_color_range=1)
    assert np.abs(back.astype(int) - from_planes[0].astype(int)).mean() < 3  # 4:2:0 chroma only
    runner.close()


def test_device_frame_comes_back_once_and_keeps_its_depth():
    tensor = torch.rand(3, 6, 8)
    frame = Frame(seq=0, pts=0, time_base=Fraction(1, 24), _pixel_format="rgb48le")
    frame.set_tensor(tensor)
    assert frame.shape == (6, 8, 3) and frame.has_pixels and "tensor:cpu" in repr(frame)
    before = colour.TRANSFERS["device_to_host"]
    data = frame.data
    assert data.dtype == np.uint16 and frame.tensor is None
    assert frame.data is data and colour.TRANSFERS["device_to_host"] == before + 1
    assert np.abs(data.astype(float) / 65535 - tensor.permute(1, 2, 0).numpy()).max() <= 0.5 / 65535 + 1e-6
    duplicate = Frame(seq=1, pts=1, time_base=Fraction(1, 24))
    other = Frame(seq=2, pts=2, time_base=Fraction(1, 24))
    other.set_tensor(tensor)
    duplicate.reuse_pixels(other)
    assert duplicate.tensor is tensor


@pytest.mark.slow
def test_stream_upscale_device_path_matches_the_host_path(tmp_path):
    """`engine stream` with upscale: planes in, encoder pictures out, against convert=host."""
    from conftest import MEDIA, run_engine

    outputs = {}
    for convert in ("device", "host"):
        out, report = tmp_path / f"{convert}.mkv", tmp_path / f"{convert}.json"
        r = run_engine("stream", MEDIA / "anime-320x240.mp4", out, "--frames", "3", "--quiet",
                       "--encoder", "ffv1", "--report", report,
                       "--pipeline", f"upscale:model={MODEL}:convert={convert}", timeout=600)
        assert r.returncode == 0, r.stderr
        settings = next(s for s in json.loads(report.read_text())["stages"] if s["name"] == "upscale")["settings"]
        outputs[convert] = (settings, out)
    device, host = outputs["device"][0], outputs["host"][0]
    assert device["handoff"] == "picture" and list(device["batches"]) == ["planes→yuv420p"]
    assert host["handoff"] == "array" and list(host["batches"]) == ["array→array"]
    with av.open(str(outputs["device"][1])) as a, av.open(str(outputs["host"][1])) as b:
        pairs = list(zip(a.decode(video=0), b.decode(video=0)))
        assert len(pairs) == 3
        for x, y in pairs:
            for px, py in zip(x.planes, y.planes):
                pa = np.frombuffer(px, np.uint8).astype(int)
                pb = np.frombuffer(py, np.uint8).astype(int)
                diff = np.abs(pa - pb)
                # the host path rounds through swscale's fast conversions (nearest chroma in,
                # bilinear chroma out, truncating arithmetic); the device path is exact
                assert diff.mean() < 0.6, diff.mean()
                assert 10 * np.log10(255**2 / max(1e-9, (diff**2).mean())) > 40


class _HoldingRunner:
    """A stand-in device that finishes batches only when `hold` more have come (a deep ring)."""

    def __init__(self, hold: int):
        self.hold, self.pending, self.batch = hold, [], 1

    def submit(self, items, tag=None, output="array", deep=None):
        self.pending.append((tag, [i * 10 for i in items]))
        done, self.pending = (self.pending[:-self.hold], self.pending[-self.hold:]) if self.hold else (self.pending, [])
        return done

    def drain(self):
        done, self.pending = self.pending, []
        return done


def test_multi_device_runner_keeps_submission_order():
    from engine.inference import InferenceSettings, MultiDeviceRunner

    multi = MultiDeviceRunner(lambda: torch.nn.Identity(), 1, InferenceSettings(device="cpu"), ["cpu", "cpu"])
    multi.runners = [_HoldingRunner(hold=2), _HoldingRunner(hold=0)]  # device 0 lags behind device 1
    out = []
    for k in range(7):
        out += multi.submit([k], tag=k)
    assert [tag for tag, _ in out] == list(range(len(out)))  # nothing overtook
    out += multi.drain()
    assert [tag for tag, _ in out] == list(range(7)) and [o for _, o in out] == [[k * 10] for k in range(7)]
    assert multi._done == {}


def test_two_fake_devices_spread_frames_and_keep_order(clip):
    path = clip(frames=6, width=64, height=48)
    one, _ = _run(path, [("upscale", {"model": MODEL, "batch": "1"})], frames=6)
    two, result = _run(path, [("upscale", {"model": MODEL, "batch": "1", "device": "cpu,cpu"})], frames=6)
    settings = _settings(result, 0)
    assert settings["device"] == "cpu,cpu"
    assert [d["batches"] for d in settings["per_device"]] == [{"planes→array": 3}] * 2
    assert [f.seq for f in two] == list(range(6))
    for a, b in zip(one, two):
        assert np.array_equal(a.data, b.data)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_planes_graphs_and_pictures_match_the_cpu(clip):
    """On a GPU: planes in, CUDA graphs, encoder pictures out, all as on the CPU (45 dB)."""
    from engine.inference import InferenceRunner, InferenceSettings
    from engine.models.loader import load_model

    with av.open(str(clip(frames=4, width=64, height=48))) as container:
        planes = [colour.Planes.of(p) for p in container.decode(video=0)]
    out = colour.PictureFormat.of("yuv420p", 1, 1)
    results = {}
    for name, settings in (("cpu", dict(device="cpu")),
                           ("cuda", dict(device="cuda", precision="fp16", batch=2, cuda_graphs=True))):
        model = load_model(MODEL)
        runner = InferenceRunner(model, model.scale, InferenceSettings(**settings))
        runner.open()
        done = runner.submit(planes[:2], tag=0, output=out) + runner.submit(planes[2:], tag=1, output=out)
        done += runner.drain()
        assert [tag for tag, _ in done] == [0, 1]
        results[name] = [p.to_ndarray(format="rgb24") for _, batch in done for p in batch]
        runner.close()
    for a, b in zip(results["cpu"], results["cuda"]):
        assert _psnr(a, b) > 45


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_nvdec_without_a_gpu_is_a_one_line_error(clip, tmp_path):
    from conftest import run_engine

    out = tmp_path / "out.mp4"
    r = run_engine("stream", clip(frames=4, width=64, height=48), out, "--decode", "nvdec")
    assert r.returncode == 2 and "--decode nvdec" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr and not out.exists() and not list(tmp_path.iterdir())
    r = run_engine("stream", clip(frames=4, width=64, height=48), out, "--decode", "auto", "--quiet")
    assert r.returncode == 0, r.stderr  # auto is the CPU decoder here


def test_nvdec_on_a_codec_it_cannot_decode_is_a_one_line_error(clip, tmp_path):
    """ProRes has no NVDEC decoder: PyAV raised a RuntimeError (a traceback, exit 1)."""
    from conftest import run_engine

    from av.codec.hwaccel import hwdevices_available

    if "cuda" not in hwdevices_available():
        pytest.skip("this FFmpeg build has no CUDA decoding: the codec check is never reached")
    out = tmp_path / "out.mp4"
    src = clip(frames=3, ext=".mov", codec="prores_ks", pix_fmt="yuv422p10le")
    r = run_engine("stream", src, out, "--decode", "nvdec")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--decode nvdec cannot decode the video of" in r.stderr and not out.exists()


@pytest.mark.parametrize("workers", [1, 3])
def test_every_workers_batches_are_counted(clip, workers):
    """The report adds up counters over a stage's workers but shows one worker's settings: with
    workers=3, settings' batches said 2 of 6. The counter has them all; the settings' per-kind
    breakdown is shown only where it is the whole stage's."""
    path = clip(frames=6, width=64, height=48)
    frames, result = _run(path, [("upscale", {"model": MODEL, "batch": "1", "workers": str(workers)})], frames=6)
    stage = result.stages[1]
    assert len(frames) == 6 and stage.workers == workers
    assert stage.counters["batches"] == 6 and stage.counters["inferred"] == 6
    if workers == 1:
        assert sum(stage.settings["batches"].values()) == 6
    else:
        assert "batches" not in stage.settings


def test_batches_in_flight_come_back_when_new_buffers_are_needed(monkeypatch):
    """On CUDA a ring of 3 keeps batches in flight between submits. A batch of another kind
    or size (host arrays where pictures came before, after a concatenated input's join)
    needs new buffers: the batches that must finish first are handed back, not dropped.
    The CUDA branch runs here on the CPU, with events that report the GPU still busy."""
    import contextlib

    import engine.inference as inference

    class BusyEvent:
        def query(self):
            return False

        def synchronize(self):
            pass

    class Stream:
        def wait_event(self, event):
            pass

    class DeviceSlot(inference._Slot):  # "device" buffers in host memory
        def __init__(self, *args):
            super().__init__(*args)
            self.dev_in = [t.clone() for t in self.host_in]

    monkeypatch.setattr(inference, "_on", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(inference, "_event", lambda stream: BusyEvent())
    monkeypatch.setattr(inference, "_Slot", DeviceSlot)
    runner = inference.InferenceRunner(torch.nn.Identity(), 1,
                                       inference.InferenceSettings(device="cpu", batch=2, tile=4096, ring=3))
    runner.open()
    runner.cuda, runner._streams = True, (Stream(), Stream(), Stream())
    done = []
    for i in range(3):
        done += runner.submit([np.full((8, 8, 3), i, np.uint8)] * 2, tag=i)
    assert len(runner._pending) > 1, "the simulated ring kept nothing in flight"
    done += runner.submit([np.full((16, 16, 3), 3, np.uint8)] * 2, tag=3)  # new buffers
    done += runner.drain()
    assert [tag for tag, _ in done] == [0, 1, 2, 3]
    for tag, outputs in done:
        assert all(int(o[0, 0, 0]) == tag for o in outputs)
