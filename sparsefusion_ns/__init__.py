"""sparsefusion-ns: SparseFusion (Zhou & Tulsiani, CVPR 2023) as a nerfstudio method.

Importing this package loads no CUDA extension and downloads nothing.
"""

__version__ = "0.1.0"
