#!/usr/bin/env bash
# Install sparsefusion-ns and its test tools into ./.venv (idempotent).
#   TORCH_SPEC   pip spec for torch/torchvision (default: the versions this project is tested with;
#                on a CUDA machine, install your CUDA build of torch first and set TORCH_SPEC="")
#   PYTHON       interpreter used to create the venv (default: python3.11, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC-"torch==2.14.1 torchvision==0.29.1"}

if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "[install] creating .venv with $PYTHON"
  rm -rf .venv  # absent, or left half-made by an interrupted run
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if [ -n "$TORCH_SPEC" ]; then
  # shellcheck disable=SC2086
  "${PIP[@]}" $TORCH_SPEC
fi
"${PIP[@]}" -e ".[dev]"

# System libraries: open3d (used by ns-export) needs libusb; the viewer test drives Chromium.
missing=()
[ -e /usr/lib/x86_64-linux-gnu/libusb-1.0.so.0 ] || [ -e /usr/lib/aarch64-linux-gnu/libusb-1.0.so.0 ] \
  || ldconfig -p 2>/dev/null | grep -q libusb-1.0.so.0 || missing+=(libusb-1.0-0)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[install] apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[install] please install these system packages yourself: ${missing[*]}" >&2
  fi
fi
echo "[install] done: $(.venv/bin/python -c 'import sparsefusion_ns, torch, nerfstudio; print("sparsefusion-ns", sparsefusion_ns.__version__, "torch", torch.__version__)')"
