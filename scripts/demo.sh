#!/usr/bin/env bash
# One command from a fresh clone: install, generate the demo scene, train `sparsefusion-tiny` on 3 of
# its views (CPU is fine), evaluate the held-out views and export a mesh. Outputs go to ./demo/
# (rerunning replaces them: the steps pass --overwrite).
#   ITERATIONS   training iterations (default 1000, about 3 minutes on 2 idle CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
ITERATIONS=${ITERATIONS:-1000}
bash scripts/install.sh
BIN=.venv/bin

$BIN/sf-make-demo-scene --output demo/scene --num-views 24 --resolution 96 --overwrite
$BIN/ns-train sparsefusion-tiny --data demo/scene --output-dir demo/outputs --experiment-name demo \
  --timestamp run --vis tensorboard --max-num-iterations "$ITERATIONS" \
  sparse-views --input-views 0 8 16
CONFIG=demo/outputs/demo/sparsefusion-tiny/run/config.yml
$BIN/sf-eval --load-config "$CONFIG" --output-dir demo/eval --overwrite
# The demo object fits in [-1, 1]^3; a tighter box leaves out floaters that three views cannot rule out.
$BIN/sf-export-density-mesh --load-config "$CONFIG" --output-dir demo/mesh --bounds-half-extent 1.0 --overwrite
echo
echo "Held-out view metrics: demo/eval/metrics.json (contact sheet: demo/eval/contact_sheet.png)"
echo "Mesh:                  demo/mesh/"
echo "Watch a run live:      $BIN/ns-viewer --load-config $CONFIG"
