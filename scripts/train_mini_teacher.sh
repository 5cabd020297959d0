#!/usr/bin/env bash
# Retrain the shipped mini teacher (teachers/critter-mini) from scratch on a CPU, stage by stage.
# Every stage checkpoints; rerunning this script continues an interrupted stage where it stopped.
#   DATA   where the synthetic category is written (default data/synthetic)
#   RUNS   where the training runs are written (default runs)
#   OUT    the packaged teacher folder (default teachers/critter-mini)
#   VAE_RUN the VAE stage's run folder (default $RUNS/mini_vae; teachers/critter-mini-vae holds the
#          shipped result of stage 2, so VAE_RUN=teachers/critter-mini-vae skips straight to stage 3)
# Measured on 2 CPU cores: see docs/mini_teacher.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/synthetic}
RUNS=${RUNS:-runs}
OUT=${OUT:-teachers/critter-mini}
VAE_RUN=${VAE_RUN:-$RUNS/mini_vae}
BIN=.venv/bin
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

continue_flag() {  # --resume when the run folder already holds a checkpoint
  if compgen -G "$1/checkpoints/step-*" >/dev/null; then echo --resume; fi
}

# 1. The category: 1000 training, 10 dev and 100 test instances (seed 0).
if [ ! -f "$DATA/critter/synthetic_category.json" ]; then
  "$BIN/sf-make-category" --output "$DATA" --category critter --seed 0 --num-train 1000 --num-dev 10 --num-test 100 --overwrite
fi

# 2. The autoencoder (x4, 64² images -> 4 x 16² latents): LDM's KL-regularised objective without its
#    perceptual and adversarial terms, with an L2 reconstruction term (L1 left colours grey).
if [ ! -f "$VAE_RUN/vae/config.json" ]; then
  "$BIN/sf-train-teacher" --data.root "$DATA" --data.categories critter --architecture mini --stage vae \
    --output "$VAE_RUN" --max-steps 2800 --vae-stage.learning-rate 1e-3 --vae-stage.reconstruction-loss l2 \
    --seed 0 --log-every 50 \
    --sample-every 200 --checkpoint-every 200 --keep-checkpoints 2 --num-workers 1 --cpu --no-progress \
    $(continue_flag "$VAE_RUN")
fi

# 3. EFT + VLDM, jointly (the authors' recipe at the mini size: 6 noisy copies of the query latent
#    instead of 12, lr 2e-4 halved every 3000 steps instead of 5e-5 every 50k).
"$BIN/sf-train-teacher" --data.root "$DATA" --data.categories critter --architecture mini \
  --vae "$VAE_RUN/vae" --latent-cache "$RUNS/mini_latents" --output "$RUNS/mini_joint" \
  --max-steps "${JOINT_STEPS:-5000}" --loss.diffusion-repeats 6 --learning-rate 2e-4 --lr-decay-every 3000 \
  --seed 0 --log-every 50 --sample-every 1000 --sample-steps 10 --checkpoint-every 250 --keep-checkpoints 2 \
  --num-workers 1 --cpu --no-progress $(continue_flag "$RUNS/mini_joint")

# 4. The folder to ship: float16 weights, provenance with the data generator's record, the VAE
#    report and this script.
"$BIN/sf-package-teacher" --input "$RUNS/mini_joint/teacher" --output "$OUT" --dtype float16 --overwrite \
  --attach "category=$DATA/critter/synthetic_category.json" "vae_stage=$VAE_RUN/vae_report.json" \
  --recipe scripts/train_mini_teacher.sh
