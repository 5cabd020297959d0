"""How sparsefusion runs are trained, saved and reloaded: the trainer, its checkpoints and run configs."""
