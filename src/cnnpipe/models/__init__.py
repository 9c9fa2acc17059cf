"""Bundled demo model packages (ONNX), trained on cnnpipe's own simulations.

They are demo models trained on simulated data, not science-grade models; each file's
``cnnpipe`` metadata says so (``demo: true``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo_model_paths"]


def demo_model_paths() -> dict[str, Path]:
    """Return ``{name: path}`` of the bundled demo ONNX models."""
    here = Path(__file__).parent
    return {p.stem: p for p in sorted(here.glob("*.onnx"))}
