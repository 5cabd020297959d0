"""SparseFusion's distillation: step (B), which supervises renders of novel cameras with the frozen teacher.

- ``config.py``: :class:`DistillationConfig` (``--pipeline.model.distillation.*``);
- ``novel_cameras.py``: the pool of novel cameras (fitted circle, look-at point, jitter);
- ``teacher_inputs.py``: the input views and cameras as the EFT reads them;
- ``teacher_cache.py``: EFT colour and features per pool camera, computed once;
- ``objective.py``: the bootstrap and diffusion losses;
- ``counters.py`` and ``state.py``: the teacher's cost and the checkpointed random stream;
- ``callbacks.py``: the nerfstudio training callback that runs step (B) and its start-up;
- ``progress.py``: what step (B) reports to an observer (the web viewer's SparseFusion panel).

Modules are imported explicitly (nothing is re-exported here), so importing the model stays light.
"""
