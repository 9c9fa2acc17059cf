"""Catalog column schemas: names, dtypes, units and descriptions of every task's catalog.

Pure (no numpy arrays, no I/O).  A catalog ``catalogs/<model>/`` in the run store has one
1-D array per column, in :func:`catalog_schema` order, with ``unit`` and ``description``
in the column's attributes; the exports (Parquet, FITS, VOTable, CSV) carry the same.

Every catalog starts with the common columns ``image, x, y, <world>, model, flags``:

* ``x``, ``y``: 0-based pixel coordinates, pixel centres on integers (the numpy /
  astropy ``pixel_to_world`` convention; add 1 for FITS / ds9 pixel coordinates);
* world coordinates, present when at least one image of the store has a celestial WCS
  (NaN in rows of images without one): ``ra``, ``dec`` (deg) for equatorial WCSs,
  ``lon``, ``lat`` (deg) for any other (galactic, ecliptic, or planetocentric body-fixed
  CTYPEs such as ``SELN-CAR`` / ``SELT-CAR``) — both pairs when a store mixes them;
  computed with ``astropy.wcs.WCS.all_pix2world(x, y, 0)`` (SIP included);
* ``flags``: bit values :data:`FLAG_MASKED` = 1 (touches pixels without data),
  :data:`FLAG_EDGE` = 2 (touches the image edge; for cutouts: the cutout reaches beyond
  the image and was filled by reflection).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cnnpipe.modelmeta import ModelMeta, Task

__all__ = [
    "FLAGS_DESCRIPTION",
    "FLAG_EDGE",
    "FLAG_MASKED",
    "PIXEL_CONVENTION",
    "Column",
    "catalog_schema",
    "common_columns",
    "prob_column",
    "task_columns",
    "world_columns",
]

#: flag bit: the source touches pixels without data
FLAG_MASKED = 1
#: flag bit: the source touches the image edge
FLAG_EDGE = 2

PIXEL_CONVENTION = "0-based pixel, numpy / astropy pixel_to_world convention"
FLAGS_DESCRIPTION = (
    "bit flags: 1 = touches pixels without data (masked/NaN/BLANK), 2 = touches the "
    "image edge (cutouts: reaches beyond the image, filled by reflection)"
)


@dataclass(frozen=True)
class Column:
    """One catalog column.

    ``dtype`` is a numpy dtype string (``"f8"``, ``"i8"``, ``"u1"``) or ``"str"``
    (variable-length UTF-8); ``unit`` an astropy unit string ("" for none).
    """

    name: str
    dtype: str
    unit: str
    description: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form (stored in the catalog group's ``schema`` attribute)."""
        return {"name": self.name, "dtype": self.dtype, "unit": self.unit,
                "description": self.description}


def world_columns(kinds: Sequence[str]) -> list[Column]:
    """World-coordinate columns for the WCS kinds of a store's images.

    ``kinds`` holds ``"equatorial"`` and/or ``"other"`` (see module docstring).
    """
    src = "astropy WCS.all_pix2world(x, y, 0) of the image header, SIP included"
    out = []
    if "equatorial" in kinds:
        out += [
            Column("ra", "f8", "deg", f"right ascension (frame RADESYS of the WCS), {src}"),
            Column("dec", "f8", "deg", f"declination (frame RADESYS of the WCS), {src}"),
        ]
    if "other" in kinds:
        out += [
            Column("lon", "f8", "deg", "longitude of the WCS frame (planetocentric, "
                   f"east-positive for body-fixed CTYPEs such as SELN), {src}"),
            Column("lat", "f8", "deg", "latitude of the WCS frame (planetocentric for "
                   f"body-fixed CTYPEs such as SELT), {src}"),
        ]
    return out


def common_columns(world: Sequence[Column], *, what: str) -> tuple[list[Column], list[Column]]:
    """The common leading columns (``image, x, y, <world>``) and trailing ones.

    Returns ``(head, tail)``: the task columns go between ``world`` and ``model``.
    """
    head = [
        Column("image", "str", "", "key of the input image in the run store (images/<key>)"),
        Column("x", "f8", "pix", f"{what} column, {PIXEL_CONVENTION}"),
        Column("y", "f8", "pix", f"{what} row, {PIXEL_CONVENTION}"),
        *world,
    ]
    tail = [
        Column("model", "str", "", "name of the model that produced the row"),
        Column("flags", "u1", "", FLAGS_DESCRIPTION),
    ]
    return head, tail


def prob_column(name: str, what: str) -> Column:
    """The probability column ``p_<name>`` of one class."""
    return Column(f"p_{name}", "f8", "", what.format(name=name))


def task_columns(meta: ModelMeta, *, id_dtype: str = "i8") -> list[Column]:
    """The task-specific columns of a model's catalog (between the common ones)."""
    classes = meta.output.classes
    if meta.task is Task.SEGMENT:
        return [
            Column("class", "str", "", "class name (model output.classes)"),
            Column("class_id", "i8", "", "class index (the value in the mask)"),
            Column("area_px", "i8", "pix2", "area, pixels (8-connected component)"),
            Column("area_arcsec2", "f8", "arcsec2",
                   "area: area_px times the solid angle of a pixel at the centroid "
                   "(Jacobian of all_pix2world); NaN without WCS"),
            Column("bbox_ymin", "i8", "pix", f"first row of the bounding box, {PIXEL_CONVENTION}"),
            Column("bbox_ymax", "i8", "pix",
                   f"last row of the bounding box (inclusive), {PIXEL_CONVENTION}"),
            Column("bbox_xmin", "i8", "pix",
                   f"first column of the bounding box, {PIXEL_CONVENTION}"),
            Column("bbox_xmax", "i8", "pix",
                   f"last column of the bounding box (inclusive), {PIXEL_CONVENTION}"),
            *(prob_column(c, "mean probability of class {name} over the segment's pixels")
              for c in classes),
        ]
    if meta.task is Task.CRATERS:
        return [
            Column("radius_px", "f8", "pix", "rim radius, pixels"),
            Column("diameter_km", "f8", "km",
                   "rim diameter: 2 radius_px PIXSCALE (header, km/px), else 2 radius_px "
                   "times the WCS pixel scale (rad) times A_RADIUS; NaN when unknown"),
            Column("diameter_arcsec", "f8", "arcsec",
                   "rim diameter on the sky (celestial WCS only): 2 radius_px times the "
                   "local pixel scale; NaN otherwise"),
            Column("score", "f8", "", "ring-template match score (normalised "
                   "cross-correlation, -1..1)"),
        ]
    return [
        Column("id", id_dtype, "",
               "id column of the input catalog (its row index if it has none); for "
               "sources detected by sep: a running number in (y, x) order per image; for "
               "sliding windows (--catalog windows): the window number, row-major, "
               "(y0 // patch_y) * ceil(image width / patch_x) + x0 // patch_x of its "
               "first pixel (y0, x0)"),
        *(prob_column(c, "probability of class {name}") for c in classes),
        Column("class", "str", "", "most probable class (name)"),
        Column("class_id", "i8", "", "most probable class (index into output.classes)"),
    ]


def catalog_schema(
    meta: ModelMeta, world: Sequence[Column] = (), *, id_dtype: str = "i8"
) -> list[Column]:
    """All columns of a model's catalog, in order."""
    what = {Task.SEGMENT: "centroid", Task.CRATERS: "crater centre",
            Task.CLASSIFY: "source position or window centre"}[meta.task]
    head, tail = common_columns(world, what=what)
    return [*head, *task_columns(meta, id_dtype=id_dtype), *tail]
