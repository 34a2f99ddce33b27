"""diffusion-vsr: tiny random Stream-DiffVSR components saved with save_pretrained and loaded
back through the real path (engine.models.diffusion_vsr.StreamDiffVSR)."""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import UserError
from engine.models.diffusion_vsr import DiffusionSettings, StreamDiffVSR, check_flow
from engine.models.diffusion_vsr_random import write_random_model
from engine.models.basicvsrpp import SPyNet
from engine.models.flow import DisFlow, SpyNetFlow, upsample_flow, warp
from engine.models.temporal_vae import TemporalAutoencoderTiny
from engine.registry import make_spec
from engine.runner import Pipeline, RunnerOptions
from engine.testing import CollectingSink, ListSource

from conftest import run_engine
from make_clip import make_clip

H, W = 16, 24  # low-resolution frames; the output is 64×96
FAST = dict(device="cpu", steps=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions on a shared 2-core machine run ~10x faster on one thread than on two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return Path(write_random_model(str(tmp_path_factory.mktemp("dvsr") / "model"), "tiny"))


@pytest.fixture(scope="module")
def model(model_dir) -> StreamDiffVSR:
    return StreamDiffVSR(str(model_dir), DiffusionSettings(**FAST))


def clip(count: int, seed: int = 0) -> list[np.ndarray]:
    """A textured image sliding one pixel right per frame: real motion for the flow."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (H, W + count, 3), dtype=np.uint8)
    return [np.ascontiguousarray(base[:, count - i:count - i + W]) for i in range(count)]


def run(model: StreamDiffVSR, frames: list[np.ndarray]) -> list[np.ndarray]:
    model.reset()
    return [model.step(f, i) for i, f in enumerate(frames)]


def test_output_size_and_dtype(model):
    frames = clip(2)
    out = run(model, frames)
    assert [o.shape for o in out] == [(H * 4, W * 4, 3)] * 2
    assert all(o.dtype == np.uint8 for o in out)
    assert out[0].std() > 0  # not a constant image
    deep = run(model, [(f.astype(np.uint16) * 257) for f in frames])
    assert deep[1].dtype == np.uint16 and deep[1].shape == (H * 4, W * 4, 3)


def test_seed_determinism(model_dir):
    frames = clip(3)
    first = StreamDiffVSR(str(model_dir), DiffusionSettings(seed=7, **FAST))
    a = run(first, frames)
    b = run(StreamDiffVSR(str(model_dir), DiffusionSettings(seed=7, **FAST)), frames)
    first.settings = dataclasses.replace(first.settings, seed=8)
    c = run(first, frames)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_causal_and_state_carried(model):
    frames = clip(4)
    base = run(model, frames)
    later = list(frames)
    later[3] = 255 - frames[3]               # change the future: the past must not move
    changed = run(model, later)
    assert all(np.array_equal(base[i], changed[i]) for i in range(3))
    assert not np.array_equal(base[3], changed[3])
    earlier = list(frames)
    earlier[1] = 255 - frames[1]             # change the past: the state must carry it forward
    carried = run(model, earlier)
    assert np.array_equal(base[0], carried[0])
    assert not np.array_equal(base[2], carried[2]) and not np.array_equal(base[3], carried[3])


def test_first_frame_has_no_guidance_then_guidance(model):
    frames = clip(2)
    run(model, frames[:1])
    assert model.prev_out is not None and model.prev_out.shape == (1, 3, H * 4, W * 4)
    model.reset()
    alone = model.step(frames[1], 1)         # no previous output: unguided
    guided = run(model, frames)[1]
    assert not np.array_equal(alone, guided)


def test_constant_memory_over_ten_times_more_frames(model):
    """State is two tensors replaced each frame; nothing accumulates per frame.

    Counted as live torch tensors (gc) and state bytes after 3 and after 30 frames: a
    pipeline that kept per-frame latents, flows or outputs (as upstream does) fails this.
    """
    frames = clip(30)
    model.reset()

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance() on some torch module objects warns
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    for i in range(3):
        model.step(frames[i], i)
    short = (live_tensors(), model.state_bytes())
    for i in range(3, 30):
        model.step(frames[i], i)
    long = (live_tensors(), model.state_bytes())
    assert long == short
    assert short[1] == (H * W + H * 4 * W * 4) * 3 * 4  # prev LR + prev output, fp32


def test_state_carries_across_window_boundaries(model_dir, model):
    """Through the runner, in groups of 1 and of 3 frames: the same frames as stepping by hand."""
    expected = []
    model.reset()
    source = ListSource(7, height=H, width=W)
    expected = [model.step(f.data, f.seq) for f in source.frames()]
    for group in (1, 3):
        sink = CollectingSink()
        spec = make_spec("diffusion-vsr", {"model": str(model_dir), "group": str(group), **{
            k: str(v) for k, v in FAST.items()}})
        Pipeline(ListSource(7, height=H, width=W), [spec], sink, RunnerOptions(join_timeout_s=30)).run()
        assert [f.seq for f in sink.frames] == list(range(7))
        assert all(np.array_equal(f.data, e) for f, e in zip(sink.frames, expected)), f"group={group}"


def test_oom_backs_off_to_tiles(model_dir, monkeypatch):
    m = StreamDiffVSR(str(model_dir), DiffusionSettings(**FAST))
    frames = [np.ascontiguousarray(np.tile(f, (2, 2, 1))) for f in clip(2)]  # 32×48
    m.step(frames[0], 0)
    real = m.unet.forward
    calls = {"n": 0}

    def flaky(sample, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        assert max(sample.shape[-2:]) <= m.unet_tile  # retried on tiles
        return real(sample, *a, **kw)

    monkeypatch.setattr(m.unet, "forward", flaky)
    out = m.step(frames[1], 1)
    assert out.shape == (H * 8, W * 8, 3)
    assert m.oom_retries == 1 and 0 < m.unet_tile < 2 * W
    assert m.describe()["unet_tile"] == m.unet_tile


def test_tiled_decode_matches_shape_and_stays_close(model_dir):
    whole = StreamDiffVSR(str(model_dir), DiffusionSettings(**FAST))
    tiled = StreamDiffVSR(str(model_dir), DiffusionSettings(vae_tile=32, tile_overlap=8, **FAST))
    frames = [np.ascontiguousarray(np.tile(f, (3, 2, 1))) for f in clip(2)]  # 48×48: tiles of 32
    a, b = run(whole, frames), run(tiled, frames)
    assert a[1].shape == b[1].shape == (192, 192, 3)
    # away from tile seams a conv decoder computes the same thing; the blend is local
    diff = np.abs(a[0].astype(int) - b[0].astype(int))
    assert np.median(diff) <= 2 and diff.mean() < 20


def test_tiled_decode_computes_the_guide_per_tile(model_dir):
    m = StreamDiffVSR(str(model_dir), DiffusionSettings(vae_tile=32, tile_overlap=8, **FAST))
    vae = m.vae
    torch.manual_seed(0)
    latents = torch.randn(1, vae.config.latent_channels, 96, 96)  # tiles of 32 + 16 each side: crops of 48-64
    guide = torch.rand(1, 3, 384, 384) * 2 - 1
    with torch.no_grad():
        whole = vae.tiled_decode(latents, vae.temporal_features(guide), 32, 8)
        # a margin that holds the whole frame: each tile's features are the whole frame's, cropped
        assert torch.allclose(vae.tiled_decode(latents, None, 32, 8, guide=guide, guide_margin=96), whole,
                              atol=1e-5)
        near = vae.tiled_decode(latents, None, 32, 8, guide=guide)  # the default margin: close
    assert (near - whole).abs().mean() < 0.05 * whole.abs().mean()
    # in a step, the encoder never sees the whole ×4 frame once the VAE is tiled
    seen = []
    features = vae.temporal_features
    vae.temporal_features = lambda image: seen.append(tuple(image.shape[-2:])) or features(image)
    frames = [np.ascontiguousarray(np.tile(f, (6, 4, 1))) for f in clip(2)]  # 96×96
    out = run(m, frames)
    assert out[1].shape == (384, 384, 3)
    assert seen and all(max(shape) <= 4 * 64 for shape in seen)


def test_precision_bf16_keeps_flow_fp32(model_dir):
    m = StreamDiffVSR(str(model_dir), DiffusionSettings(precision="bf16", **FAST))
    assert m.unet.dtype == torch.bfloat16 and m.vae.dtype == torch.bfloat16
    seen = []
    estimate = m.flow.estimate
    m.flow.estimate = lambda cur, prev: seen.append((cur.dtype, prev.dtype)) or estimate(cur, prev)
    out = run(m, clip(2))
    assert seen == [(torch.float32, torch.float32)] and out[1].dtype == np.uint8


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_matches_shapes_and_keeps_flow_fp32(model_dir):
    m = StreamDiffVSR(str(model_dir), DiffusionSettings(device="cuda", steps=2))
    assert m.precision == "fp16" and m.unet.dtype == torch.float16
    seen = []
    estimate = m.flow.estimate
    m.flow.estimate = lambda cur, prev: seen.append(cur.dtype) or estimate(cur, prev)
    out = run(m, clip(3))
    assert out[2].shape == (H * 4, W * 4, 3) and seen == [torch.float32] * 2
    assert m.prev_out.is_cuda and m.describe()["s_per_frame_denoise"] > 0


# ---- the temporal VAE's checkpoint layout --------------------------------------------------

def _expected_vae_keys() -> set[str]:
    """The released TAESD-x4 + TPM names, written out from the authors' module structure."""
    block = ["conv.0.weight", "conv.0.bias", "conv.2.weight", "conv.2.bias", "conv.4.weight", "conv.4.bias",
             "alpha", "temporal_processor.0.weight", "temporal_processor.0.bias",
             "temporal_processor.2.weight", "temporal_processor.2.bias"]
    keys = {"encoder.layers.0.weight", "encoder.layers.0.bias", "encoder.layers.2.weight",
            "encoder.layers.6.weight", "encoder.layers.10.weight", "encoder.layers.10.bias",
            "decoder.layers.0.weight", "decoder.layers.0.bias", "decoder.layers.6.weight",
            "decoder.layers.11.weight", "decoder.layers.13.weight", "decoder.layers.13.bias"}
    for part, blocks in (("encoder", (1, 3, 4, 5, 7, 8, 9)), ("decoder", (2, 3, 4, 7, 8, 9, 12))):
        keys |= {f"{part}.layers.{i}.{k}" for i in blocks for k in block}
    return keys


def test_temporal_vae_key_names_follow_the_release():
    vae = TemporalAutoencoderTiny()  # defaults = the released taesd-x4 config
    assert set(vae.state_dict()) == _expected_vae_keys()
    assert vae.scale == 4
    assert tuple(vae.state_dict()["encoder.layers.10.weight"].shape) == (4, 64, 3, 3)


def test_temporal_vae_loads_upstream_config(tmp_path):
    """The authors' config.json (AutoencoderTiny class name, extra keys) loads into our class."""
    src = TemporalAutoencoderTiny(encoder_block_out_channels=(4, 4, 4), decoder_block_out_channels=(4, 4, 4))
    src.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for class_name in ("TemporalAutoencoderTiny", "AutoencoderTiny"):  # the release's / the repo's taesd-x4
        cfg["_class_name"] = class_name
        cfg["block_out_channels"] = [4, 4, 4]
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        back = TemporalAutoencoderTiny.from_pretrained(tmp_path, local_files_only=True)
        assert back.state_dict().keys() == src.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), back.state_dict().values()))


# ---- flow ----------------------------------------------------------------------------------

def test_dis_flow_finds_a_shift_and_upsampling_scales_vectors():
    frames = clip(2)  # frame 1 = frame 0 moved one pixel right
    cur = torch.from_numpy(frames[1]).permute(2, 0, 1)[None].float() / 255
    prev = torch.from_numpy(frames[0]).permute(2, 0, 1)[None].float() / 255
    flow = DisFlow().estimate(cur, prev)
    assert flow.dtype == torch.float32 and flow.shape == (1, 2, H, W)
    inner = flow[..., 4:-4, 4:-4]
    assert abs(inner[:, 0].median().item() + 1) < 0.3 and abs(inner[:, 1].median().item()) < 0.3
    up = upsample_flow(flow, H * 4, W * 4)
    assert up.shape == (1, 2, H * 4, W * 4)
    assert abs(up[:, 0, 16:-16, 16:-16].median().item() + 4) < 1.2
    # warping the previous frame by that flow reproduces the current one (inside)
    back = warp(prev, flow)
    assert (back - cur)[..., 2:-2, 2:-2].abs().mean() < 0.05


def test_spynet_loads_basicvsrpp_checkpoint_layout(tmp_path):
    net = SPyNet()
    torch.manual_seed(0)
    state = {f"generator.spynet.{k}": v for k, v in net.state_dict().items()}
    state["generator.backbone.0.weight"] = torch.zeros(1)  # the rest of a BasicVSR++ checkpoint
    assert "generator.spynet.basic_module.0.basic_module.0.conv.weight" in state
    assert "generator.spynet.basic_module.5.basic_module.4.conv.bias" in state
    path = tmp_path / "basicvsrpp.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    check_flow("spynet", str(path))
    flow = SpyNetFlow(str(path), torch.device("cpu"))
    for a, b in zip(flow.net.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
    est = flow.estimate(torch.rand(1, 3, 20, 36), torch.rand(1, 3, 20, 36))
    assert est.shape == (1, 2, 20, 36) and est.dtype == torch.float32
    torch.save({"state_dict": {"generator.backbone.0.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="no SPyNet weights"):
        SpyNetFlow(str(tmp_path / "other.pth"), torch.device("cpu"))


def test_flow_option_errors(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        check_flow("farneback", "")
    with pytest.raises(UserError, match="flow_weights"):
        check_flow("spynet", "")
    with pytest.raises(UserError, match="not found"):
        check_flow("spynet", str(tmp_path / "nope.pth"))
    # files torch refuses: one line each, whatever torch says (its weights-only refusal runs to
    # several lines with colour codes)
    from fractions import Fraction as Odd
    torch.save({"meta": Odd(1, 3), "state_dict": {}}, tmp_path / "pickled.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "pickled.pth").read_bytes()[:40])
    for name, says in (("pickled.pth", "weights_only loading refused it"), ("cut.pth", "cannot read SPyNet")):
        with pytest.raises(UserError, match=says) as info:
            SpyNetFlow(str(tmp_path / name), torch.device("cpu"))
        assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    (tmp_path / "raft.pth").write_bytes(b"x")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="torchvision"):
            check_flow("raft", str(tmp_path / "raft.pth"))


def test_cut_flow_weights_or_a_directory_are_refused_when_the_stage_is_built(tmp_path):
    """torch.load says only "[Errno 22] Invalid argument" for a zip cut short: the constructor says what it is."""
    torch.save({"w": torch.zeros(64, 64)}, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
    (tmp_path / "dir.pth").mkdir()
    for name, message in (("cut.pth", "cannot read spynet flow weights .*cut.pth: the file is truncated or corrupt"),
                          ("dir.pth", "dir.pth is a directory; flow_weights= takes a checkpoint file")):
        with pytest.raises(UserError, match=message):
            check_flow("spynet", str(tmp_path / name))


def test_a_file_given_as_model_dir_or_a_negative_controlnet_scale_is_refused(model_dir, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match=r"model\.safetensors is a file; model= takes a model directory"):
        make_spec("diffusion-vsr", {"model": str(tmp_path / "model.safetensors")})
    with pytest.raises(UserError, match="controlnet_scale must be 0 .no guidance. or more, got -1"):
        make_spec("diffusion-vsr", {"model": str(model_dir), "controlnet_scale": "-1"}).build()


def test_settings_say_one_frame_per_call_and_the_group(model_dir, model):
    """The progress label reads batch (or window) off the settings: it said "batch ?"."""
    from engine.metrics import StageSnapshot

    stage = make_spec("diffusion-vsr", {"model": str(model_dir), "device": "cpu", "group": "3"}).build()
    stage.model = model  # the loaded model; opening another would cost the libraries' import again
    settings = stage.describe()
    assert settings["group"] == 3 and settings["batch"] == 1
    label = StageSnapshot("diffusion-vsr", "window", 1, 0, 0.0, 0.0, 0.0, settings=settings).label
    assert label == "diffusion-vsr [cpu fp32 batch 1]"


# ---- broken model directories ---------------------------------------------------------------

def _break(root: Path, kind: str) -> str:
    if kind == "no-dir":
        shutil.rmtree(root)
    elif kind.startswith("no-folder:"):
        shutil.rmtree(root / kind.split(":")[1])
    elif kind.startswith("no-file:"):
        (root / kind.split(":")[1]).unlink()
    elif kind == "bad-json":
        (root / "unet" / "config.json").write_text("{not json")
    elif kind == "wrong-in-channels":
        cfg = json.loads((root / "unet" / "config.json").read_text())
        cfg["in_channels"] = 4
        (root / "unet" / "config.json").write_text(json.dumps(cfg))
    elif kind == "class-labels":
        cfg = json.loads((root / "unet" / "config.json").read_text())
        cfg["num_class_embeds"] = 1000
        (root / "unet" / "config.json").write_text(json.dumps(cfg))
    return kind


BROKEN = {
    "no-dir": "not found",
    "no-folder:unet": "missing unet/",
    "no-folder:controlnet": "missing controlnet/",
    "no-folder:vae": "missing vae/",
    "no-folder:scheduler": "missing scheduler/",
    "no-folder:text_encoder": "missing text_encoder/",
    "no-folder:tokenizer": "missing tokenizer/",
    "no-file:unet/diffusion_pytorch_model.safetensors": "missing unet/diffusion_pytorch_model",
    "no-file:vae/config.json": "missing vae/config.json",
    "no-file:scheduler/scheduler_config.json": "missing scheduler/scheduler_config.json",
    "no-file:text_encoder/model.safetensors": "missing text_encoder/model.safetensors",
    "no-file:tokenizer/merges.txt": "missing tokenizer/merges.txt",
    "bad-json": "cannot read unet/config.json",
    "wrong-in-channels": "in_channels is 4, expected 7",
    "class-labels": "class labels",
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_directory_is_one_line_before_threads(model_dir, tmp_path, kind):
    root = tmp_path / "m"
    shutil.copytree(model_dir, root)
    _break(root, kind)
    with pytest.raises(UserError, match=BROKEN[kind]) as info:
        make_spec("diffusion-vsr", {"model": str(root)})
    assert "\n" not in str(info.value)


def test_truncated_weights_fail_at_load_with_the_component(model_dir, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(model_dir, root)
    weights = root / "controlnet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    make_spec("diffusion-vsr", {"model": str(root)})  # files are all there: the constructor passes
    with pytest.raises(UserError, match="cannot load controlnet/") as info:
        StreamDiffVSR(str(root), DiffusionSettings(**FAST))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("component, change, message", [
    ("vae", "drop", "vae/ has no tensor"),
    ("vae", "rename", "vae/ has no tensor"),  # missing under its own name (and unknown under the other)
    ("unet", "drop", "unet/ has no tensor"),
    ("text_encoder", "drop", "text_encoder/ has no tensor"),
    ("controlnet", "extra", "controlnet/ has an unknown tensor extra.weight"),
])
def test_weights_under_other_names_are_refused_not_left_random(model_dir, tmp_path, component, change, message):
    # the libraries only warn and initialise what is missing at random: a user's download whose
    # names differ must not run as noise
    from safetensors.torch import load_file, save_file
    root = tmp_path / "m"
    shutil.copytree(model_dir, root)
    weights = next((root / component).glob("*.safetensors"))
    tensors = load_file(weights)
    first = sorted(tensors)[0]
    if change == "drop":
        del tensors[first]
    elif change == "rename":
        tensors["renamed." + first] = tensors.pop(first)
    else:
        tensors["extra.weight"] = tensors[first].clone()
    save_file(tensors, weights)
    with pytest.raises(UserError, match=message) as info:
        StreamDiffVSR(str(root), DiffusionSettings(**FAST))
    assert "\n" not in str(info.value)
    if change != "extra":
        assert first in str(info.value)


# ---- the CLI, end to end --------------------------------------------------------------------

def test_cli_end_to_end(model_dir, tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=6, width=32, height=24)
    out, report = tmp_path / "out.mp4", tmp_path / "r.json"
    result = run_engine("stream", src, out, "--quiet", "--report", report, "--pipeline",
                        f"diffusion-vsr:model={model_dir}:steps=2:device=cpu:group=2", timeout=300,
                        env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    import av
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (96, 128, 3)
    settings = [s for s in json.loads(report.read_text())["stages"] if s["name"] == "diffusion-vsr"][0]
    text = json.dumps(settings)
    for key in ("attention", "vae_tile", "unet_tile", "oom_retries", "s_per_frame_denoise"):
        assert key in text
    assert settings["settings"]["group"] == 2 and settings["settings"]["batch"] == 1


def test_cli_broken_directory_exits_2_with_one_line(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=2, width=32, height=24)
    (tmp_path / "m").mkdir()
    result = run_engine("stream", src, tmp_path / "out.mp4", "--pipeline", f"diffusion-vsr:model={tmp_path / 'm'}")
    assert result.returncode == 2
    assert "missing unet/ folder" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.mp4").exists()


def _mmagic_spynet_class():
    """mmagic 1.2.0's own SPyNet class, loaded by path: `mmagic.models` imports torchvision, so its
    package modules are stubbed and only basicvsr_net.py + flow_warp.py run (unchanged source)."""
    import importlib.util
    import sys
    import types
    spec = importlib.util.find_spec("mmagic")
    if spec is None or importlib.util.find_spec("mmcv") is None or importlib.util.find_spec("mmengine") is None:
        pytest.skip("mmagic/mmcv-lite/mmengine not installed (pip install --no-deps mmagic==1.2.0 ...)")
    root = Path(spec.origin).parent
    saved = {k: sys.modules.get(k) for k in ("mmagic", "mmagic.models", "mmagic.models.archs",
                                              "mmagic.models.utils", "mmagic.registry")}

    def load(name, path):
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module

    try:
        for name in ("mmagic", "mmagic.models"):
            sys.modules[name] = types.ModuleType(name)
        archs = types.ModuleType("mmagic.models.archs")
        archs.PixelShufflePack = archs.ResidualBlockNoBN = object  # BasicVSR's, unused by SPyNet
        sys.modules["mmagic.models.archs"] = archs
        utils = types.ModuleType("mmagic.models.utils")
        utils.flow_warp = load("mmagic.models.utils.flow_warp", root / "models" / "utils" / "flow_warp.py").flow_warp
        utils.make_layer = None
        sys.modules["mmagic.models.utils"] = utils
        registry = types.ModuleType("mmagic.registry")
        registry.MODELS = types.SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls))
        sys.modules["mmagic.registry"] = registry
        net = load("mmagic_basicvsr_net_reference", root / "models" / "editors" / "basicvsr" / "basicvsr_net.py")
        return net.SPyNet
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_spynet_computes_mmagics_function(tmp_path):
    """Same random weights through mmagic's SPyNet and ours, at a size that is not a multiple of 32."""
    reference = _mmagic_spynet_class()(pretrained=None).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.05)
    state = {f"generator.spynet.{k}": v for k, v in reference.state_dict().items()}  # mean/std included
    torch.save({"state_dict": state}, tmp_path / "basicvsrpp.pth")
    ours = SpyNetFlow(str(tmp_path / "basicvsrpp.pth"), torch.device("cpu"))
    ref_img, supp_img = torch.rand(1, 3, 40, 72, dtype=torch.float64), torch.rand(1, 3, 40, 72, dtype=torch.float64)
    with torch.no_grad():  # in float64 the two are the same function to rounding
        expected = reference.double()(ref_img, supp_img)
        exact = ours.net.double()(ref_img, supp_img)
    assert expected.abs().max() > 1  # a non-trivial flow
    assert (exact - expected).abs().max() < 1e-9
    ours.net.float()
    got = ours.estimate(ref_img.float(), supp_img.float())  # the provider itself: fp32 throughout
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max() < 1e-3 * expected.abs().max()  # fp32 rounding only


# ---- state across segments (--resume) -------------------------------------------------------

def test_state_exported_and_imported_continues_bit_for_bit(model_dir):
    """bf16 state widened to fp32 arrays and narrowed back: a second model that imports it
    after frame 2 gives the continuous run's frames 3.. exactly."""
    settings = DiffusionSettings(precision="bf16", **FAST)
    frames = clip(5, seed=3)
    whole = StreamDiffVSR(str(model_dir), settings)
    expected = run(whole, frames)
    first = StreamDiffVSR(str(model_dir), settings)
    run(first, frames[:3])
    state = first.export_state()
    assert state["prev_out"].dtype == np.float32 and state["prev_out"].shape == (1, 3, 4 * H, 4 * W)
    second = StreamDiffVSR(str(model_dir), settings)
    second.import_state(state)
    assert second.prev_out.dtype == torch.bfloat16
    rest = [second.step(f, i) for i, f in enumerate(frames[3:], start=3)]
    assert all(np.array_equal(a, b) for a, b in zip(rest, expected[3:]))
    fresh = StreamDiffVSR(str(model_dir), settings)
    fresh.import_state({})  # a segment that starts the video: no guidance
    assert not np.array_equal(fresh.step(frames[3], 3), expected[3])


GOP2 = {"g": "2", "keyint_min": "2", "bf": "0", "sc_threshold": "0"}  # cuts possible every 2 frames


def _dvsr(model_dir) -> str:
    return f"diffusion-vsr:model={model_dir}:steps=2:device=cpu"


def test_resumed_segments_carry_the_state_and_equal_one_pass(model_dir, tmp_path):
    """--resume cuts every 2 frames; the state crosses each cut, so the frames equal a single
    pass's. A kill in the second segment, then resume: same frames, the first segment reused;
    a damaged state file makes its segment run again."""
    import av
    from engine.testing import index_frame
    src = make_clip(tmp_path / "in.mp4", frames=6, width=32, height=24, options=GOP2,
                    image=lambda seq: np.roll(index_frame(0, 24, 32), seq, axis=1))
    env = {"OMP_NUM_THREADS": "1"}
    plain = tmp_path / "plain.mkv"
    r = run_engine("stream", src, plain, "--quiet", "--encoder", "ffv1", "--pipeline", _dvsr(model_dir),
                   timeout=300, env=env)
    assert r.returncode == 0, r.stderr

    def frames(path):
        with av.open(str(path)) as container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    seg = tmp_path / "seg.mkv"
    args = ("stream", src, seg, "--quiet", "--encoder", "ffv1", "--resume", "--segment", "2f",
            "--pipeline", _dvsr(model_dir))
    killed = run_engine(*args, timeout=300, env={**env, "ENGINE_CRASH_AT": "segment-frame:4"})
    assert killed.returncode != 0 and not seg.exists()
    work = tmp_path / ".seg.mkv.engine-work"
    assert (work / "segment-00000.state.npz").is_file()
    r = run_engine(*args, "--report", tmp_path / "r.json", timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    listed = json.loads((tmp_path / "r.json").read_text())["segments"]["list"]
    assert len(listed) == 3 and [s["reused"] for s in listed] == [True, False, False]
    expected = frames(plain)
    assert len(expected) == 6
    assert all(np.array_equal(a, b) for a, b in zip(frames(seg), expected))

    # a damaged state file: its segment (and only it) runs again, same frames
    killed = run_engine(*args, timeout=300, env={**env, "ENGINE_CRASH_AT": "join-packet:1"})
    assert killed.returncode != 0
    state = work / "segment-00001.state.npz"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    r = run_engine(*args, "--report", tmp_path / "r.json", timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    listed = json.loads((tmp_path / "r.json").read_text())["segments"]["list"]
    assert [s["reused"] for s in listed] == [True, False, True]
    assert all(np.array_equal(a, b) for a, b in zip(frames(seg), expected))


def test_resume_refuses_carried_state_beside_window_context(model_dir, tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=4, width=32, height=24, options=GOP2)
    r = run_engine("stream", src, tmp_path / "out.mkv", "--resume", "--segment", "2f", "--pipeline",
                   f"temporal-denoise:radius=1,{_dvsr(model_dir)}", timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'diffusion-vsr' (state carried from frame to frame)" in r.stderr
    assert not (tmp_path / "out.mkv").exists()


def test_resumed_after_dedup_opens_on_the_frame_the_state_ended_with(model_dir, tmp_path):
    """dedup,diffusion-vsr cut every 2 frames inside runs of held drawings: each segment opens on
    the last unique frame before it, which the carried state already holds. Same frames as one pass."""
    import av
    from engine.testing import index_frame
    rng = np.random.default_rng(5)

    def held(seq: int) -> np.ndarray:  # drawings held for 3 frames, moving between them, ±1 noise
        base = np.roll(index_frame(0, 24, 32), 3 * (seq // 3), axis=1).astype(np.int16)
        return np.clip(base + rng.integers(-1, 2, size=base.shape), 0, 255).astype(np.uint8)

    src = make_clip(tmp_path / "held.mp4", frames=9, width=32, height=24, crf=0, options=GOP2, image=held)
    pipeline = f"dedup,{_dvsr(model_dir)}"
    env = {"OMP_NUM_THREADS": "1"}
    plain, seg = tmp_path / "plain.mkv", tmp_path / "seg.mkv"
    r = run_engine("stream", src, plain, "--quiet", "--encoder", "ffv1", "--pipeline", pipeline,
                   "--report", tmp_path / "p.json", timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    inferred = [s for s in json.loads((tmp_path / "p.json").read_text())["stages"] if s["name"] == "diffusion-vsr"]
    assert inferred[0]["counters"]["inferred"] == 3  # one per drawing: the clip exercises dedup
    r = run_engine("stream", src, seg, "--quiet", "--encoder", "ffv1", "--resume", "--segment", "2f",
                   "--pipeline", pipeline, "--report", tmp_path / "r.json", timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["segments"]["total"] >= 4

    def frames(path):
        with av.open(str(path)) as container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    a, b = frames(seg), frames(plain)
    assert len(a) == len(b) == 9
    assert [i for i, (x, y) in enumerate(zip(a, b)) if not np.array_equal(x, y)] == []
