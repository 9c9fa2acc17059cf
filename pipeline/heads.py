"""Minimal pixel task heads: model output -> stitched per-pixel mask and probabilities.

Pure numpy.  One small interface, :class:`PixelHead`, with one implementation per task:

* ``segment``: halo-cropped class-probability cores are stitched seam-free into a
  ``(class, y, x)`` map; the mask is the argmax class.
* ``craters``: the rim heat map is stitched the same way into ``(y, x)``; the mask is
  ``heat > threshold`` (``postprocess.threshold``, default 0.5), 1 = crater rim.
* ``classify``: every sliding window's class probabilities are *painted* over the
  pixels of the window, so the coarse class map shares the ``(y, x)`` grid and chunks
  of the other models (windows are anchored at the image origin; see
  :func:`cnnpipe.pipeline.plan.window_spans`); the mask is the argmax class.

Everywhere, pixels without data (any of the model's bands not finite) get mask 255 and
probability NaN.  Logits are turned into probabilities here (softmax over classes,
logistic sigmoid for a craters heat map).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import ModelError
from cnnpipe.modelmeta import ModelMeta, OutputKind, Task

__all__ = [
    "NODATA",
    "ClassifyHead",
    "CratersHead",
    "PixelHead",
    "SegmentHead",
    "head_for",
    "sigmoid",
    "softmax",
]

#: mask value of pixels without data
NODATA = 255

F32 = npt.NDArray[np.float32]


def softmax(x: npt.NDArray[np.floating], axis: int = 1) -> F32:
    """Numerically stable softmax ``exp(x - max) / sum(exp(x - max))`` along ``axis``."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(np.float32)


def sigmoid(x: npt.NDArray[np.floating]) -> F32:
    """Logistic function ``1 / (1 + exp(-x))``."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


class PixelHead:
    """Turns raw model output of fixed-shape patches into unit-sized arrays.

    Use: ``acc = head.new(shape)``; per batch ``probs = head.activate(raw)`` and per
    patch ``head.place(acc, probs[i], src=..., dst=...)``; finally
    ``head.finish(acc, nodata)``.
    """

    task: ClassVar[Task]

    def __init__(self, meta: ModelMeta) -> None:
        self.meta = meta

    @property
    def channels(self) -> int:
        """Number of probability planes (classes, or 1 for a heat map)."""
        return len(self.meta.output.classes)

    @property
    def prob_dims(self) -> tuple[str, ...]:
        """Dimension names of the stored probability array."""
        return ("class", "y", "x")

    def new(self, shape: tuple[int, int]) -> F32:
        """A NaN-filled ``(channels, y, x)`` float32 accumulator for one unit."""
        return np.full((self.channels, *shape), np.nan, dtype=np.float32)

    def activate(self, raw: npt.NDArray[np.floating]) -> F32:
        """Probabilities ``(n, channels, y, x)`` from raw model output of a batch."""
        raw = np.asarray(raw, dtype=np.float32)
        if raw.ndim != 4 or raw.shape[1] != self.channels:
            msg = (
                f"Model {self.meta.name!r}: expected output of shape (n, {self.channels}, y, x)"
                f". Got {raw.shape}."
            )
            raise ModelError(msg)
        if self.meta.output.kind is OutputKind.LOGITS:
            return softmax(raw, axis=1)
        return raw

    def place(
        self, acc: F32, probs: F32, *, src: tuple[slice, slice], dst: tuple[slice, slice]
    ) -> None:
        """Copy the core ``src`` of one patch's ``probs`` into ``acc`` at ``dst``."""
        acc[:, dst[0], dst[1]] = probs[:, src[0], src[1]]

    def mask(self, acc: F32) -> npt.NDArray[np.uint8]:
        """The class mask of a stitched unit (before no-data marking)."""
        return np.argmax(acc, axis=0).astype(np.uint8)

    def finish(
        self, acc: F32, nodata: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float16]]:
        """Mask ``(y, x)`` uint8 and probabilities float16 of a unit; no data -> 255 / NaN."""
        m = self.mask(acc)
        m[nodata] = NODATA
        prob = acc.astype(np.float16)
        prob[..., nodata] = np.nan
        return m, prob


class SegmentHead(PixelHead):
    """Per-pixel classes: stitched halo-cropped probability cores, argmax mask."""

    task = Task.SEGMENT


class CratersHead(PixelHead):
    """Crater rim heat map ``(y, x)`` and its thresholded mask (1 = rim)."""

    task = Task.CRATERS

    @property
    def channels(self) -> int:
        """One heat-map plane."""
        return 1

    @property
    def prob_dims(self) -> tuple[str, ...]:
        """A heat map is stored ``(y, x)``."""
        return ("y", "x")

    @property
    def threshold(self) -> float:
        """Heat above which a pixel is rim (``postprocess.threshold``, default 0.5)."""
        return float(self.meta.postprocess.get("threshold", 0.5))

    def activate(self, raw: npt.NDArray[np.floating]) -> F32:
        """Heat in [0, 1]: sigmoid of logits, the heat map itself otherwise."""
        raw = np.asarray(raw, dtype=np.float32)
        if raw.ndim != 4 or raw.shape[1] != 1:
            msg = (
                f"Model {self.meta.name!r}: expected a heat map of shape (n, 1, y, x). "
                f"Got {raw.shape}."
            )
            raise ModelError(msg)
        return sigmoid(raw) if self.meta.output.kind is OutputKind.LOGITS else raw

    def mask(self, acc: F32) -> npt.NDArray[np.uint8]:
        """``heat > threshold`` as 0/1."""
        return (acc[0] > self.threshold).astype(np.uint8)

    def finish(
        self, acc: F32, nodata: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float16]]:
        """Mask and ``(y, x)`` float16 heat map."""
        m, prob = super().finish(acc, nodata)
        return m, prob[0]


class ClassifyHead(PixelHead):
    """Sliding-window classes painted over each window's pixels (coarse class map)."""

    task = Task.CLASSIFY

    def activate(self, raw: npt.NDArray[np.floating]) -> F32:
        """Class probabilities ``(n, classes)`` (trailing 1x1 spatial axes dropped)."""
        raw = np.asarray(raw, dtype=np.float32)
        if raw.ndim == 4 and raw.shape[2:] == (1, 1):
            raw = raw[:, :, 0, 0]
        if raw.ndim != 2 or raw.shape[1] != self.channels:
            msg = (
                f"Model {self.meta.name!r}: expected output of shape (n, {self.channels}). "
                f"Got {raw.shape}."
            )
            raise ModelError(msg)
        if self.meta.output.kind is OutputKind.LOGITS:
            return softmax(raw, axis=1)
        return raw

    def place(
        self, acc: F32, probs: F32, *, src: tuple[slice, slice], dst: tuple[slice, slice]
    ) -> None:
        """Paint one window's probabilities over ``dst``."""
        acc[:, dst[0], dst[1]] = probs[:, None, None]


_HEADS: dict[Task, type[PixelHead]] = {
    Task.SEGMENT: SegmentHead,
    Task.CRATERS: CratersHead,
    Task.CLASSIFY: ClassifyHead,
}


def head_for(meta: ModelMeta) -> PixelHead:
    """The pixel head of a model's task."""
    return _HEADS[meta.task](meta)
