"""Entry point of the ``sparse-views`` dataparser.

Imports the dataparser config only: a dataparser entry-point module that imported datamanager or
method configs would make ``ns-train`` crash on a circular import.
"""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from sparsefusion_ns.data.sparse_view_dataparser import SparseViewsDataParserConfig

sparse_views_dataparser = DataParserSpecification(
    config=SparseViewsDataParserConfig(),
    description="Masked object scenes (nerfstudio transforms.json or Blender), split into 2-6 input views "
    "and held-out views.",
)
