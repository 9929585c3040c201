#!/usr/bin/env bash
# The CUDA checks, run on a GPU machine from a checkout: bash evals/gpu_check.sh [OUT_DIR]
#
# Installs this project into the machine's own python (which must hold torch with CUDA: meant for a throwaway
# GPU machine), without its dependencies; wheels in .whl/ (nltk, defusedxml, pycocotools, setuptools, wheel) are
# installed first for a machine without a package index, and a bwrap binary in .devtools/ is put on PATH when
# the machine has none. Then:
#   1. `nncaption eval-model ref-gru --device cuda --json`: the CLI path (smoke, training, scoring) on the GPU;
#   2. python -m nncaption.evals.gpu_doctor: which sandbox layer, if any, keeps CUDA from working;
#   3. python -m nncaption.evals.bench_gpu (with the first sandbox variant that worked): every reference model
#      on cuda and cpu, and four jobs sharing one GPU.
# Everything is logged to OUT_DIR (default ./gpu-check-out).
set -uo pipefail
out="${1:-gpu-check-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NNCAPTION_HOME="${NNCAPTION_HOME:-/tmp/nncaption-gpu-home}"
exec > >(tee -a "$out/gpu-check.log") 2>&1

echo "==> machine"
nvidia-smi -L || echo "nvidia-smi failed"
nproc
if ! command -v bwrap >/dev/null && [ -x .devtools/bwrap ]; then
  cp .devtools/bwrap /usr/local/bin/bwrap
  if ldd /usr/local/bin/bwrap | grep -q "not found"; then cp .devtools/lib*.so* /usr/local/lib/ && ldconfig; fi
fi
command -v bwrap && bwrap --version

echo "==> install into $(command -v python3) (the machine's python, which holds torch)"
py=python3
if ls .whl/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps .whl/*.whl || exit 1
fi
$py -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
bin="$($py -c 'import sys, os; print(os.path.dirname(sys.executable))')"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')"

echo "==> 1. eval-model ref-gru --device cuda"
"$bin/nncaption" eval-model ref-gru --device cuda --epochs 1 --json > "$out/eval-cuda.json"
echo "exit $?"
head -c 3000 "$out/eval-cuda.json"; echo

echo "==> 2. gpu_doctor (which sandbox layer, if any, breaks CUDA)"
$py -m nncaption.evals.gpu_doctor --out "$out/doctor.jsonl"
echo "exit $?"
# the bench runs with the first sandbox variant that worked (the default one when it works)
opts="$($py -c 'import json, sys
from nncaption.evals.gpu_doctor import VARIANTS
rows = [json.loads(l) for l in open(sys.argv[1])]
works = [r["variant"] for r in rows if r.get("step") == "sandbox" and r["ok"]]
print(json.dumps(next((o for n, o in VARIANTS if n in works), {})))' "$out/doctor.jsonl")"
echo "==> 3. bench_gpu with sandbox options $opts"
$py -m nncaption.evals.bench_gpu --out "$out/bench.jsonl" --sandbox-options "$opts" "${@:2}"
echo "exit $?"
