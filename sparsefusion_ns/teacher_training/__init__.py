"""Training SparseFusion teachers (EFT + VLDM) on CO3Dv2 or nerfstudio scenes: ``sf-train-teacher``.

Modules: ``config`` (options), ``scenes`` (where frames come from), ``datasets`` (query/context
examples), ``latent_cache`` (pre-computed VAE latents), ``losses``, ``model`` (the trainable
EFT + UNet), ``lr_schedule``, ``checkpoints``, ``previews`` (sample grids), ``trainer`` (the
``accelerate`` loop) and ``cli``.
"""
