#!/usr/bin/env bash
# One command from a fresh clone: install, generate one new instance of the procedural "critter"
# category (unseen by the shipped teacher, which was trained on the instances of seed 0), reconstruct
# it from 2 of its 32 views with the no-teacher baseline (NeRF) and with SparseFusion distilling the
# shipped mini teacher (`sparsefusion-mini`, both through nerfstudio's trainer), score both and the
# teacher's EFT and VLDM alone on the 30 held-out views, draw the comparison, export
# SparseFusion's mesh and render a 360° orbit of it. CPU is fine. Outputs go to ./demo/
# (rerunning replaces them: the steps pass --overwrite; without it every command refuses a
# non-empty output folder).
#   TEACHER      teacher folder (default: the shipped teachers/critter-mini; a folder that does not
#                exist runs the no-teacher baseline alone and says so)
#   ITERATIONS   training iterations of each method (default 600; the first third bootstraps)
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER=${TEACHER:-teachers/critter-mini}
ITERATIONS=${ITERATIONS:-600}
bash scripts/install.sh
BIN=.venv/bin
$BIN/sf-make-category --output demo/data --category critter --num-train 0 --num-dev 0 --num-test 1 \
  --seed 2026 --overwrite

if [ ! -f "$TEACHER/teacher_config.json" ]; then
  # No teacher: the no-teacher baseline alone, end to end.
  echo "demo.sh: no teacher folder at $TEACHER: running the no-teacher baseline only." >&2
  echo "         (TEACHER=<folder> runs the full comparison with a teacher from sf-train-teacher.)" >&2
  RUN=demo/baseline
  rm -rf "$RUN"
  $BIN/ns-train sparsefusion-mini --vis tensorboard --output-dir "$RUN" --experiment-name critter \
    --timestamp baseline --max-num-iterations "$ITERATIONS" \
    co3d --data demo/data --category critter --subset fewview_test --sequence-name 2026_000000_test \
    --num-input-views 2 --image-size 64 --cache-dir demo/cache
  CONFIG="$RUN/critter/sparsefusion-mini/baseline/config.yml"
  $BIN/sf-eval --load-config "$CONFIG" --output-dir demo/eval --overwrite
  $BIN/sf-export-density-mesh --load-config "$CONFIG" --output-dir demo/mesh --bounds-half-extent 2.5 --overwrite
  $BIN/sf-render-orbit --load-config "$CONFIG" --output-dir demo/orbit --overwrite
  echo
  echo "Scores (held-out views):  demo/eval/metrics.json, demo/eval/contact_sheet.png"
  echo "Mesh:                     demo/mesh/density_mesh.ply"
  echo "360° orbit:               demo/orbit/orbit.gif"
  echo "Look at the run:          $BIN/ns-viewer --load-config $CONFIG"
  exit 0
fi

$BIN/python benchmarks/mini_category_comparison.py --data demo/data --category critter --teacher "$TEACHER" \
  --num-scenes 1 --iterations "$ITERATIONS" --bootstrap-iterations $((ITERATIONS / 3)) \
  --figure-views 4 --output demo/comparison --overwrite
RUN=demo/comparison/runs/2026_000000_test/sparsefusion-mini
# The critter fits in [-2.5, 2.5]^3; a tighter box than the field's [-4, 4]^3 leaves out floaters.
$BIN/sf-export-density-mesh --load-config "$RUN/sparsefusion/config.yml" --output-dir demo/mesh \
  --bounds-half-extent 2.5 --overwrite
$BIN/sf-render-orbit --load-config "$RUN/sparsefusion/config.yml" --output-dir demo/orbit --resolution 128 \
  --overwrite
echo
echo "Scores (held-out views):  demo/comparison/results.md (everything: results.json)"
echo "Comparison picture:       demo/comparison/comparison.png"
echo "SparseFusion's mesh:      demo/mesh/density_mesh.ply"
echo "360° orbit of it:         demo/orbit/orbit.gif"
echo "Look at a run:            $BIN/ns-viewer --load-config $RUN/sparsefusion/config.yml   (or .../nerf/)"
