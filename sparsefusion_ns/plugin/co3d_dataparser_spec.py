"""nerfstudio entry point of the CO3Dv2 dataparser (``--data ... co3d``).

Imports only the dataparser config: a dataparser entry-point module that imports datamanager or
method configs makes ``ns-train`` fail on a circular import.
"""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from sparsefusion_ns.data.co3d_dataparser import Co3dDataParserConfig

co3d_dataparser = DataParserSpecification(
    config=Co3dDataParserConfig(),
    description="CO3Dv2 sequence, cropped/resized/padded as SparseFusion's authors do; 2-6 input views.",
)
