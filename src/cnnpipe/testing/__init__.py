"""Seeded generators for tests, benchmarks and demos: survey images, crater fields, tiny models.

Import from the submodules (``cnnpipe.testing.sky``, ``cnnpipe.testing.craters``,
``cnnpipe.testing.onnx_models``).
"""
