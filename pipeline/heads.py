"""Task heads: model output -> stitched mask and probabilities -> catalog fragments.

No I/O (numpy and scipy; ``sep`` and the crater functions are imported when a head
uses them; no zarr, dask, onnxruntime or astropy.io).

One small interface, :class:`PixelHead`, with one implementation per task:

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

Catalogs.  Each head also builds its task's catalog in two steps (DESIGN §5):
:meth:`PixelHead.catalog` turns one work unit (a :class:`UnitView`) into a *fragment*
(a dict of 1-D arrays, written by the worker before the unit is marked done), and
:meth:`PixelHead.merge` turns the fragments of one image into its catalog rows in
pixel coordinates; :meth:`PixelHead.physical` fills the size columns from the local
pixel scale (:class:`Scale`).  World coordinates are added by
:mod:`cnnpipe.pipeline.catalogs`.  Column schemas: :mod:`cnnpipe.pipeline.columns`.

* ``segment``: connected components per class, joined across unit borders
  (:mod:`cnnpipe.pipeline.segments`).
* ``craters``: :func:`cnnpipe.pipeline.craterfind.find_craters` on the heat map of the
  unit ± its context (craters whose centre lies in the unit are kept), then
  :func:`cnnpipe.pipeline.dedup.dedupe_craters` over the image.
* ``classify``: cutouts of the model patch centred on input-catalog positions or on
  ``sep`` detections (:mod:`cnnpipe.pipeline.positions`), run through the model; or,
  with ``--catalog windows``, the sliding windows themselves (DESIGN §5 b: a catalog
  of tiles), one row per window, de-duplicated across units by window number.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import ModelError
from cnnpipe.modelmeta import ModelMeta, OutputKind, Task
from cnnpipe.normalise import normalise
from cnnpipe.pipeline.columns import FLAG_EDGE, FLAG_MASKED, Column, catalog_schema
from cnnpipe.pipeline.halffloat import to_float16
from cnnpipe.pipeline.plan import Unit
from cnnpipe.pipeline.positions import Positions, cutouts, detect_sources

__all__ = [
    "NODATA",
    "ClassifyHead",
    "CratersHead",
    "Fragment",
    "PixelHead",
    "Scale",
    "SegmentHead",
    "UnitView",
    "argmax_classes",
    "head_for",
    "sigmoid",
    "softmax",
]

Fragment = dict[str, npt.NDArray[Any]]
RunFn = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.floating]]

#: mask value of pixels without data
NODATA = 255

F32 = npt.NDArray[np.float32]


def softmax(x: npt.NDArray[np.floating], axis: int = 1) -> F32:
    """Numerically stable softmax ``exp(x - max) / sum(exp(x - max))`` along ``axis``."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(np.float32)


def argmax_classes(acc: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """``np.argmax(acc, axis=0).astype(uint8)`` for ``(classes, y, x)``, without int64.

    One pass per class over contiguous planes (a running maximum and a uint8 index; a
    tie keeps the first class, as argmax does) instead of numpy's strided reduction into
    an int64 array: 3-4x faster on a 5 x 2048² unit.  Pixels where a class is NaN (the
    running maximum becomes NaN) are redone with argmax itself (the first NaN wins).
    """
    if acc.shape[0] > 255:
        return np.argmax(acc, axis=0).astype(np.uint8)
    best = acc[0].copy()
    idx = np.zeros(acc.shape[1:], np.uint8)
    for k in range(1, acc.shape[0]):
        idx[acc[k] > best] = k
        np.maximum(best, acc[k], out=best)
    nan = np.isnan(best)
    if nan.any():
        idx[nan] = np.argmax(acc[:, nan], axis=0)
    return idx


def sigmoid(x: npt.NDArray[np.floating]) -> F32:
    """Logistic function ``1 / (1 + exp(-x))``."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


@dataclass(frozen=True, kw_only=True, eq=False)
class UnitView:
    """What a head sees of one work unit when it builds the unit's catalog fragment.

    Attributes
    ----------
    unit : Unit
        The work unit.
    image_shape : (ny, nx)
        Shape of the whole image.
    region : Unit
        The box ``acc`` covers: the unit, or the unit ± context (crater heads).
    acc : (channels, h, w) float32
        Stitched probabilities over ``region`` (before no-data marking).
    mask : (y, x) uint8
        The unit's finished mask (255 = no data).
    pixels : (c, H, W) float32
        The model's bands of the unit's read window, NaN = no data.
    origin : (y, x)
        Image coordinates of ``pixels[:, 0, 0]``.
    context : int
        The model's context margin, pixels.
    positions : Positions, optional
        Input-catalog positions in the unit (classify); None: detect sources.
    windows : bool
        Classify: catalog the unit's sliding windows instead of sources.
    run : callable, optional
        ``(n, c, py, px) float32 -> raw output``, the model (classify cutouts).
    batch : int
        Patches per call of ``run``.
    fixed_batch : bool
        Pad the last batch to ``batch``.
    """

    unit: Unit
    image_shape: tuple[int, int]
    region: Unit
    acc: F32
    mask: npt.NDArray[np.uint8]
    pixels: F32
    origin: tuple[int, int]
    context: int = 0
    positions: Positions | None = None
    windows: bool = False
    run: RunFn | None = None
    batch: int = 1
    fixed_batch: bool = False

    def nodata(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.bool_]:
        """No-data pixels of the image box ``[y0, y1) x [x0, x1)`` (inside the window).

        Pixels outside the image are never no-data (they are "edge", not "masked").
        """
        oy, ox = self.origin
        box = self.pixels[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        bad = ~np.all(np.isfinite(box), axis=0)
        yy = np.arange(y0, y1)[:, None]
        xx = np.arange(x0, x1)[None, :]
        inside = (yy >= 0) & (yy < self.image_shape[0]) & (xx >= 0) & (xx < self.image_shape[1])
        return bad & inside


@dataclass(frozen=True, kw_only=True, eq=False)
class Scale:
    """Local pixel scales at catalog rows (from the image WCS and header; NaN: unknown).

    Attributes
    ----------
    pixel_area_arcsec2 : (n,) float64
        Solid angle of a pixel at each row, arcsec² (``|det J|`` of ``all_pix2world``).
    km_per_px : (n,) float64
        Map scale of a body-fixed image, km per pixel.
    sky : (n,) bool
        The image's WCS is a sky frame (not body-fixed).
    """

    pixel_area_arcsec2: npt.NDArray[np.float64]
    km_per_px: npt.NDArray[np.float64]
    sky: npt.NDArray[np.bool_]


def _cat(frags: Mapping[tuple[int, int], Fragment], name: str,
         dtype: Any) -> npt.NDArray[Any]:
    parts = [np.asarray(f[name]) for f in frags.values() if name in f]
    if not parts:
        return np.zeros(0, dtype)
    return np.concatenate(parts)


class PixelHead(ABC):
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
        """The class mask of a stitched unit (before no-data marking): argmax over classes."""
        return argmax_classes(acc)

    def finish(
        self, acc: F32, nodata: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float16]]:
        """Mask ``(y, x)`` uint8 and probabilities float16 of a unit; no data -> 255 / NaN."""
        m = self.mask(acc)
        prob = to_float16(acc)
        if nodata.any():
            m[nodata] = NODATA
            prob[..., nodata] = np.nan
        return m, prob

    # -- catalogs ------------------------------------------------------------------------

    def columns(self, world: Sequence[Column] = (), *, id_dtype: str = "i8") -> list[Column]:
        """The columns of this model's catalog (:func:`.columns.catalog_schema`)."""
        return catalog_schema(self.meta, world, id_dtype=id_dtype)

    @abstractmethod
    def catalog(self, view: UnitView) -> Fragment:
        """The catalog fragment of one unit: 1-D arrays (pixel coordinates of the image)."""

    @abstractmethod
    def merge(
        self, frags: Mapping[tuple[int, int], Fragment], *, image_shape: tuple[int, int]
    ) -> Fragment:
        """The catalog rows of one image from the fragments of its done units.

        ``frags`` maps each done unit's ``(uy, ux)`` to its fragment.

        Returns the task columns of :meth:`columns` plus ``x``, ``y`` and ``flags``;
        physical sizes are NaN until :meth:`physical`.
        """

    def physical(self, rows: Fragment, scale: Scale) -> None:
        """Fill the physical-size columns of ``rows`` in place (default: none)."""
        return None  # only craters have physical sizes (diameters)


class SegmentHead(PixelHead):
    """Per-pixel classes: stitched halo-cropped probability cores, argmax mask."""

    task = Task.SEGMENT

    def catalog(self, view: UnitView) -> Fragment:
        """Components of the unit's class mask with moments and edge labels."""
        from cnnpipe.pipeline.segments import unit_components

        u = view.unit
        return unit_components(
            view.mask, origin=(u.y0, u.x0), image_shape=view.image_shape,
            nodata_ring=view.nodata(u.y0 - 1, u.y1 + 1, u.x0 - 1, u.x1 + 1),
            probs=view.acc,
        )

    def merge(
        self, frags: Mapping[tuple[int, int], Fragment], *, image_shape: tuple[int, int]
    ) -> Fragment:
        """Components joined across unit borders."""
        from cnnpipe.pipeline.segments import UnitComponents, join_components

        classes = self.meta.output.classes
        units = [UnitComponents(uy=uy, ux=ux, columns=f) for (uy, ux), f in frags.items()]
        seg = join_components(units, n_classes=len(classes))
        rows: Fragment = {
            "x": seg["x"], "y": seg["y"],
            "class": np.asarray(classes, dtype=object)[seg["class_id"]],
            "class_id": seg["class_id"], "area_px": seg["area"],
            "area_arcsec2": np.full(seg["area"].size, np.nan),
            "bbox_ymin": seg["ymin"], "bbox_ymax": seg["ymax"],
            "bbox_xmin": seg["xmin"], "bbox_xmax": seg["xmax"],
            "flags": seg["flags"],
        }
        for k, c in enumerate(classes):
            rows[f"p_{c}"] = seg[f"pmean_{k}"]
        return rows

    def physical(self, rows: Fragment, scale: Scale) -> None:
        """``area_arcsec2 = area_px * pixel solid angle`` at the centroid."""
        rows["area_arcsec2"] = rows["area_px"] * scale.pixel_area_arcsec2


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

    def _find_kwargs(self) -> dict[str, Any]:
        pp = self.meta.postprocess
        kw: dict[str, Any] = {"r_min": float(pp.get("r_min", 3.0)),
                              "r_max": float(pp.get("r_max", 60.0)),
                              "threshold": self.threshold}
        for key in ("match_threshold", "rim_width", "pyramid_radius"):
            if key in pp:
                kw[key] = float(pp[key])
        return kw

    def catalog(self, view: UnitView) -> Fragment:
        """Craters of the heat map of the unit ± context whose centre lies in the unit.

        Flags: ``FLAG_MASKED`` when a pixel without data lies within ``radius + 1`` of
        the centre, ``FLAG_EDGE`` when the rim circle reaches beyond the image.
        """
        from cnnpipe.pipeline.craterfind import find_craters

        r, u = view.region, view.unit
        nodata = view.nodata(r.y0, r.y1, r.x0, r.x1)
        heat = np.where(nodata, np.nan, view.acc[0]).astype(np.float32)
        found = find_craters(heat, **self._find_kwargs())
        x = np.asarray(found.x, np.float64) + r.x0
        y = np.asarray(found.y, np.float64) + r.y0
        rad = np.asarray(found.radius, np.float64)
        ix, iy = np.floor(x + 0.5), np.floor(y + 0.5)
        keep = (ix >= u.x0) & (ix < u.x1) & (iy >= u.y0) & (iy < u.y1)
        x, y, rad = x[keep], y[keep], rad[keep]
        score = np.asarray(found.score, np.float64)[keep]
        ny, nx = view.image_shape
        edge = (x - rad < -0.5) | (y - rad < -0.5) | (x + rad > nx - 0.5) | (y + rad > ny - 0.5)
        masked = np.zeros(x.size, bool)
        for k in range(x.size):
            reach = rad[k] + 1.0
            ya = max(r.y0, int(np.floor(y[k] - reach)))
            yb = min(r.y1, int(np.ceil(y[k] + reach)) + 1)
            xa = max(r.x0, int(np.floor(x[k] - reach)))
            xb = min(r.x1, int(np.ceil(x[k] + reach)) + 1)
            box = nodata[ya - r.y0:yb - r.y0, xa - r.x0:xb - r.x0]
            gy, gx = np.mgrid[ya:yb, xa:xb]
            masked[k] = bool((box & ((gy - y[k]) ** 2 + (gx - x[k]) ** 2 <= reach**2)).any())
        flags = (masked * FLAG_MASKED | edge * FLAG_EDGE).astype(np.uint8)
        return {"x": x, "y": y, "radius_px": rad, "score": score, "flags": flags}

    def merge(
        self, frags: Mapping[tuple[int, int], Fragment], *, image_shape: tuple[int, int]
    ) -> Fragment:
        """All units' craters, de-duplicated across unit borders, sorted by ``y``, ``x``."""
        from cnnpipe.pipeline.dedup import dedupe_craters

        x, y = _cat(frags, "x", np.float64), _cat(frags, "y", np.float64)
        rad, score = _cat(frags, "radius_px", np.float64), _cat(frags, "score", np.float64)
        flags = _cat(frags, "flags", np.uint8)
        pp = self.meta.postprocess
        keep: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        if x.size:
            keep = dedupe_craters(x, y, rad, score,
                                  pos_frac=float(pp.get("dedup_pos_frac", 0.5)),
                                  rad_frac=float(pp.get("dedup_rad_frac", 0.3)))
        keep = keep[np.lexsort((x[keep], y[keep]))]
        n = keep.size
        return {"x": x[keep], "y": y[keep], "radius_px": rad[keep],
                "diameter_km": np.full(n, np.nan), "diameter_arcsec": np.full(n, np.nan),
                "score": score[keep], "flags": flags[keep]}

    def physical(self, rows: Fragment, scale: Scale) -> None:
        """Diameters in km (body-fixed maps) and arcsec (sky images)."""
        d = 2.0 * rows["radius_px"]
        rows["diameter_km"] = d * scale.km_per_px
        rows["diameter_arcsec"] = np.where(
            scale.sky, d * np.sqrt(scale.pixel_area_arcsec2), np.nan)


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

    def catalog(self, view: UnitView) -> Fragment:
        """Class probabilities of cutouts centred on the unit's sources, or of its windows.

        Sources: ``view.positions`` (an input catalog), else :func:`detect_sources` on
        the first model band.  Cutouts (:func:`cutouts`) are normalised with the model's
        normalisation and run in batches of ``view.batch``.  With ``view.windows``: every
        sliding window that meets the unit and has data (:meth:`windows`).
        """
        if view.windows:
            return self.windows(view)
        if view.run is None:
            msg = f"Model {self.meta.name!r}: classifying cutouts needs the model session."
            raise ModelError(msg)
        pos = view.positions
        if pos is None:
            pos = detect_sources(view.pixels[0], view.origin, view.unit, view.image_shape,
                                 margin=view.context)
        patch = self.meta.input.patch or (1, 1)
        cut, flags = cutouts(view.pixels, view.origin, pos.x, pos.y, patch=patch,
                             image_shape=view.image_shape)
        probs = np.zeros((len(pos), self.channels), np.float32)
        b = view.batch
        for i in range(0, len(pos), b):
            x = normalise(cut[i:i + b], self.meta.normalisation)
            n = x.shape[0]
            if view.fixed_batch and n < b:
                x = np.concatenate([x, np.zeros((b - n, *x.shape[1:]), np.float32)])
            probs[i:i + n] = self.activate(view.run(x)[:n])
        out: Fragment = {"id": pos.ids, "row": pos.row, "x": pos.x, "y": pos.y,
                         "flags": flags}
        for k in range(self.channels):
            out[f"prob_{k}"] = probs[:, k].astype(np.float64)
        return out

    def windows(self, view: UnitView) -> Fragment:
        """The sliding windows that meet the unit and hold any data, one row each.

        A window's probabilities are those painted over its pixels in ``view.acc`` (no
        second inference).  ``window`` numbers the window in the image, row-major (the
        merged catalog's ``id``); ``x``, ``y`` are its centre (beyond the image for an
        edge window more than half outside).  Flags: masked if any of its pixels has no
        data, edge if it reaches beyond the image (filled by reflection).  A window
        crossing a unit border is in both units' fragments; :meth:`merge` keeps one.
        """
        py, px = self.meta.input.patch or (1, 1)
        u, r = view.unit, view.region
        ny, nx = view.image_shape
        ky = np.arange(u.y0 // py, -(-u.y1 // py))
        kx = np.arange(u.x0 // px, -(-u.x1 // px))
        y0, y1 = int(ky[0]) * py, (int(ky[-1]) + 1) * py
        x0, x1 = int(kx[0]) * px, (int(kx[-1]) + 1) * px
        bad = view.nodata(y0, y1, x0, x1).reshape(ky.size, py, kx.size, px)
        inside = ((np.arange(y0, y1) < ny).reshape(ky.size, py, 1, 1)
                  & (np.arange(x0, x1) < nx).reshape(1, 1, kx.size, px))
        n_bad = bad.sum(axis=(1, 3))
        keep = (n_bad < inside.sum(axis=(1, 3))).ravel()
        edge = ((ky + 1) * py > ny)[:, None] | ((kx + 1) * px > nx)[None, :]
        flags = np.where(n_bad > 0, FLAG_MASKED, 0) | np.where(edge, FLAG_EDGE, 0)
        yi = np.maximum(ky * py, u.y0) - r.y0
        xi = np.maximum(kx * px, u.x0) - r.x0
        probs = view.acc[:, yi[:, None], xi[None, :]].reshape(self.channels, -1)[:, keep]
        gy, gx = (a.ravel()[keep] for a in np.meshgrid(ky, kx, indexing="ij"))
        number = gy * -(-nx // px) + gx
        out: Fragment = {
            "window": number, "row": np.full(number.size, -1, np.int64),
            "x": gx * px + (px - 1) / 2.0, "y": gy * py + (py - 1) / 2.0,
            "flags": flags.ravel()[keep].astype(np.uint8),
        }
        for k in range(self.channels):
            out[f"prob_{k}"] = probs[k].astype(np.float64)
        return out

    def merge(
        self, frags: Mapping[tuple[int, int], Fragment], *, image_shape: tuple[int, int]
    ) -> Fragment:
        """All units' rows: input-catalog order, (detected) ``y``, ``x`` order, or windows.

        Windows (fragments with ``window`` numbers) come in window-number order, each once:
        from the first unit, in ``frags`` order (row-major), that has it.
        """
        classes = self.meta.output.classes
        row = _cat(frags, "row", np.int64)
        x, y = _cat(frags, "x", np.float64), _cat(frags, "y", np.float64)
        if any("window" in f for f in frags.values()):
            ids, order = np.unique(_cat(frags, "window", np.int64), return_index=True)
        else:
            ids = _cat(frags, "id", np.int64)
            detected = bool(row.size) and bool((row < 0).all())
            order = np.lexsort((x, y)) if detected else np.argsort(row, kind="stable")
            ids = np.arange(row.size, dtype=np.int64) if detected else ids[order]
        probs = np.stack([_cat(frags, f"prob_{k}", np.float64)[order]
                          for k in range(len(classes))], axis=1)
        cid = np.argmax(probs, axis=1).astype(np.int64) if row.size else np.zeros(0, np.int64)
        rows: Fragment = {"x": x[order], "y": y[order], "id": ids}
        for k, c in enumerate(classes):
            rows[f"p_{c}"] = probs[:, k]
        rows["class"] = np.asarray(classes, dtype=object)[cid]  # one name object per class
        rows["class_id"] = cid
        rows["flags"] = _cat(frags, "flags", np.uint8)[order]
        return rows


_HEADS: dict[Task, Callable[[ModelMeta], PixelHead]] = {
    Task.SEGMENT: SegmentHead,
    Task.CRATERS: CratersHead,
    Task.CLASSIFY: ClassifyHead,
}


def head_for(meta: ModelMeta) -> PixelHead:
    """The pixel head of a model's task."""
    return _HEADS[meta.task](meta)
