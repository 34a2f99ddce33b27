"""mmagic's own BasicVSR++ network, loaded for tests without torchvision or mmcv's compiled ops.

How, and why it is still mmagic's function:
- `mmagic.models/__init__` imports every model mmagic has, and some need torchvision (which on a
  CPU machine only comes with a multi-GB CUDA torch). So the few files BasicVSR++ needs are
  loaded by path, under their real module names, inside empty package modules; the code that
  runs is the installed mmagic 1.2.0 source, unchanged.
- `mmcv-lite` is mmcv without its compiled `_ext` library. mmcv's `ModulatedDeformConv2d` and
  its autograd `Function` (argument handling, output allocation) run as shipped; only the one
  kernel they call, `_ext.modulated_deform_conv_forward`, is replaced by `reference_kernel`
  below: a line-by-line transcription of mmcv's CPU/CUDA kernel (`modulated_deformable_im2col`
  with `dmcn_im2col_bilinear`, then a grouped matrix product and the bias), written with
  explicit floor/gather arithmetic and sharing no code with engine/models/deform.py. The tests
  also check this kernel where its answer is known without any deformable code (zero offsets
  give a plain convolution; whole-pixel offsets give a shifted one), so an error in it cannot
  silently agree with ours.

Needs `pip install --no-deps mmagic==1.2.0 mmengine==0.10.7 mmcv-lite==2.1.0` plus the test extra
(addict, yapf, termcolor); `load()` returns None when they are absent.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch

_CACHE: dict[str, type] = {}


def reference_kernel(input, weight, bias, ones, offset, mask, output, columns, *, kernel_h, kernel_w,
                     stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group, deformable_group,
                     with_bias):
    """mmcv `_ext.modulated_deform_conv_forward`: fills `output` in place (mmcv's signature)."""
    n, c, h, w = input.shape
    c_out = weight.shape[0]
    ho = (h + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) // stride_h + 1
    wo = (w + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) // stride_w + 1
    g, taps, cg = deformable_group, kernel_h * kernel_w, c // deformable_group
    data = input.reshape(n, g, cg, h * w)
    off = offset.reshape(n, g, taps, 2, ho, wo)
    msk = mask.reshape(n, g, taps, ho, wo)
    h_col = torch.arange(ho, dtype=input.dtype).view(ho, 1)
    w_col = torch.arange(wo, dtype=input.dtype).view(1, wo)
    cols = input.new_zeros(n, c, taps, ho, wo)
    for k in range(taps):
        i, j = divmod(k, kernel_w)
        # h_im = h_col * stride_h - pad_h + i * dilation_h + offset_h  (same for w)
        h_im = h_col * stride_h - pad_h + i * dilation_h + off[:, :, k, 0]      # N × G × H' × W'
        w_im = w_col * stride_w - pad_w + j * dilation_w + off[:, :, k, 1]
        inside = (h_im > -1) & (w_im > -1) & (h_im < h) & (w_im < w)
        h_low, w_low = torch.floor(h_im), torch.floor(w_im)
        lh, lw = h_im - h_low, w_im - w_low
        hh, hw = 1 - lh, 1 - lw
        h_low, w_low = h_low.long(), w_low.long()
        h_high, w_high = h_low + 1, w_low + 1

        def corner(y, x, ok):
            index = (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).view(n, g, 1, ho * wo).expand(n, g, cg, ho * wo)
            v = torch.gather(data, 3, index).view(n, g, cg, ho, wo)
            return v * ok.unsqueeze(2)

        v1 = corner(h_low, w_low, (h_low >= 0) & (w_low >= 0))
        v2 = corner(h_low, w_high, (h_low >= 0) & (w_high <= w - 1))
        v3 = corner(h_high, w_low, (h_high <= h - 1) & (w_low >= 0))
        v4 = corner(h_high, w_high, (h_high <= h - 1) & (w_high <= w - 1))
        val = ((hh * hw).unsqueeze(2) * v1 + (hh * lw).unsqueeze(2) * v2
               + (lh * hw).unsqueeze(2) * v3 + (lh * lw).unsqueeze(2) * v4)
        val = val * inside.unsqueeze(2)
        cols[:, :, k] = (val * msk[:, :, k].unsqueeze(2)).reshape(n, c, ho, wo)
    # output[g] = weight[g] (C_out/G × C/G·K) @ columns[g] (C/G·K × H'W')
    cols = cols.view(n, group, c // group * taps, ho * wo)
    wmat = weight.reshape(group, c_out // group, c // group * taps)
    out = torch.einsum("gok,ngkp->ngop", wmat, cols).reshape(n, c_out, ho, wo)
    if with_bias:
        out = out + bias.view(1, c_out, 1, 1)
    output.copy_(out)


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _package(name: str, path: Path) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module
    return module


def load() -> type | None:
    """mmagic's `BasicVSRPlusPlusNet` class, or None if mmagic/mmengine/mmcv are not installed."""
    if "net" in _CACHE:
        return _CACHE["net"]
    if any(importlib.util.find_spec(m) is None for m in ("mmagic", "mmengine", "mmcv", "addict", "yapf")):
        return None
    import mmcv
    import mmagic  # noqa: F401 - its version checks of mmcv and mmengine run for real

    before = dict(sys.modules)
    try:
        net_class = _load_files(Path(mmcv.__file__).parent, Path(importlib.util.find_spec("mmagic").origin).parent)
    finally:
        # the stand-in packages (and files loaded under them) must not leak into other tests
        stand_ins = ("mmcv._ext", "mmcv.ops", "mmagic.models", "mmagic.utils", "mmagic.structures")
        for name in [n for n in sys.modules if n.startswith(stand_ins)]:
            if name in before:
                sys.modules[name] = before[name]
            else:
                del sys.modules[name]
    _CACHE["net"] = net_class
    return net_class


def _load_files(mmcv_root: Path, root: Path) -> type:
    # the compiled library mmcv-lite lacks: only the kernel BasicVSR++ calls
    ext = types.ModuleType("mmcv._ext")
    ext.modulated_deform_conv_forward = reference_kernel
    ext.modulated_deform_conv_backward = None  # inference only
    sys.modules["mmcv._ext"] = ext
    ops = _package("mmcv.ops", mmcv_root / "ops")
    mdc = _load_file("mmcv.ops.modulated_deform_conv", mmcv_root / "ops" / "modulated_deform_conv.py")
    ops.ModulatedDeformConv2d = mdc.ModulatedDeformConv2d
    ops.modulated_deform_conv2d = mdc.modulated_deform_conv2d

    _package("mmagic.models", root / "models")
    archs = _package("mmagic.models.archs", root / "models" / "archs")
    utils = _package("mmagic.models.utils", root / "models" / "utils")
    _package("mmagic.models.editors", root / "models" / "editors")
    _package("mmagic.models.editors.basicvsr", root / "models" / "editors" / "basicvsr")
    _package("mmagic.models.editors.basicvsr_plusplus_net", root / "models" / "editors" / "basicvsr_plusplus_net")
    # model_utils (make_layer, default_init_weights) names DataSample in one type annotation;
    # mmagic.structures and mmagic.utils import torchvision, so they are empty stand-ins here
    structures = types.ModuleType("mmagic.structures")
    structures.DataSample = type("DataSample", (), {})
    sys.modules["mmagic.structures"] = structures
    _package("mmagic.utils", root / "utils")
    utils.flow_warp = _load_file("mmagic.models.utils.flow_warp", root / "models/utils/flow_warp.py").flow_warp
    model_utils = _load_file("mmagic.models.utils.model_utils", root / "models/utils/model_utils.py")
    utils.make_layer, utils.default_init_weights = model_utils.make_layer, model_utils.default_init_weights
    archs.ResidualBlockNoBN = _load_file("mmagic.models.archs.sr_backbone",
                                         root / "models/archs/sr_backbone.py").ResidualBlockNoBN
    archs.PixelShufflePack = _load_file("mmagic.models.archs.upsample",
                                        root / "models/archs/upsample.py").PixelShufflePack
    _load_file("mmagic.models.editors.basicvsr.basicvsr_net", root / "models/editors/basicvsr/basicvsr_net.py")
    net = _load_file("mmagic.models.editors.basicvsr_plusplus_net.basicvsr_plusplus_net",
                     root / "models/editors/basicvsr_plusplus_net/basicvsr_plusplus_net.py")
    return net.BasicVSRPlusPlusNet
