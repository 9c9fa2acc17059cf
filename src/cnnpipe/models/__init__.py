"""Bundled demo model packages (ONNX), trained on cnnpipe's own simulations.

They are demo models trained on simulated data, not science-grade models; each file's
``cnnpipe`` metadata says so (``demo: true``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["demo_model_paths", "resolve_model"]


def demo_model_paths() -> dict[str, Path]:
    """Return ``{name: path}`` of the bundled demo ONNX models."""
    here = Path(__file__).parent
    return {p.stem: p for p in sorted(here.glob("*.onnx"))}


def resolve_model(given: str) -> str | None:
    """The absolute path of a model given as a file or as a bundled model's name.

    A file of that name wins over a bundled model; None when it is neither (the caller
    says so in its own words).
    """
    if os.path.isfile(given):
        return os.path.abspath(given)
    demo = demo_model_paths().get(given)
    return str(demo) if demo is not None else None
