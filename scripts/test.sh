#!/usr/bin/env bash
# Install (idempotent), check lint, formatting and the import layers (pyproject.toml: [tool.ruff],
# [tool.importlinter]; seconds), then run the test suite on CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "[test] ruff check, ruff format --check, lint-imports"
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest -q "$@"
