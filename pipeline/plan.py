"""Work-unit and patch geometry of a run (pure: numpy-free integer arithmetic).

A run cuts every image into *work units*: square super-tiles of ``tile`` pixels that are
exactly the chunks of the output arrays, so each Dask task writes whole chunks that no
other task touches (DESIGN §3, §9).  Inside a unit each model sees fixed-shape patches:

* fully convolutional models (``input.patch`` null, or a fixed patch with a halo) run on
  patches of ``patch`` pixels whose *core* (``patch - 2 * halo``) tiles the unit exactly
  once; every patch origin lies on the ``multiple`` grid of the image origin, so a
  tiled run equals a whole-image run wherever the halo holds real pixels;
* classify models (fixed patch) slide a window of their patch with stride = patch over
  the image (grid anchored at the image origin, independent of ``tile``) and paint each
  window's class over its pixels: a coarse class map at full resolution.

A model's task head may need to see beyond its unit to build the unit's catalog
fragment: its ``context`` margin (:func:`model_context`) enlarges the pixel window a unit
reads, never the chunks it writes.  Classify heads cut patch-sized cutouts around
sources inside the unit (``patch // 2`` plus a detection margin); segment heads look one
pixel beyond the unit for masked neighbours; crater heads need the heat map of the unit
plus the largest crater radius, so for them inference itself covers the unit ± context,
clipped to the image (:func:`infer_region`), aligned to the model's ``multiple``.

Patch and batch sizes may be chosen here (``--patch auto`` / ``--batch auto``, the
defaults): :func:`auto_patch` picks, for a fully convolutional model, the patch whose
cores cover the largest unit with the fewest pixels pushed through the network under a
per-call pixel budget (:data:`PIXELS_PER_CALL`), and :func:`auto_batch` fills that
budget with patches.

Nothing here reads pixels; :mod:`cnnpipe.pipeline.worker` slices a unit's pixels with
these spans.  Coordinates are 0-based ``(y, x)`` pixel indices, half-open intervals.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from cnnpipe.errors import ConfigError, ModelMismatchError
from cnnpipe.modelmeta import ModelMeta, Task

__all__ = [
    "ACTIVATION_FACTOR",
    "MAX_AUTO_BATCH",
    "PIXELS_PER_CALL",
    "ImagePlan",
    "ModelGeometry",
    "Plan",
    "Span",
    "TilingMode",
    "Unit",
    "auto_batch",
    "auto_patch",
    "axis_units",
    "conv_spans",
    "infer_region",
    "make_plan",
    "model_context",
    "model_geometry",
    "read_window",
    "window_spans",
]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, m: int) -> int:
    return _ceil_div(a, m) * m


def _round_down(a: int, m: int) -> int:
    return (a // m) * m


#: input pixels (patches x patch pixels) per onnxruntime call that ``--patch auto`` /
#: ``--batch auto`` aim for: 5 x 512², which holds one 1120² patch.  On the 2-core
#: benchmark machine the demo U-Net's cost per pixel was flat from 512² to 1056² patches,
#: and a 16000² run at 1120² x 1 peaked at the memory of 512² x 4 (README "Settings").
PIXELS_PER_CALL = 5 * 512 * 512
#: ``--batch auto`` never puts more patches than this into one call (small classify
#: windows would otherwise make batches of hundreds)
MAX_AUTO_BATCH = 256
#: the unit extent ``--patch auto`` plans for when no image size is known
AUTO_EXTENT = 2048


def auto_batch(patch: tuple[int, int], budget: int = PIXELS_PER_CALL) -> int:
    """Patches per call that fill ``budget`` pixels: at least 1, at most MAX_AUTO_BATCH."""
    return max(1, min(MAX_AUTO_BATCH, budget // (patch[0] * patch[1])))


def auto_patch(
    extent: tuple[int, int], *, halo: int, multiple: int, budget: int = PIXELS_PER_CALL
) -> tuple[int, int]:
    """The patch ``(py, px)`` that covers an ``extent`` with the fewest pixels pushed.

    Each patch contributes only its core (``patch - 2 * halo``), so covering an extent
    ``E`` with ``n`` cores per axis pushes ``n * (roundup(ceil(E / n), multiple) + 2 *
    halo)`` pixels along it.  Over every ``(n_y, n_x)`` whose patch holds at most
    ``budget`` pixels, this returns the patch of the least total ``n_y * n_x * py * px``
    (ties: the fewer, larger patches, then the squarer).  Where even the smallest patch
    (``multiple + 2 * halo``) exceeds the budget, it returns that smallest patch.

    Example: a 2048 unit with a 48-pixel halo and multiple 16 gives 1120 x 1120 (2 x 2
    patches, 5.0 Mpix pushed for 4.2 Mpix of unit) where 512-pixel patches need 5 x 5
    (6.6 Mpix).
    """
    def options(e: int) -> list[tuple[int, int]]:
        # (patches, patch size) per number of cores n, each distinct size once
        out: dict[int, int] = {}
        for n in range(1, _ceil_div(e, multiple) + 1):
            p = _round_up(_ceil_div(e, n), multiple) + 2 * halo
            out.setdefault(p, n)
        return [(n, p) for p, n in out.items()]

    best: tuple[int, int, int, tuple[int, int]] | None = None
    side = multiple + 2 * halo  # the smallest patch side
    oy = [(n, p) for n, p in options(extent[0]) if p * side <= budget]
    ox = [(n, p) for n, p in options(extent[1]) if p * side <= budget]
    for ny, py in oy:
        for nx, px in ox:
            if py * px > budget:
                continue
            key = (ny * nx * py * px, ny * nx, abs(py - px), (py, px))
            if best is None or key < best:
                best = key
    return (side, side) if best is None else best[3]


class TilingMode(StrEnum):
    """How a model's patches are laid out inside a work unit."""

    #: halo-cropped cores tile the unit (segment / craters, fully convolutional or not)
    CONV = "conv"
    #: non-overlapping windows of the model patch anchored at the image origin (classify)
    WINDOW = "window"


@dataclass(frozen=True, slots=True)
class Span:
    """One patch along one axis.

    The patch reads ``[start, start + size)`` of the image (outside the image:
    reflected) and contributes its output on ``[core0, core1)``.
    """

    start: int
    core0: int
    core1: int


@dataclass(frozen=True, slots=True)
class Unit:
    """A work unit: output chunk ``(uy, ux)`` covering ``[y0, y1) x [x0, x1)``."""

    uy: int
    ux: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the unit, pixels."""
        return (self.y1 - self.y0, self.x1 - self.x0)

    @property
    def pixels(self) -> int:
        """Number of pixels in the unit."""
        return (self.y1 - self.y0) * (self.x1 - self.x0)


@dataclass(frozen=True, kw_only=True)
class ModelGeometry:
    """The fixed patch layout of one model in one run.

    Attributes
    ----------
    name : str
        Model name (the Zarr group under each image).
    mode : TilingMode
        ``conv`` (cores tile the unit) or ``window`` (classify sliding window).
    patch : (int, int)
        Fixed ``(py, px)`` input shape of every batch, pixels.
    halo : int
        Effective halo, pixels: the model's halo rounded up to ``multiple`` (0 for
        ``window``).
    multiple : int
        Patch origins are multiples of this, relative to the image origin.
    core : (int, int)
        Stride of the cores (``patch - 2 * halo``, a multiple of ``multiple``); for
        ``window`` the patch itself.
    context : int
        Pixels around a unit its task head sees (read, never written), pixels.
    infer_context : bool
        Inference (not only the read) covers the unit ± ``context`` clipped to the
        image (crater heads: the heat map around the unit).
    batch : int
        Patches per inference call (``--batch``, or :func:`auto_batch`).  It never
        changes results, so it is not part of :meth:`to_dict` (a resumed run may use
        another batch).
    """

    name: str
    mode: TilingMode
    patch: tuple[int, int]
    halo: int
    multiple: int
    core: tuple[int, int]
    context: int = 0
    infer_context: bool = False
    batch: int = 1

    def spans(self, axis: int, u0: int, u1: int) -> list[Span]:
        """Patches of this model along ``axis`` (0 = y, 1 = x) for unit ``[u0, u1)``."""
        if self.mode is TilingMode.WINDOW:
            return window_spans(u0, u1, patch=self.patch[axis])
        return conv_spans(
            u0, u1, patch=self.patch[axis], halo=self.halo, multiple=self.multiple
        )

    def count(self, axis: int, u0: int, u1: int) -> int:
        """Number of patches along ``axis`` for unit ``[u0, u1)`` (without building them)."""
        if self.mode is TilingMode.WINDOW:
            p = self.patch[axis]
            return _ceil_div(u1, p) - u0 // p
        return _ceil_div(u1 - u0, self.core[axis])

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (stored in the run attributes)."""
        return {
            "mode": self.mode.value,
            "patch": list(self.patch),
            "halo": self.halo,
            "multiple": self.multiple,
            "core": list(self.core),
            "context": self.context,
            "infer_context": self.infer_context,
        }


def conv_spans(u0: int, u1: int, *, patch: int, halo: int, multiple: int = 1) -> list[Span]:
    """Halo-cropped patches whose cores tile ``[u0, u1)`` exactly once.

    Cores are ``[u0 + k * core, ...)`` with ``core = patch - 2 * halo``; the last one is
    cut at ``u1``.  Every patch starts at ``roundup(core1 + halo - patch, multiple)``:
    for a full core that is ``core0 - halo``; a short last core gets a patch shifted
    back towards the unit (more real pixels, less reflected padding).  Either way the
    core keeps at least ``halo`` pixels of context on both sides and the start is on the
    ``multiple`` grid.

    Parameters
    ----------
    u0, u1 : int
        Unit interval, pixels; ``u0`` must be a multiple of ``multiple``.
    patch, halo, multiple : int
        Patch size (a multiple of ``multiple``), halo (a multiple of ``multiple``) and
        alignment, pixels.
    """
    core = patch - 2 * halo
    if core < 1 or u1 <= u0:
        msg = (
            f"Expected patch > 2 * halo and u1 > u0. Got patch={patch}, halo={halo}, "
            f"[{u0}, {u1})."
        )
        raise ValueError(msg)
    out = []
    for c0 in range(u0, u1, core):
        c1 = min(c0 + core, u1)
        out.append(Span(_round_up(c1 + halo - patch, multiple), c0, c1))
    return out


def window_spans(u0: int, u1: int, *, patch: int) -> list[Span]:
    """Classify windows ``[k * patch, (k + 1) * patch)`` that meet ``[u0, u1)``.

    Each core is the window cut to the unit; a window crossing a unit border is run by
    both units (identically) so the class map does not depend on the tile size.
    """
    return [
        Span(k * patch, max(u0, k * patch), min(u1, (k + 1) * patch))
        for k in range(u0 // patch, _ceil_div(u1, patch))
    ]


def axis_units(length: int, tile: int) -> list[tuple[int, int]]:
    """The intervals ``[k * tile, min((k + 1) * tile, length))`` that tile an axis."""
    return [(a, min(a + tile, length)) for a in range(0, length, tile)]


def model_geometry(
    meta: ModelMeta, *, patch: int | None, batch: int | None = None,
    max_extent: tuple[int, int] | None = None,
) -> ModelGeometry:
    """Choose the fixed patch layout of ``meta`` for a run.

    Parameters
    ----------
    meta : ModelMeta
        Model metadata (task, input patch/multiple/halo).
    patch : int or None
        Requested patch size for fully convolutional models (``--patch``), pixels,
        halo included; rounded down to ``input.multiple``.  None (``--patch auto``):
        :func:`auto_patch` over ``max_extent`` (without one, a square of 2048).
    batch : int or None
        Patches per inference call (``--batch``); None (``--batch auto``):
        :func:`auto_batch` of the chosen patch.
    max_extent : (int, int), optional
        Largest unit extent ``(y, x)`` in the run (``min(tile, image size)``).  Given it,
        a fully convolutional patch shrinks to the smallest size that still covers the
        extent with as many patches as ``patch`` needs (``n = ceil(extent / core)``,
        ``core' = roundup(ceil(extent / n), multiple)``): a 2048 tile with ``--patch
        512`` and halo 6 runs 5 x 5 patches of 422 instead of 512 pixels, and a small
        image is not padded to a big patch.

    Raises
    ------
    ConfigError
        ``patch`` leaves no core after removing the halo, or ``batch`` < 1.
    """
    if batch is not None and batch < 1:
        msg = f"Expected --batch >= 1 or auto. Got --batch {batch}."
        raise ConfigError(msg)
    geometry = _patch_layout(meta, patch=patch, max_extent=max_extent)
    b = auto_batch(geometry.patch) if batch is None else batch
    return replace(geometry, batch=b)


def _patch_layout(
    meta: ModelMeta, *, patch: int | None, max_extent: tuple[int, int] | None
) -> ModelGeometry:
    m = meta.input.multiple
    context = model_context(meta)
    if meta.task is Task.CLASSIFY:
        win = meta.input.patch or (0, 0)  # ModelMeta refuses a classify model without one
        return ModelGeometry(
            name=meta.name, mode=TilingMode.WINDOW, patch=win, halo=0, multiple=1, core=win,
            context=context,
        )
    infer = meta.task is Task.CRATERS
    if infer and max_extent is not None:
        max_extent = (max_extent[0] + 2 * context, max_extent[1] + 2 * context)
    halo = _round_up(meta.input.halo, m)
    if meta.input.patch is not None:
        py, px = meta.input.patch
        cy, cx = _round_down(py - 2 * halo, m), _round_down(px - 2 * halo, m)
        if min(cy, cx) < m:
            msg = (
                f"Model {meta.name!r}: fixed patch {py}x{px} leaves no core after a halo of "
                f"{halo} px on each side. Expected patch > 2 * halo + {m}."
            )
            raise ModelMismatchError(msg)
        return ModelGeometry(
            name=meta.name, mode=TilingMode.CONV, patch=(py, px), halo=halo, multiple=m,
            core=(cy, cx), context=context, infer_context=infer,
        )
    if patch is None:
        py, px = auto_patch(max_extent or (AUTO_EXTENT, AUTO_EXTENT), halo=halo, multiple=m)
        return ModelGeometry(
            name=meta.name, mode=TilingMode.CONV, patch=(py, px), halo=halo, multiple=m,
            core=(py - 2 * halo, px - 2 * halo), context=context, infer_context=infer,
        )
    p = _round_down(patch, m)
    if p - 2 * halo < m:
        msg = (
            f"Expected --patch >= {2 * halo + m} for model {meta.name!r} (halo {halo} px on "
            f"each side, sizes a multiple of {m}). Got --patch {patch}."
        )
        raise ConfigError(msg)
    sizes = [p, p]
    if max_extent is not None:
        core = p - 2 * halo
        for axis in (0, 1):
            # as many patches as the requested size needs, each as small as they allow
            n = _ceil_div(max_extent[axis], core)
            sizes[axis] = min(p, _round_up(_ceil_div(max_extent[axis], n), m) + 2 * halo)
    py, px = sizes
    return ModelGeometry(
        name=meta.name, mode=TilingMode.CONV, patch=(py, px), halo=halo, multiple=m,
        core=(py - 2 * halo, px - 2 * halo), context=context, infer_context=infer,
    )


#: extra pixels a classify head reads beyond ``patch // 2`` so that ``sep`` sees whole
#: sources near the unit border
DETECT_MARGIN = 16
#: crater heads see ``r_max + CRATER_MARGIN`` pixels beyond the unit (rim width, fit)
CRATER_MARGIN = 4
#: onnxruntime's CPU session grew by 2.1x the graph's live-tensor peak on one run of the
#: demo U-Nets (542 / 256 MiB segmenter, 534 / 256 MiB crater model, batch 8 x 512²;
#: layout reorders and arena rounding)
ACTIVATION_FACTOR = 2.2


def model_context(meta: ModelMeta) -> int:
    """Pixels around a unit that a model's task head sees, pixels.

    ``classify``: ``patch // 2 + DETECT_MARGIN`` (cutouts centred on any pixel of the
    unit, and room for source detection); ``segment``: 1 (masked neighbours of border
    pixels); ``craters``: ``postprocess.r_max`` (default 60 px) ``+ CRATER_MARGIN``,
    rounded up to ``input.multiple`` so that the enlarged inference region stays on the
    model's grid.
    """
    if meta.task is Task.CLASSIFY:
        py, px = meta.input.patch or (0, 0)
        return max(py, px) // 2 + DETECT_MARGIN
    if meta.task is Task.SEGMENT:
        return 1
    r_max = float(meta.postprocess.get("r_max", 60.0))
    return _round_up(int(-(-r_max // 1)) + CRATER_MARGIN, meta.input.multiple)


def infer_region(
    g: ModelGeometry, unit: Unit, shape: tuple[int, int] | None = None
) -> Unit:
    """The region model ``g`` runs inference over for ``unit`` (a Unit-shaped box).

    The unit itself, or for ``infer_context`` models the unit ± ``context`` clipped to
    the image ``shape`` (unclipped without one).
    """
    if not g.infer_context or g.context == 0:
        return unit
    c = g.context
    y0, y1, x0, x1 = unit.y0 - c, unit.y1 + c, unit.x0 - c, unit.x1 + c
    if shape is not None:
        y0, y1, x0, x1 = max(0, y0), min(shape[0], y1), max(0, x0), min(shape[1], x1)
    return Unit(unit.uy, unit.ux, y0, y1, x0, x1)


def read_window(
    unit: Unit, models: Sequence[ModelGeometry], *, shape: tuple[int, int] | None = None
) -> tuple[int, int, int, int]:
    """The one pixel window ``(y0, y1, x0, x1)`` a unit reads for all its models.

    It is the union of every model's patches over its :func:`infer_region` (models may
    need different halos) and of the unit ± the ``context`` of models whose heads read
    pixels there, so several models share one read.  It may reach beyond the image
    (reflected).  ``shape`` is the image shape (clips the inference regions of crater
    models).
    """
    ys: list[int] = []
    xs: list[int] = []
    for g in models:
        r = infer_region(g, unit, shape)
        sy = g.spans(0, r.y0, r.y1)
        sx = g.spans(1, r.x0, r.x1)
        ys += [sy[0].start, sy[-1].start + g.patch[0]]
        xs += [sx[0].start, sx[-1].start + g.patch[1]]
        if not g.infer_context:  # the head reads pixels around the unit (reflected)
            ys += [unit.y0 - g.context, unit.y1 + g.context]
            xs += [unit.x0 - g.context, unit.x1 + g.context]
    return (min(ys), max(ys), min(xs), max(xs))


@dataclass(frozen=True, kw_only=True)
class ImagePlan:
    """The work units of one image: a ``(n_units_y, n_units_x)`` grid of ``tile`` chunks."""

    key: str
    shape: tuple[int, int]
    tile: int
    bands: int = 1

    @property
    def grid(self) -> tuple[int, int]:
        """``(n_units_y, n_units_x)``: the ledger shape."""
        return (_ceil_div(self.shape[0], self.tile), _ceil_div(self.shape[1], self.tile))

    @property
    def n_units(self) -> int:
        """Number of work units (= tasks) of this image."""
        gy, gx = self.grid
        return gy * gx

    def unit(self, uy: int, ux: int) -> Unit:
        """The work unit at grid position ``(uy, ux)``."""
        t = self.tile
        ny, nx = self.shape
        return Unit(uy, ux, uy * t, min((uy + 1) * t, ny), ux * t, min((ux + 1) * t, nx))

    def units(self) -> Iterator[Unit]:
        """All work units, row-major."""
        gy, gx = self.grid
        for uy in range(gy):
            for ux in range(gx):
                yield self.unit(uy, ux)

    def _counts(self, g: ModelGeometry, axis: int) -> list[int]:
        n = self.shape[axis]
        c = g.context if g.infer_context else 0
        return [g.count(axis, max(0, a - c), min(n, b + c))
                for a, b in axis_units(n, self.tile)]

    def n_patches(self, g: ModelGeometry) -> int:
        """Patches model ``g`` runs over the whole image (counted, not built)."""
        return sum(self._counts(g, 0)) * sum(self._counts(g, 1))

    def n_batches(self, g: ModelGeometry) -> int:
        """Inference calls of model ``g`` over the image (one batch never spans units)."""
        cy, cx = self._counts(g, 0), self._counts(g, 1)
        return sum(_ceil_div(a * b, g.batch) for a in cy for b in cx)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Images x work units x patches of a run, and what a worker needs to hold.

    One task per work unit runs every model on it, so ``n_tasks == n_units``.
    """

    images: tuple[ImagePlan, ...]
    models: tuple[ModelGeometry, ...]
    tile: int
    classes: Mapping[str, int] = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        """Work units over all images."""
        return sum(im.n_units for im in self.images)

    @property
    def n_tasks(self) -> int:
        """Dask tasks of the run: one fused task per work unit."""
        return self.n_units

    @property
    def n_patches(self) -> int:
        """Model patches over all images and models."""
        return sum(im.n_patches(g) for im in self.images for g in self.models)

    @property
    def n_batches(self) -> int:
        """Inference calls over all images and models."""
        return sum(im.n_batches(g) for im in self.images for g in self.models)

    @property
    def pixels(self) -> int:
        """Image pixels covered by the run."""
        return sum(im.shape[0] * im.shape[1] for im in self.images)

    def unit_patches(self, g: ModelGeometry) -> int:
        """Patches of model ``g`` in the first unit of the first image (a full unit)."""
        if not self.images:
            return 0
        im = self.images[0]
        r = infer_region(g, im.unit(0, 0), im.shape)
        return g.count(0, r.y0, r.y1) * g.count(1, r.x0, r.x1)

    def memory_per_task(self, model_bytes: Mapping[str, int] | None = None,
                        activation_bytes: Mapping[str, int] | None = None, *,
                        lanes: int = 1) -> int:
        """Approximate peak bytes one running task holds.

        ``read`` (unit + halo) x bands x 4 B x 3 (raw, normalised batch, masks) +
        per model: float32 stitched output, float16 copy and uint8 mask of a unit,
        one input and one output batch in float32 (``lanes + 1`` of each when the
        worker's batches run on ``lanes`` >= 2 shared inference lanes, which a unit
        feeds that far ahead: :class:`cnnpipe.pipeline.worker.Lanes`), 2 x the ONNX
        file size for the session (``model_bytes``, name -> bytes) and
        ``ACTIVATION_FACTOR`` x the graph's peak of live intermediate tensors for one
        batch (``activation_bytes``, from
        :func:`cnnpipe.pipeline.activations.peak_activation_bytes`).
        """
        model_bytes = model_bytes or {}
        activation_bytes = activation_bytes or {}
        t = self.tile
        ty = min(t, max((im.shape[0] for im in self.images), default=t))
        tx = min(t, max((im.shape[1] for im in self.images), default=t))
        bands = max((im.bands for im in self.images), default=1)
        # worst-case halo and context reach
        extra = max((g.patch[0] + 2 * g.context for g in self.models), default=0)
        read = (ty + extra) * (tx + extra) * bands * 4 * 3
        ahead = lanes + 1 if lanes > 1 else 1
        per_model = 0
        for g in self.models:
            c = self.classes.get(g.name, 1)
            unit_out = ty * tx * (c * 4 + c * 2 + 1)
            batch_io = g.batch * g.patch[0] * g.patch[1] * 4 * (bands + c) * ahead
            per_model += (unit_out + batch_io + 2 * model_bytes.get(g.name, 0)
                          + int(ACTIVATION_FACTOR * activation_bytes.get(g.name, 0)))
        return read + per_model

    def describe(self, *, threads_per_worker: int = 1,
                 model_bytes: Mapping[str, int] | None = None,
                 activation_bytes: Mapping[str, int] | None = None) -> list[str]:
        """Human-readable lines for ``--dry-run``."""
        mem = self.memory_per_task(model_bytes, activation_bytes,
                                   lanes=threads_per_worker) * threads_per_worker
        acts = "network activations included" if activation_bytes else (
            "network activations not counted")
        lines = [
            f"images: {len(self.images)} ({self.pixels / 1e6:.1f} Mpix)",
            f"work units: {self.n_units} (tile {self.tile}x{self.tile})",
            f"patches: {self.n_patches} in {self.n_batches} batches",
            f"tasks: {self.n_tasks}",
            f"expected memory per worker: {mem / 2**20:.0f} MiB "
            f"({threads_per_worker} concurrent unit(s), {acts})",
        ]
        for im in self.images:
            gy, gx = im.grid
            lines.append(f"  image {im.key}: {im.shape[0]}x{im.shape[1]} px, "
                         f"{im.bands} band(s), {gy}x{gx} units")
        for g in self.models:
            lines.append(f"  model {g.name}: {g.mode.value} patches {g.patch[0]}x{g.patch[1]}, "
                         f"halo {g.halo}, core {g.core[0]}x{g.core[1]}, context {g.context}, "
                         f"batch {g.batch} ({self.unit_patches(g)} patches in the first unit)")
        return lines


def make_plan(
    images: Sequence[tuple[str, tuple[int, int], int]],
    models: Sequence[ModelMeta],
    *,
    tile: int,
    patch: int | None = None,
    batch: int | None = None,
) -> Plan:
    """Plan a run.

    Parameters
    ----------
    images : sequence of (key, (ny, nx), n_bands)
        The input images.
    models : sequence of ModelMeta
        The models (all run on every image).
    tile : int
        Work-unit (= output chunk) size, pixels; a multiple of every model's
        ``input.multiple``.
    patch : int or None
        Patch size of fully convolutional models, pixels, halo included; None: chosen
        per model by :func:`auto_patch` (``--patch auto``).
    batch : int or None
        Patches per inference call; None: :func:`auto_batch` per model.

    Raises
    ------
    ConfigError
        A setting does not fit a model (tile alignment, patch too small).
    """
    if tile < 1 or (batch is not None and batch < 1):
        msg = (f"Expected --tile >= 1 and --batch >= 1 (or auto). Got --tile {tile}, "
               f"--batch {batch}.")
        raise ConfigError(msg)
    for meta in models:
        m = meta.input.multiple
        if meta.task is not Task.CLASSIFY and tile % m:
            msg = (
                f"Expected --tile to be a multiple of {m}, the input multiple of model "
                f"{meta.name!r}. Got --tile {tile}; use --tile {_round_up(tile, m)}."
            )
            raise ConfigError(msg)
    ext_y = min(tile, max((s[0] for _, s, _ in images), default=tile))
    ext_x = min(tile, max((s[1] for _, s, _ in images), default=tile))
    geoms = tuple(model_geometry(m, patch=patch, batch=batch, max_extent=(ext_y, ext_x))
                  for m in models)
    classes = {
        m.name: (1 if m.task is Task.CRATERS else len(m.output.classes)) for m in models
    }
    return Plan(
        images=tuple(ImagePlan(key=k, shape=(int(s[0]), int(s[1])), tile=tile, bands=b)
                     for k, s, b in images),
        models=geoms,
        tile=tile,
        classes=classes,
    )
