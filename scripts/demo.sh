#!/usr/bin/env bash
# One command from a fresh clone: install, generate one new instance of the procedural "critter"
# category (unseen by the shipped teacher, which was trained on the instances of seed 0), reconstruct
# it from 2 of its 32 views with the no-teacher baseline (NeRF) and with SparseFusion distilling the
# shipped mini teacher (`sparsefusion-mini`, both through nerfstudio's trainer), score both and the
# teacher's EFT and VLDM alone on the 30 held-out views, draw the comparison and export
# SparseFusion's mesh. CPU is fine. Outputs go to ./demo/ (rerunning replaces them: the steps pass
# --overwrite; without it every command refuses a non-empty output folder).
#   TEACHER      teacher folder (default: teachers/critter-mini, shipped with the repository)
#   ITERATIONS   training iterations of each method (default 600; the first third bootstraps)
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER=${TEACHER:-teachers/critter-mini}
ITERATIONS=${ITERATIONS:-600}
bash scripts/install.sh
BIN=.venv/bin
if [ ! -f "$TEACHER/teacher_config.json" ]; then
  echo "demo.sh: no teacher folder at $TEACHER (it needs teacher_config.json and the .safetensors files)." >&2
  echo "Set TEACHER=<folder> to a teacher written by sf-train-teacher or sf-convert-teacher." >&2
  exit 1
fi

$BIN/sf-make-category --output demo/data --category critter --num-train 0 --num-dev 0 --num-test 1 \
  --seed 2026 --overwrite
$BIN/python benchmarks/mini_category_comparison.py --data demo/data --category critter --teacher "$TEACHER" \
  --num-scenes 1 --iterations "$ITERATIONS" --bootstrap-iterations $((ITERATIONS / 3)) \
  --figure-views 4 --output demo/comparison --overwrite
RUN=demo/comparison/runs/2026_000000_test/sparsefusion-mini
# The critter fits in [-2.5, 2.5]^3; a tighter box than the field's [-4, 4]^3 leaves out floaters.
$BIN/sf-export-density-mesh --load-config "$RUN/sparsefusion/config.yml" --output-dir demo/mesh \
  --bounds-half-extent 2.5 --overwrite
echo
echo "Scores (held-out views):  demo/comparison/results.md (everything: results.json)"
echo "Comparison picture:       demo/comparison/comparison.png"
echo "SparseFusion's mesh:      demo/mesh/density_mesh.ply"
echo "Look at a run:            $BIN/ns-viewer --load-config $RUN/sparsefusion/config.yml   (or .../nerf/)"
