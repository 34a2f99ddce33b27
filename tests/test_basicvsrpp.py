"""BasicVSR++: the deformable convolution, equality with mmagic's module, checkpoints, the window stage.

Networks here are tiny and random (mid_channels 8-16, 1-2 blocks, 64-pixel frames): the function
does not depend on the size, and no pip package ships BasicVSR++ weights (see README).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmagic_reference
from engine.errors import UserError
from engine.inference import halved_tile
from engine.models.basicvsrpp import BasicVSRPlusPlus, flow_warp, from_state_dict, load_checkpoint
from engine.models.basicvsrpp_zoo import RELEASES, resolve_checkpoint
from engine.models.deform import modulated_deform_conv2d
from engine.registry import make_spec
from engine.runner import Pipeline, RunnerOptions
from engine.testing import CollectingSink, ImagesSource
from engine.window_inference import WindowRunner, WindowSettings


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: on a shared 2-core machine torch's thread pool costs 5× the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_net(mid: int = 8, blocks: int = 1, low_res: bool = True, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> BasicVSRPlusPlus:
    """A network whose every tensor is random, offset heads included (mmagic zeroes those at init,
    which would make the deformable convolution a plain one and leave alignment untested)."""
    torch.manual_seed(seed)
    net = BasicVSRPlusPlus(mid, blocks, is_low_res_input=low_res)
    g = torch.Generator().manual_seed(seed + 1)
    state = {}
    for key, value in net.state_dict().items():
        if key in ("spynet.mean", "spynet.std"):
            state[key] = value
        elif value.dim() > 1:  # weights scaled so activations neither vanish nor explode
            state[key] = torch.randn(value.shape, generator=g) * (0.7 / value[0].numel() ** 0.5)
        else:
            state[key] = torch.randn(value.shape, generator=g) * 0.05
    net.load_state_dict(state)
    return net.to(dtype).eval()


def moving_frames(count: int, h: int = 64, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """A smooth texture panning 1.5 px per frame, with a little noise: motion for SPyNet to find."""
    rng = np.random.default_rng(seed)
    big = _smooth(rng.random((h + 64, w + 64 + 2 * count, 3)))
    frames = []
    for i in range(count):
        x0 = int(round(1.5 * i))
        crop = big[16:16 + h, x0:x0 + w] + rng.normal(0, 0.02, (h, w, 3))
        frames.append((np.clip(crop, 0, 1) * 255).round().astype(np.uint8))
    return frames


def _smooth(a: np.ndarray) -> np.ndarray:
    """Blurred noise stretched to [0, 1]: texture with structure at several scales."""
    b = cv2.GaussianBlur(a.astype(np.float32), (0, 0), 3)
    return (b - b.min()) / (b.max() - b.min())


# ---- the deformable convolution -----------------------------------------------------------------

def _reference(x, offset, mask, weight, bias, stride=1, padding=0, dilation=1, groups=1, deform_groups=1):
    """mmcv's kernel as tests/mmagic_reference.py transcribes it."""
    kh, kw = weight.shape[2:]
    ho = (x.shape[2] + 2 * padding - (dilation * (kh - 1) + 1)) // stride + 1
    wo = (x.shape[3] + 2 * padding - (dilation * (kw - 1) + 1)) // stride + 1
    out = x.new_empty(x.shape[0], weight.shape[0], ho, wo)
    mmagic_reference.reference_kernel(
        x, weight, bias, None, offset, mask, out, None, kernel_h=kh, kernel_w=kw, stride_h=stride,
        stride_w=stride, pad_h=padding, pad_w=padding, dilation_h=dilation, dilation_w=dilation,
        group=groups, deformable_group=deform_groups, with_bias=True)
    return out


@pytest.mark.parametrize("impl", [modulated_deform_conv2d, _reference], ids=["ours", "reference"])
def test_deform_conv_with_zero_offsets_is_a_plain_convolution(impl):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 11, 13, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    offset = torch.zeros(2, 2 * 2 * 9, 11, 13, dtype=torch.float64)
    mask = torch.ones(2, 2 * 9, 11, 13, dtype=torch.float64)
    got = impl(x, offset, mask, weight, bias, 1, 1, 1, 2, 2)
    assert torch.allclose(got, F.conv2d(x, weight, bias, 1, 1, 1, 2), atol=1e-12)


@pytest.mark.parametrize("impl", [modulated_deform_conv2d, _reference], ids=["ours", "reference"])
def test_deform_conv_with_whole_pixel_offsets_is_a_shifted_convolution(impl):
    """Every tap moved by (dy, dx) = (1, -2) and masked by 0.5 is half a plain convolution that
    reads the zero-padded image one row down and two columns left."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 12, 10, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.zeros(3, dtype=torch.float64)
    offset = torch.zeros(1, 18, 12, 10, dtype=torch.float64)
    offset[:, 0::2], offset[:, 1::2] = 1.0, -2.0
    mask = torch.full((1, 9, 12, 10), 0.5, dtype=torch.float64)
    got = impl(x, offset, mask, weight, bias, 1, 1, 1, 1, 1)
    # tap (i, j) of output p reads x[p + i - 1 + 1, p + j - 1 - 2]; x padded by 3 on every side
    padded = F.pad(x, (3, 3, 3, 3))
    expected = 0.5 * F.conv2d(padded[:, :, 3:3 + 12 + 2, 0:10 + 2], weight)
    assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("stride,padding,dilation,groups,deform_groups", [
    (1, 1, 1, 1, 4), (2, 1, 1, 1, 2), (1, 2, 2, 2, 2), (1, 0, 1, 1, 1)])
def test_deform_conv_matches_mmcvs_kernel_with_fractional_offsets(stride, padding, dilation, groups,
                                                                 deform_groups):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, 9, 14, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 8 // groups, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    ho = (9 + 2 * padding - (dilation * 2 + 1)) // stride + 1
    wo = (14 + 2 * padding - (dilation * 2 + 1)) // stride + 1
    # offsets up to ±6 px: many samples fall partly or wholly outside the image
    offset = (torch.rand(2, 2 * deform_groups * 9, ho, wo, generator=g, dtype=torch.float64) - 0.5) * 12
    mask = torch.rand(2, deform_groups * 9, ho, wo, generator=g, dtype=torch.float64)
    ours = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups)
    ref = _reference(x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups)
    assert torch.allclose(ours, ref, atol=1e-12)


def test_deform_conv_keeps_sampling_coordinates_fp32_under_autocast():
    """At 1024 px wide a bf16 coordinate is off by up to 4 px; ours stays close to fp32."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 16, 4, 1024, generator=g)
    weight = torch.randn(8, 16, 3, 3, generator=g) * 0.1
    offset = (torch.rand(1, 2 * 2 * 9, 4, 1024, generator=g) - 0.5) * 4
    mask = torch.rand(1, 2 * 9, 4, 1024, generator=g)
    exact = modulated_deform_conv2d(x, offset, mask, weight, None, 1, 1, 1, 1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = modulated_deform_conv2d(x, offset, mask, weight, None, 1, 1, 1, 1, 2).float()
    error = (mixed - exact).abs().mean() / exact.abs().mean()
    assert error < 0.01  # bf16 products only; with bf16 coordinates it is ~0.5 (measured)


# ---- equality with mmagic's module --------------------------------------------------------------

def _mmagic():
    net_class = mmagic_reference.load()
    if net_class is None:
        pytest.skip("mmagic reference not installed: pip install --no-deps mmagic==1.2.0 mmengine==0.10.7 "
                    "mmcv-lite==2.1.0")
    return net_class


def test_equal_to_mmagics_basicvsrpp_on_a_random_network():
    """mmagic's own network file and ours, same random state dict, float64: equal to rounding."""
    reference = _mmagic()(mid_channels=8, num_blocks=1).double().eval()
    ours = random_net(8, 1, dtype=torch.float64)
    reference.load_state_dict(ours.state_dict(), strict=True)
    frames = moving_frames(3, 64, 64)
    lqs = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[None].double() / 255
    offsets = []
    hook = ours.deform_align["forward_1"].conv_offset.register_forward_hook(
        lambda m, i, o: offsets.append(10 * torch.tanh(o[:, :o.shape[1] * 2 // 3]).abs().max()))
    with torch.no_grad():
        expected = reference(lqs)
        got = ours(lqs)
    hook.remove()
    assert got.shape == expected.shape == (1, 3, 3, 256, 256)
    assert max(offsets) > 1.0  # the offset residues really move the samples (by pixels)
    assert (got - expected).abs().max().item() < 1e-12


@pytest.mark.parametrize("mid,blocks,low_res", [(64, 7, True), (128, 25, True), (128, 25, False)],
                         ids=["c64n7", "c128n25-ntire-vsr", "c128n25-ntire-decompress"])
def test_every_published_variant_has_mmagics_keys_and_shapes(mid, blocks, low_res):
    reference = _mmagic()(mid_channels=mid, num_blocks=blocks, is_low_res_input=low_res).state_dict()
    shapes = {k: tuple(v.shape) for k, v in reference.items()}
    net = from_state_dict(dict(reference), "ref.pth")  # hyper-parameters read off the tensors
    assert (net.mid_channels, net.num_blocks, net.is_low_res_input) == (mid, blocks, low_res)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes
    if (mid, blocks) == (64, 7):
        assert len(shapes) == 274


def test_same_size_variant_matches_mmagic():
    reference = _mmagic()(mid_channels=8, num_blocks=1, is_low_res_input=False).double().eval()
    ours = random_net(8, 1, low_res=False, seed=5, dtype=torch.float64)
    reference.load_state_dict(ours.state_dict(), strict=True)
    lqs = torch.from_numpy(np.stack(moving_frames(2, 256, 256))).permute(0, 3, 1, 2)[None].double() / 255
    with torch.no_grad():
        expected, got = reference(lqs), ours(lqs)
    assert got.shape == lqs.shape
    assert (got - expected).abs().max().item() < 1e-12


# ---- checkpoints --------------------------------------------------------------------------------

def _mmagic_checkpoint(net: BasicVSRPlusPlus, path: Path, **extra) -> Path:
    state = {"generator." + k: v for k, v in net.state_dict().items()}
    torch.save({"meta": {"epoch": 1}, "state_dict": {**state, "step_counter": torch.zeros(1), **extra}}, path)
    return path


def test_mmagic_and_bare_checkpoints_load_with_hyper_parameters_from_the_tensors(tmp_path):
    net = random_net(16, 2)
    for path in (_mmagic_checkpoint(net, tmp_path / "mm.pth"), tmp_path / "bare.pth"):
        if path.name == "bare.pth":
            torch.save(net.state_dict(), path)
        loaded = load_checkpoint(path)
        assert (loaded.mid_channels, loaded.num_blocks, loaded.scale) == (16, 2, 4)
        for key, value in net.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize("damage,message", [
    ("missing", "missing key 'backbone.forward_2.main.2.1.conv2.bias'"),
    ("shape", "key 'upsample1.upsample_conv.weight' has shape"),
    ("extra", "unexpected key 'deform_align.forward_1.extra'"),
    ("nan", "key 'conv_last.weight' holds NaN"),
    ("not-basicvsrpp", "missing key 'feat_extract.main.0.weight'"),
])
def test_a_mismatched_checkpoint_is_one_line_naming_file_and_key(tmp_path, damage, message):
    state = random_net(16, 2).state_dict()
    if damage == "missing":
        del state["backbone.forward_2.main.2.1.conv2.bias"]
    elif damage == "shape":
        state["upsample1.upsample_conv.weight"] = torch.zeros(3, 16, 3, 3)
    elif damage == "extra":
        state["deform_align.forward_1.extra"] = torch.zeros(1)
    elif damage == "nan":
        state["conv_last.weight"][0, 0, 0, 0] = float("nan")
    else:
        state = {"conv_first.weight": torch.zeros(64, 3, 3, 3)}
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": {"generator." + k: v for k, v in state.items()}}, path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith("bad.pth: ") and message in text


def test_a_corrupt_or_missing_checkpoint_is_one_line(tmp_path):
    good = _mmagic_checkpoint(random_net(8, 1), tmp_path / "good.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:2000])
    for path, message in ((cut, "cannot load BasicVSR++ checkpoint cut.pth"),
                          (tmp_path / "none.pth", "checkpoint not found")):
        with pytest.raises(UserError) as info:
            load_checkpoint(path)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_an_image_model_or_garbage_is_not_a_basicvsrpp_checkpoint(tmp_path):
    """A Real-ESRGAN file (BasicSR's params/params_ema wrapper) and bytes torch reads as a
    legacy pickle (KeyError: 101) are one-line UserErrors, not a crash once the run started."""
    from engine.models.archs import SRVGGNetCompact

    torch.save({"params_ema": SRVGGNetCompact(num_feat=8, num_conv=1, upscale=2).state_dict()}, tmp_path / "esr.pth")
    (tmp_path / "garbage.pth").write_bytes(b"hello world" * 10)
    for name, message in (("esr.pth", "esr.pth: not a BasicVSR++ checkpoint (its 'params_ema' wrapper is "
                                      "BasicSR's layout"),
                          ("garbage.pth", "cannot load BasicVSR++ checkpoint garbage.pth: not a PyTorch "
                                          "checkpoint (KeyError: 101)")):
        with pytest.raises(UserError) as info:
            load_checkpoint(tmp_path / name)
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_cut_or_foreign_checkpoint_or_a_directory_is_refused_when_the_stage_is_built(tmp_path):
    data = _mmagic_checkpoint(random_net(8, 1), tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
    (tmp_path / "dir.pth").mkdir()
    (tmp_path / "garbage.pth").write_bytes(b"hello world" * 10)
    for name, message in (("cut.pth", "cannot load BasicVSR++ checkpoint cut.pth: the file is truncated"),
                          ("dir.pth", "dir.pth is a directory; checkpoint= takes a .pth file"),
                          ("garbage.pth", "garbage.pth: not a PyTorch checkpoint (neither a zip archive nor a "
                                          "pickle)")):
        with pytest.raises(UserError) as info:
            make_spec("basicvsrpp", {"checkpoint": str(tmp_path / name)}).build()
        assert message in str(info.value)


def test_released_names_resolve_in_the_models_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINE_MODELS_DIR", str(tmp_path))
    with pytest.raises(UserError) as info:
        resolve_checkpoint("reds4")
    assert RELEASES["reds4"].file in str(info.value) and RELEASES["reds4"].url in str(info.value)
    torch.save({}, tmp_path / RELEASES["reds4"].file)  # any checkpoint: its content is checked at load
    assert resolve_checkpoint("reds4") == tmp_path / RELEASES["reds4"].file
    with pytest.raises(UserError, match="unknown BasicVSR.. checkpoint 'reds5'"):
        resolve_checkpoint("reds5")


# ---- the window stage ---------------------------------------------------------------------------


def run_stage(frames: list[np.ndarray], checkpoint: Path, **options) -> list[np.ndarray]:
    spec = make_spec("basicvsrpp", {"checkpoint": str(checkpoint), "device": "cpu", **options})
    sink = CollectingSink()
    Pipeline(ImagesSource(frames), [spec], sink, RunnerOptions(join_timeout_s=5)).run()
    assert [f.seq for f in sink.frames] == list(range(len(frames)))
    return [f.data for f in sink.frames]


def test_windows_with_overlap_come_closer_to_the_whole_sequence(tmp_path):
    """Per frame, against one run over all frames: without overlap the frames at window joins
    lose the propagation from across the join; `overlap` frames of context give most of it back."""
    net = random_net(8, 1, seed=3)
    path = _mmagic_checkpoint(net, tmp_path / "c8n1.pth")
    frames = moving_frames(8)
    runner = WindowRunner(load_checkpoint(path), 4, WindowSettings(device="cpu", window=8))
    runner.open()
    whole = runner.run(frames)

    def errors(outputs):
        return [float(np.abs(a.astype(np.int16) - b).mean()) for a, b in zip(outputs, whole)]

    cut = errors(run_stage(frames, path, window=4, overlap=0))     # windows [0, 4), [4, 8)
    shared = errors(run_stage(frames, path, window=6, overlap=2))  # [0, 6) → 0-3, [2, 8) → 4-7
    print("no overlap:", np.round(cut, 2), "\noverlap 2: ", np.round(shared, 2))
    assert cut[3] > 0.2 and cut[4] > 0.2                # the join is visible without overlap
    assert max(shared[3], shared[4]) < 0.5 * min(cut[3], cut[4])
    assert max(shared) < max(cut)


class ContextProbe(torch.nn.Module):
    """A stand-in sequence model that shows what it was given: output frame i is the input frame
    (nearest ×4, halved) plus a level naming i's place in the sequence and the sequence's length.
    It raises CUDA's out-of-memory error for sequences or frames larger than its limits."""

    def __init__(self, max_frames: int = 10_000, max_side: int = 10_000):
        super().__init__()
        self.max_frames, self.max_side = max_frames, max_side
        self.calls: list[int] = []

    def frames(self, lqs, offload=False):
        self.calls.append(lqs.shape[1])
        if lqs.shape[1] > self.max_frames or max(lqs.shape[-2:]) > self.max_side:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        t = lqs.shape[1]
        return (F.interpolate(lqs[:, i], scale_factor=4, mode="nearest") / 2 + (32 * i + 4 * t) / 510
                for i in range(t))


def _probe_expected(frame: np.ndarray, place: int, length: int) -> np.ndarray:
    up = frame.repeat(4, 0).repeat(4, 1).astype(np.float64) / 255
    return np.round(np.clip(up / 2 + (32 * place + 4 * length) / 510, 0, 1) * 255).astype(np.uint8)


def test_out_of_memory_on_a_short_window_halves_what_ran():
    """A window shorter than the set length (a clip's last) that runs out of memory retries at
    half its own length, not at half the set length (which would run it again unchanged)."""
    probe = ContextProbe(max_frames=20)
    runner = WindowRunner(probe, 4, WindowSettings(device="cpu", window=96, overlap=2))
    runner.open()
    got = runner.run(moving_frames(40))
    assert len(got) == 40 and runner.oom_retries == 1 and runner.window == 20
    assert probe.calls[:2] == [40, 20]


def test_out_of_memory_runs_shorter_windows_that_share_context():
    frames = moving_frames(9)
    probe = ContextProbe(max_frames=5)
    runner = WindowRunner(probe, 4, WindowSettings(device="cpu", window=9, overlap=1))
    runner.open()
    got = runner.run(frames)
    assert runner.window == 4 and runner.oom_retries == 1
    # the engine's window rule on sub-windows of 4 sharing 1 frame of context each side:
    # [0, 4) → 0-2, [2, 6) → 3-4, [4, 8) → 5-6, [6, 9) → 7-8 (each frame once)
    assert probe.calls == [9, 4, 4, 4, 3]
    places = [(0, 4), (1, 4), (2, 4), (1, 4), (2, 4), (1, 4), (2, 4), (1, 3), (2, 3)]
    assert len(got) == 9
    for frame, out, (place, length) in zip(frames, got, places):  # levels differ by ≥ 2 per step
        assert np.abs(out.astype(int) - _probe_expected(frame, place, length)).max() <= 1


def test_out_of_memory_at_the_shortest_window_falls_back_to_tiles():
    frames = moving_frames(3, 64, 160)
    probe = ContextProbe(max_frames=3, max_side=100)
    runner = WindowRunner(probe, 4, WindowSettings(device="cpu", window=4, overlap=1, tile_overlap=16))
    runner.open()
    got = runner.run(frames)
    # 3 frames is already the shortest window (2 × overlap + 1): straight to tiles, one retry
    assert runner.window == 4 and 64 <= runner.tile <= 100 and runner.oom_retries == 1
    for i, (frame, out) in enumerate(zip(frames, got)):  # a per-pixel model: tiles change nothing
        assert np.abs(out.astype(int) - _probe_expected(frame, i, 3)).max() <= 1


def test_tiles_never_go_under_what_the_model_takes():
    # the same-size models shrink each tile by 4 before SPyNet (64 px at least): a tile under
    # 256 px is refused up front, and the out-of-memory backoff stops there with the OOM itself
    same_size = BasicVSRPlusPlus(mid_channels=8, num_blocks=1, is_low_res_input=False)
    assert same_size.min_input_side == 256 and BasicVSRPlusPlus(8, 1).min_input_side == 64
    with pytest.raises(UserError, match="tiles must be at least 256 pixels"):
        WindowRunner(same_size, 1, WindowSettings(device="cpu", tile=128))
    assert halved_tile(960, 1080, 1920, 256) == 480 and halved_tile(480, 1080, 1920, 256) is None
    probe = ContextProbe(max_frames=3, max_side=100)
    probe.min_input_side = 128  # 160 px frames halve to 80: under it, so nothing is left to try
    runner = WindowRunner(probe, 4, WindowSettings(device="cpu", window=4, overlap=1))
    runner.open()
    with pytest.raises(torch.OutOfMemoryError):
        runner.run(moving_frames(3, 64, 160))
    assert runner.tile == 0 and runner.window == 4  # 3 frames ran: already the shortest window


def test_out_of_memory_with_nothing_left_to_shrink_fails():
    runner = WindowRunner(ContextProbe(max_frames=1), 4, WindowSettings(device="cpu", window=4, overlap=1))
    runner.open()
    with pytest.raises(torch.OutOfMemoryError):
        runner.run(moving_frames(4))


def test_one_frame_and_odd_tails_leave_once_each(tmp_path):
    path = _mmagic_checkpoint(random_net(8, 1), tmp_path / "c8n1.pth")
    for count in (1, 3):  # 3 frames in windows of 2: the last window holds one frame
        out = run_stage(moving_frames(count), path, window=2, overlap=0)
        assert len(out) == count and all(o.shape == (256, 256, 3) for o in out)


@pytest.mark.parametrize("options,message", [
    ({"window": "1"}, "window must be between 2 and 512"),
    ({"window": "600"}, "window must be between 2 and 512"),
    ({"window": "16", "overlap": "8"}, "overlap must be >= 0 and less than half"),
    ({"tile": "32"}, "tile must be 0 (auto) or at least 64"),
    ({"checkpoint": "nope.pth"}, "checkpoint not found: nope.pth"),
    ({"checkpoint": "reds5"}, "unknown BasicVSR++ checkpoint 'reds5'"),
])
def test_stage_options_are_checked_before_anything_runs(tmp_path, options, message):
    path = _mmagic_checkpoint(random_net(8, 1), tmp_path / "c8n1.pth")
    with pytest.raises(UserError) as info:
        make_spec("basicvsrpp", {"checkpoint": str(path), **options}).build()
    assert message in str(info.value)


def test_cli_end_to_end_and_a_bad_checkpoint_is_exit_2(tmp_path, clip):
    from conftest import run_engine

    path = _mmagic_checkpoint(random_net(8, 1), tmp_path / "c8n1.pth")
    src = clip(frames=6, width=64, height=64)
    out = tmp_path / "out.mkv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = run_engine("stream", str(src), str(out), "--pipeline",
                      f"basicvsrpp:checkpoint={path}:window=4:overlap=1:device=cpu", env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    import av

    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (256, 256)
        assert sum(1 for _ in container.decode(stream)) == 6
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    failed = run_engine("stream", str(src), str(tmp_path / "no.mkv"), "--pipeline",
                        f"basicvsrpp:checkpoint={bad}", env=env, timeout=240)
    assert failed.returncode == 2 and not (tmp_path / "no.mkv").exists()
    errors = [line for line in failed.stderr.splitlines() if "error" in line]
    assert errors == ["engine: error: cannot load BasicVSR++ checkpoint bad.pth: not a PyTorch "
                      "checkpoint (neither a zip archive nor a pickle)"], failed.stderr
    assert "Traceback" not in failed.stderr


def test_alignment_under_bf16_autocast_stays_close_to_fp32():
    """The mixed-precision path of one propagation step: low-precision features and flows in,
    fp32 coordinates inside, the same alignment out (the whole net under fp16: the CUDA test)."""
    net = random_net(16, 1, seed=6)
    align = net.deform_align["forward_2"]
    g = torch.Generator().manual_seed(6)
    feats = torch.rand(1, 32, 24, 32, generator=g)
    cond = torch.rand(1, 48, 24, 32, generator=g)
    flow_1 = (torch.rand(1, 2, 24, 32, generator=g) - 0.5) * 20   # up to ±10 px
    flow_2 = (torch.rand(1, 2, 24, 32, generator=g) - 0.5) * 20
    with torch.no_grad():
        exact = align(feats, cond, flow_1, flow_2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = [t.bfloat16() for t in (feats, cond, flow_1, flow_2)]  # as autocast convs give them
            mixed = align(*low).float()
            warped = flow_warp(low[0], low[2].permute(0, 2, 3, 1))
    assert warped.dtype == torch.bfloat16
    error = (mixed - exact).abs().mean() / exact.abs().mean()
    assert error < 0.05, error


def test_a_cpu_report_leaves_out_the_offload_it_does_not_do():
    """offload=on keeps features in pinned host memory on CUDA; on the CPU they are there already."""
    info = WindowRunner(random_net(8, 1), 4, WindowSettings(device="cpu", offload="on")).describe()
    assert info["device"] == "cpu"
    assert not {"offload", "memory_fraction", "cudnn_benchmark", "tf32"} & set(info)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_matches_cpu_and_offload_changes_nothing():
    net = random_net(16, 2, seed=7)
    frames = moving_frames(6, 96, 128)
    expected = WindowRunner(net, 4, WindowSettings(device="cpu", precision="fp32")).run(frames)
    outputs = {}
    for offload in ("off", "on"):
        runner = WindowRunner(random_net(16, 2, seed=7), 4,
                              WindowSettings(device="cuda", precision="fp16", offload=offload))
        runner.open()
        outputs[offload] = runner.run(frames)
    assert all(np.array_equal(a, b) for a, b in zip(outputs["on"], outputs["off"]))
    for a, b in zip(outputs["on"], expected):
        assert np.abs(a.astype(int) - b).mean() < 1.0


def test_a_window_reports_its_steps_as_it_goes():
    """The stall watchdog hears every step of a window (each propagation step, each output
    frame), so an hour-long window on the CPU is not called stalled; the result is unchanged."""
    frames = moving_frames(4)
    quiet = WindowRunner(random_net(8, 1), 4, WindowSettings(device="cpu", window=4, overlap=1))
    quiet.open()
    expected = quiet.run(frames)
    runner = WindowRunner(random_net(8, 1), 4, WindowSettings(device="cpu", window=4, overlap=1))
    steps = []
    runner.progress = lambda: steps.append(1)
    runner.open()
    got = runner.run(frames)
    # 4 branches × 4 frames, 4 frames out, and the feature and flow chunks
    assert len(steps) >= 4 * 4 + 4
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
