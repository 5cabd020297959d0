#!/usr/bin/env bash
# One prepared check for a machine with a CUDA GPU (≤ 8 minutes there); also runs on a CPU-only
# machine, where it says so and runs what a CPU allows at toy sizes.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#
# 1. installs what it needs from wheels (the package itself if it does not import; tiny-cuda-nn is
#    tried with pip and skipped on failure: it has no PyPI wheels, and a build needs nvcc);
# 2. runs the CUDA parity tests that skip on a CPU: nerfacc compositing (test_volume_sampling.py),
#    occupancy-grid marching and the model's packed branch (test_cuda_parity.py), tiny-cuda-nn
#    against the torch hash grid (test_hash_grid.py);
# 3. times, in fp32 and bf16, one full-size UNet evaluation, one paper-config distillation
#    iteration per schedule and the peak GPU memory (benchmarks/gpu_check.py), printed as one table.
# Time limits (pip 90 + 45 s, tests 150 s, timings 180 s) keep it under 8 minutes.
# Exits non-zero only when a test fails or the timings crash; a missing optional install is reported.
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() { echo; echo "=== $*"; }

step "python: $PYTHON"
"$PYTHON" - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}",
      f"({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "(no CUDA: GPU parts skip, timings run at toy sizes)")
PY
HAS_CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")

step "install (wheels only; failures are reported, not fatal)"
if ! "$PYTHON" -c "import sparsefusion_ns, nerfacc" 2>/dev/null; then
  timeout 90 "$PYTHON" -m pip install --prefer-binary --retries 1 --timeout 15 -q -e . || echo "pip install -e . failed: using what is installed"
fi
if [ "$HAS_CUDA" = "1" ] && ! "$PYTHON" -c "import tinycudann" 2>/dev/null; then
  timeout 45 "$PYTHON" -m pip install -q --only-binary=:all: --retries 1 --timeout 15 tinycudann \
    || echo "tiny-cuda-nn: no wheel could be installed; its parity test will skip"
fi
"$PYTHON" - <<'PY'
from sparsefusion_ns.model.volume_sampling import nerfacc_cuda_available
try:
    import tinycudann  # noqa: F401
    tcnn = "yes"
except Exception as error:  # noqa: BLE001
    tcnn = f"no ({type(error).__name__})"
print(f"nerfacc CUDA extension: {nerfacc_cuda_available()}; tinycudann importable: {tcnn}")
PY

step "CUDA parity tests (skip without CUDA)"
timeout 150 "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
  tests/test_volume_sampling.py tests/test_cuda_parity.py tests/test_hash_grid.py || status=1

step "timings (fp32, bf16)"
timeout 180 "$PYTHON" benchmarks/gpu_check.py --runs 3 || status=1

step "done (exit $status)"
exit $status
