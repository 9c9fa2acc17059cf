"""cnnpipe: batch CNN inference over large FITS survey images.

``cnnpipe.export`` turns PyTorch models into self-describing ONNX packages (needs the
``export`` extra, the only place torch is imported); ``cnnpipe.pipeline`` tiles FITS
images and runs those packages on a Dask cluster, writing masks and catalogs to Zarr.
"""

from cnnpipe.errors import CnnpipeError
from cnnpipe.modelmeta import ModelMeta, read_model_meta

__all__ = ["CnnpipeError", "ModelMeta", "__version__", "read_model_meta"]

__version__ = "0.1.0"
