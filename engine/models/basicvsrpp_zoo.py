"""BasicVSR++ checkpoints: mmagic's released files, by short name, in a models directory.

No pip package ships these weights, and the engine downloads nothing: a user fetches the file
once (URLs below, from mmagic 1.2.0's `configs/basicvsr_pp/metafile.yml`) and either passes its
path (`checkpoint=/path/file.pth`) or puts it in the models directory under its released name
and passes the short name (`checkpoint=reds4`). Torch-free, so checking a pipeline stays instant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.models.tensor_file import file_problem

ENV_DIR = "ENGINE_MODELS_DIR"
DEFAULT_DIR = Path("~/.cache/engine/models")
_URL = "https://download.openmmlab.com/mmediting/restorers/basicvsr_plusplus/"


@dataclass(frozen=True)
class Release:
    name: str
    file: str
    scale: int          # 4: ×4 super-resolution; 1: same-size restoration (NTIRE decompression)
    description: str

    @property
    def url(self) -> str:
        return _URL + self.file


RELEASES = {r.name: r for r in (
    Release("reds4", "basicvsr_plusplus_c64n7_8x1_600k_reds4_20210217-db622b2f.pth", 4,
            "c64n7, REDS (bicubic ×4): general video"),
    Release("vimeo90k-bi", "basicvsr_plusplus_c64n7_8x1_300k_vimeo90k_bi_20210305-4ef437e2.pth", 4,
            "c64n7, Vimeo-90K, bicubic ×4 degradation"),
    Release("vimeo90k-bd", "basicvsr_plusplus_c64n7_8x1_300k_vimeo90k_bd_20210305-ab315ab1.pth", 4,
            "c64n7, Vimeo-90K, blur-downsample ×4 degradation"),
    Release("ntire-vsr", "basicvsr_plusplus_c128n25_ntire_vsr_20210311-1ff35292.pth", 4,
            "c128n25, NTIRE 2021 video SR ×4 (heavy)"),
    Release("ntire-decompress-track1", "basicvsr_plusplus_c128n25_ntire_decompress_track1_20210223-7b2eba02.pth", 1,
            "c128n25, NTIRE 2021 compressed video enhancement, track 1 (same size)"),
    Release("ntire-decompress-track2", "basicvsr_plusplus_c128n25_ntire_decompress_track2_20210314-eeae05e6.pth", 1,
            "c128n25, NTIRE 2021 compressed video enhancement, track 2 (same size)"),
    Release("ntire-decompress-track3", "basicvsr_plusplus_c128n25_ntire_decompress_track3_20210304-6daf4a40.pth", 1,
            "c128n25, NTIRE 2021 compressed video enhancement, track 3 (same size)"),
)}
DEFAULT_CHECKPOINT = "reds4"


def models_dir(override: str = "") -> Path:
    """The option if given, else $ENGINE_MODELS_DIR, else ~/.cache/engine/models."""
    return Path(override or os.environ.get(ENV_DIR) or DEFAULT_DIR).expanduser()


def resolve_checkpoint(checkpoint: str, directory: str = "") -> Path:
    """The checkpoint file for a short name or a path; a one-line `UserError` if there is none."""
    release = RELEASES.get(checkpoint)
    if release is not None:
        path = models_dir(directory) / release.file
        if not path.is_file():
            raise UserError(f"BasicVSR++ checkpoint '{checkpoint}' not found: put {release.file} in "
                            f"{models_dir(directory)} (download: {release.url}) or pass checkpoint=PATH")
        return path
    if not checkpoint.endswith((".pth", ".pt")):
        raise UserError(f"unknown BasicVSR++ checkpoint '{checkpoint}'; give a .pth file or one of: "
                        f"{', '.join(RELEASES)}")
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        raise UserError(f"BasicVSR++ checkpoint {checkpoint} is a directory; checkpoint= takes a .pth file")
    if not path.is_file():
        raise UserError(f"BasicVSR++ checkpoint not found: {checkpoint}")
    problem = file_problem(path)
    if problem is not None:  # a cut or empty file: found here rather than once the run has started
        raise UserError(f"cannot load BasicVSR++ checkpoint {path.name}: {problem}")
    return path
