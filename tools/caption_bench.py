#!/usr/bin/env python3
"""Caption removal against ground truth, and on a clip with real subtitles.

    python tools/caption_bench.py quality [--frames 216] [--json out.json]
    python tools/caption_bench.py real tests/media/anime-1080p.mp4 OUT.mp4 [--picture pic.png]

`quality` renders captions over clean footage — the hand-held live-action clip
(../shared/media/live-handheld-426x240.mkv, copied to tests/media: a moving background) and
the upper half of the 1080p anime clip (no text there: a static-ish background) — in several
fonts (OpenCV Hershey simplex/duplex/triplex; DejaVu Sans and Serif through Pillow), sizes,
outlines, a boxed style, fades in and out, and two scripts (Latin and Cyrillic: the fonts
here have no CJK glyphs); `STYLES` lists them, one caption each, in turn. It keeps the true text pixels (everything the caption altered),
runs the real pipeline in-process (no encoder in the way) and three fills on the very same
detected masks: `inpaint` (flow propagation + NS), and the Telea and NS baselines
(`inpaint:propagate=false`). Scores in the mask (the removal mask ∪ the true text pixels):
PSNR and SSIM against the clean frames, temporal warping error (DIS flow on the clean
frames, occlusions excluded by a forward-backward check; the clean frames' own error is
the floor), and the removal mask's pixel precision/recall against the true text pixels.

`real` runs `caption-remove` on a clip with real burned-in subtitles and reports the OCR
re-detection rate: the share of frames where `text-detect` (every frame, same region and
filters) found text in the input and still finds text in the output; `--picture` writes a
small before/after PNG of one frame's bottom band.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from engine.frame import Frame  # noqa: E402
from engine.registry import parse_pipeline  # noqa: E402
from engine.runner import Pipeline  # noqa: E402
from engine.testing import CollectingSink  # noqa: E402

MEDIA = ROOT / "tests" / "media"
LINES = [  # (script, text)
    ("latin", "I never said that"), ("cyrillic", "Я этого не говорил"),
    ("latin", "Where are we going?"), ("cyrillic", "Куда мы идём?"),
    ("latin", "It's 42, not 24."), ("cyrillic", "Это было давно"),
]
HERSHEY = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX]


def read(path: Path, frames: int, rows: slice | None = None, scale: float = 1.0) -> list[np.ndarray]:
    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            image = f.to_ndarray(format="rgb24")
            if rows is not None:
                image = image[rows]
            if scale != 1.0:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            out.append(np.ascontiguousarray(image))
            if len(out) == frames:
                break
    return out


def _pil_font(serif: bool, size: int):
    from matplotlib import get_data_path
    from PIL import ImageFont

    name = "DejaVuSerif.ttf" if serif else "DejaVuSans-Bold.ttf"
    return ImageFont.truetype(str(Path(get_data_path()) / "fonts" / "ttf" / name), size)


STYLES = [  # one per caption, in turn; Latin lines (even) may use Hershey, Cyrillic (odd) need DejaVu
    dict(font="hershey-simplex", outline=True, size=0.06, fill=(255, 255, 255), boxed=False),
    dict(font="dejavu-serif", outline=False, size=0.075, fill=(255, 255, 255), boxed=False),
    dict(font="hershey-triplex", outline=True, size=0.09, fill=(255, 230, 80), boxed=False),
    dict(font="dejavu-sans-bold", outline=True, size=0.06, fill=(255, 255, 255), boxed=False),
    dict(font="hershey-duplex", outline=False, size=0.075, fill=(255, 255, 255), boxed=True),
    dict(font="dejavu-sans-bold", outline=False, size=0.09, fill=(255, 255, 255), boxed=False),
]


def caption_layers(text: str, style: dict, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(colour H×W×3 float, alpha H×W float 0..1) of one caption line, bottom-centred."""
    size = height * style["size"]  # cap height
    colour = np.zeros((height, width, 3), np.float32)
    alpha = np.zeros((height, width), np.float32)
    fill, outline = style["fill"], style["outline"]
    if style["font"].startswith("dejavu"):
        from PIL import Image, ImageDraw

        font = _pil_font(serif=style["font"] == "dejavu-serif", size=max(10, int(size * 1.4)))
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font, stroke_width=2 if outline else 0)
        org = ((width - (x1 - x0)) // 2 - x0, int(height * 0.93) - y1)
        layers = []
        for stroke in ((2, (0, 0, 0)), (0, fill)) if outline else ((0, fill),):
            a = Image.new("L", (width, height))
            ImageDraw.Draw(a).text(org, text, font=font, fill=255, stroke_width=stroke[0], stroke_fill=255)
            layers.append((np.asarray(a, np.float32) / 255, stroke[1]))
    else:
        font = HERSHEY[["hershey-simplex", "hershey-duplex", "hershey-triplex"].index(style["font"])]
        scale = cv2.getFontScaleFromHeight(font, int(size))
        thick = max(1, int(size / 12))
        (tw, _), _ = cv2.getTextSize(text, font, scale, thick)
        org = ((width - tw) // 2, int(height * 0.93))
        layers = []
        for t, c in ((thick + 4, (0, 0, 0)), (thick, fill)) if outline else ((thick, fill),):
            a = np.zeros((height, width), np.uint8)
            cv2.putText(a, text, org, font, scale, 255, t, cv2.LINE_AA)
            layers.append((a.astype(np.float32) / 255, c))
    for a, c in layers:
        colour = colour * (1 - a[..., None]) + np.array(c, np.float32) * a[..., None]
        alpha = np.maximum(alpha, a)
    if style["boxed"]:  # a translucent dark box behind the text
        ys, xs = np.nonzero(alpha)
        box = np.zeros_like(alpha)
        pad = max(3, int(size * 0.3))
        box[max(0, ys.min() - pad):ys.max() + pad, max(0, xs.min() - pad):xs.max() + pad] = 0.6
        colour = colour * (alpha[..., None]) / np.maximum(np.maximum(alpha, box)[..., None], 1e-6)
        alpha = np.maximum(alpha, box)
    return colour, alpha


def render(clean: list[np.ndarray], fps: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Captions of 1 s with 0.2 s gaps and 0.15 s fades, each line in the next style; returns
    (captioned, true text pixels). 6 captions (every style and both scripts) take 7.2 s."""
    h, w = clean[0].shape[:2]
    on, gap, fade = int(1.0 * fps), int(0.2 * fps), max(1, int(0.15 * fps))
    out, truth = [], []
    layers = None
    for i, image in enumerate(clean):
        k, pos = divmod(i, on + gap)
        if pos == 0:
            layers = caption_layers(LINES[k % len(LINES)][1], STYLES[k % len(STYLES)], w, h)
        if pos >= on:
            out.append(image.copy())
            truth.append(np.zeros((h, w), bool))
            continue
        strength = min(1.0, (pos + 1) / fade, (on - pos) / fade)
        colour, alpha = layers
        a = alpha[..., None] * strength
        out.append(np.clip(np.rint(image * (1 - a) + colour * a), 0, 255).astype(np.uint8))
        truth.append(np.any(out[-1] != image, axis=2))
    return out, truth


class Frames:
    name = "decode"

    def __init__(self, images: list[np.ndarray], fps: float):
        self.images, self.frames_total, self.frame_rate = images, len(images), fps
        self.height, self.width = images[0].shape[:2]

    def frames(self):
        for i, image in enumerate(self.images):
            yield Frame.from_array(i, i, Fraction(1, round(self.frame_rate)), image)

    def close(self):
        pass


def run(images: list[np.ndarray], fps: float, spec: str) -> tuple[list[Frame], float, dict]:
    sink = CollectingSink()
    started = time.perf_counter()
    result = Pipeline(Frames(images, fps), parse_pipeline(spec), sink).run()
    counters = {s.name: dict(s.counters) for s in result.stages if s.counters}
    return sink.frames, time.perf_counter() - started, counters


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM (Wang et al. 2004: 11×11 Gaussian, σ 1.5) per pixel of the luma."""
    a = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    b = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5)  # noqa: E731
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma ** 2, blur(b * b) - mb ** 2, blur(a * b) - ma * mb
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))


def clean_flows(clean: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Flow t→t-1 on the clean frames and where it is trustworthy (forward-backward check)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    gray = [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in clean]
    h, w = gray[0].shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = [(np.zeros((h, w, 2), np.float32), np.zeros((h, w), bool))]
    for t in range(1, len(gray)):
        f = dis.calc(gray[t], gray[t - 1], None)
        b = dis.calc(gray[t - 1], gray[t], None)
        back = cv2.remap(b, gx + f[..., 0], gy + f[..., 1], cv2.INTER_LINEAR)
        ok = np.linalg.norm(f + back, axis=2) < 0.5 + 0.05 * np.linalg.norm(f, axis=2)
        out.append((f, ok))
    return out


def warp_error(frames: list[np.ndarray], flows, regions: list[np.ndarray]) -> float:
    """Mean squared difference (0..255²) between frame t and frame t-1 warped to t, in the region."""
    h, w = frames[0].shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    total, count = 0.0, 0
    for t in range(1, len(frames)):
        f, ok = flows[t]
        region = regions[t] & ok
        if not region.any():
            continue
        prev = cv2.remap(frames[t - 1].astype(np.float32), gx + f[..., 0], gy + f[..., 1], cv2.INTER_LINEAR)
        total += float(((frames[t].astype(np.float32) - prev)[region] ** 2).sum())
        count += int(region.sum()) * 3
    return total / max(count, 1)


METHODS = {  # name → pipeline; all three fill the same detected masks
    "flow": "text-detect,text-mask,inpaint",
    "telea": "text-detect,text-mask,inpaint:propagate=false:method=telea",
    "ns": "text-detect,text-mask,inpaint:propagate=false:method=ns",
}


def score_case(name: str, clean: list[np.ndarray], fps: float, variants: list[str] = ()) -> dict:
    captioned, truth = render(clean, fps)
    flows = clean_flows(clean)
    result = {"case": name, "frames": len(clean), "size": f"{clean[0].shape[1]}x{clean[0].shape[0]}",
              "methods": {}}
    masks = None
    methods = {**METHODS, **{v: "text-detect,text-mask," + v for v in variants}}
    for method, spec in methods.items():
        out, seconds, counters = run(captioned, fps, spec)
        if masks is None:
            masks = [f.meta.get("text_mask") for f in out]
            masks = [m > 0 if m is not None else np.zeros_like(t) for m, t in zip(masks, truth)]
            # scored where the caption was (3 px around it: its soft edge) or the fill went
            region = [(cv2.dilate(t.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0) | m
                      for t, m in zip(truth, masks)]
            tp = sum(int((m & t).sum()) for m, t in zip(masks, truth))
            result["mask"] = {"precision": tp / max(1, sum(int(m.sum()) for m in masks)),
                              "recall": tp / max(1, sum(int(t.sum()) for t in truth))}
            # before any fill: the captioned input itself
            result["input"] = _scores(captioned, clean, region, flows)
            result["clean_warp_error"] = warp_error(clean, flows, region)
        images = [f.data for f in out]
        result["methods"][method] = {**_scores(images, clean, region, flows), "seconds": round(seconds, 2),
                                     "counters": counters.get("inpaint", {})}
    return result


def _scores(images, clean, region, flows) -> dict:
    err = sum(float(((a.astype(np.float64) - c)[r] ** 2).sum()) for a, c, r in zip(images, clean, region))
    n = sum(int(r.sum()) * 3 for r in region)
    ssim = [ssim_map(a, c)[r] for a, c, r in zip(images, clean, region) if r.any()]
    return {"psnr": round(10 * np.log10(255 ** 2 / max(err / max(n, 1), 1e-9)), 2),
            "ssim": round(float(np.concatenate(ssim).mean()), 4),
            "warp_error": round(warp_error(images, flows, region), 1)}


def quality(args) -> int:
    frames = args.frames
    cases = [
        ("moving: live hand-held 426x240", read(MEDIA / "live-handheld-426x240.mkv", frames), 30.0),
        # anime-320x240 is not clean anywhere (a logo, captions, a waveform): the 1080p clip's
        # upper half is (its subtitles sit lower), apart from a logo in a corner far from the band
        ("static: anime 1080p, rows 0-539 at 1/2", read(MEDIA / "anime-1080p.mp4", frames, slice(0, 540), 0.5), 23.976),
    ]
    results = []
    for name, clean, fps in cases:
        r = score_case(name, clean, fps, args.variant)
        results.append(r)
        m = r["methods"]
        print(f"{name} ({r['frames']} frames): mask precision {r['mask']['precision']:.2f} "
              f"recall {r['mask']['recall']:.3f}; input PSNR {r['input']['psnr']}")
        for method, s in m.items():
            print(f"  {method:<6} PSNR {s['psnr']:6.2f} dB  SSIM {s['ssim']:.4f}  warp error {s['warp_error']:7.1f}"
                  f"  ({s['seconds']} s)")
        print(f"  clean footage warp error {r['clean_warp_error']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def real(args) -> int:
    from stages.text_detect import TextDetect

    started = time.perf_counter()
    # absolute: the engine runs from the repository root, the scoring from here
    source, out = str(Path(args.input).resolve()), Path(args.output).resolve()
    report = out.with_name(out.stem + ".engine-report.json")  # never --json's file, even if named alike
    import subprocess
    r = subprocess.run([sys.executable, "-m", "engine", "stream", source, str(out), "--pipeline",
                        args.pipeline, "--quiet", "--report", str(report)], cwd=ROOT)
    if r.returncode:
        return r.returncode
    elapsed = time.perf_counter() - started
    # the judge: every frame, and the detector at its former default size (960 px) whatever
    # text-detect's default is, so figures stay comparable from run to run
    detector = TextDetect(every=1, max_side=960)
    detector.open(None)
    had, still, pair = [], [], None
    with av.open(source) as a, av.open(str(out)) as b:  # in step, one frame of each at a time
        for i, (x, y) in enumerate(zip(a.decode(video=0), b.decode(video=0))):
            x, y = x.to_ndarray(format="rgb24"), y.to_ndarray(format="rgb24")
            had.append(len(detector.detect(x)) > 0)
            still.append(len(detector.detect(y)) > 0)
            if i == args.frame:
                band = slice(int(x.shape[0] * 0.62), x.shape[0])
                pair = np.vstack([x[band], y[band]])
    n = sum(had)
    again = sum(p and q for p, q in zip(had, still))
    print(f"{args.input}: {len(had)} frames, caption-remove in {elapsed:.1f} s "
          f"({len(had) / elapsed:.2f} fps, wall clock incl. start-up)")
    print(f"text in the input in {n} frames; re-detected after removal in {again} ({100 * again / max(n, 1):.1f} %); "
          f"text found in output frames that had none before: {sum(q and not p for p, q in zip(had, still))}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "input": str(args.input), "frames": len(had), "seconds": round(elapsed, 1), "pipeline": args.pipeline,
            "text_frames_in": n, "redetected": again, "redetected_pct": round(100 * again / max(n, 1), 2),
            "text_in_output_only": sum(q and not p for p, q in zip(had, still)),
            "judge": "text-detect every=1 max_side=960, default area and filters"}, indent=1))
    if args.picture and pair is not None:
        scale = 960 / pair.shape[1]
        pair = cv2.resize(pair, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(args.picture, cv2.cvtColor(pair, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality", help="synthetic captions over clean footage, scored against it")
    q.add_argument("--frames", type=int, default=216, help="216 at 30 fps: all six caption styles")
    q.add_argument("--json")
    q.add_argument("--variant", action="append", default=[], metavar="SPEC",
                   help="also score this inpaint spec on the same masks, e.g. inpaint:radius=16 (repeatable)")
    r = sub.add_parser("real", help="caption-remove on a clip with real subtitles: OCR re-detection")
    r.add_argument("input")
    r.add_argument("output")
    r.add_argument("--pipeline", default="caption-remove")
    r.add_argument("--picture")
    r.add_argument("--frame", type=int, default=200)
    r.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    if args.command == "quality" and args.frames < 1:
        p.error(f"--frames must be >= 1, got {args.frames}")
    return {"quality": quality, "real": real}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
