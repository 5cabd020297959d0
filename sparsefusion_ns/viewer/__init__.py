"""SparseFusion in nerfstudio's web viewer: the camera it opens at and the distillation panel.

- ``framing.py``: the opening camera (the first input camera, looking at the object);
- ``elements.py``: a picture as a nerfstudio viewer element (viser markdown with a PNG);
- ``panel.py``: :class:`SparseFusionViewerControl`, the model's ``ViewerControl``: frames every new
  browser, and during distillation shows the SparseFusion panel and the pool cameras.

Layer: between the model (which holds the control) and the distillation (which reports to it).
"""
