"""Pure segment maths: per-unit components joined across unit borders = whole-image labels."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from cnnpipe.pipeline.segments import (
    FLAG_EDGE,
    FLAG_MASKED,
    NODATA,
    UnitComponents,
    join_components,
    unit_components,
)

EIGHT = np.ones((3, 3), bool)


def whole_image_segments(mask: np.ndarray, probs: np.ndarray) -> list[tuple]:
    """Reference: scipy.ndimage.label per class on the whole image."""
    ny, nx = mask.shape
    near = ndimage.binary_dilation(mask == NODATA, structure=EIGHT)
    rows = []
    for c in np.unique(mask):
        if c in (0, NODATA):
            continue
        lab, n = ndimage.label(mask == c, structure=EIGHT)
        for k, (sy, sx) in enumerate(ndimage.find_objects(lab), start=1):
            yy, xx = np.nonzero(lab == k)
            flags = (FLAG_MASKED if near[yy, xx].any() else 0) | (
                FLAG_EDGE if (sy.start == 0 or sx.start == 0 or sy.stop == ny or sx.stop == nx)
                else 0)
            pm = tuple(round(float(probs[j, yy, xx].mean()), 9) for j in range(probs.shape[0]))
            rows.append((int(c), yy.size, xx.sum() / yy.size, yy.sum() / yy.size, sy.start,
                         sy.stop - 1, sx.start, sx.stop - 1, flags, pm))
    return sorted(rows)


def tiled_segments(mask: np.ndarray, probs: np.ndarray, ty: int, tx: int) -> list[tuple]:
    ny, nx = mask.shape
    nodata = np.pad(mask == NODATA, 1)  # False outside the image
    units = []
    for uy, y0 in enumerate(range(0, ny, ty)):
        for ux, x0 in enumerate(range(0, nx, tx)):
            y1, x1 = min(y0 + ty, ny), min(x0 + tx, nx)
            cols = unit_components(
                mask[y0:y1, x0:x1], origin=(y0, x0), image_shape=(ny, nx),
                nodata_ring=nodata[y0:y1 + 2, x0:x1 + 2], probs=probs[:, y0:y1, x0:x1],
            )
            units.append(UnitComponents(uy=uy, ux=ux, columns=cols))
    out = join_components(units[::-1], n_classes=probs.shape[0])  # order must not matter
    return sorted(
        (int(c), int(a), float(x), float(y), int(y0), int(y1), int(x0), int(x1), int(f),
         tuple(round(float(out[f"pmean_{j}"][i]), 9) for j in range(probs.shape[0])))
        for i, (c, a, x, y, y0, y1, x0, x1, f) in enumerate(zip(
            out["class_id"], out["area"], out["x"], out["y"], out["ymin"], out["ymax"],
            out["xmin"], out["xmax"], out["flags"]))
    )


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40), st.integers(1, 40), st.integers(1, 12), st.integers(1, 12),
    st.integers(0, 2**32 - 1), st.floats(0.0, 0.3), st.integers(1, 4),
)
def test_joined_unit_components_equal_whole_image_labelling(
    ny: int, nx: int, ty: int, tx: int, seed: int, p_nodata: float, n_classes: int
) -> None:
    rng = np.random.default_rng(seed)
    # blobby classes: smoothed noise quantised, so components cross unit borders
    field = ndimage.uniform_filter(rng.normal(size=(ny, nx)), 3)
    mask = np.digitize(field, np.quantile(field, np.linspace(0, 1, n_classes + 2)[1:-1]))
    mask = mask.astype(np.uint8)
    mask[rng.random((ny, nx)) < p_nodata] = NODATA
    probs = rng.random((n_classes + 1, ny, nx))
    assert tiled_segments(mask, probs, ty, tx) == whole_image_segments(mask, probs)


def test_diagonal_join_across_a_unit_corner_and_empty_units() -> None:
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 1] = mask[2, 2] = 1  # touch only diagonally, across the corner of 2x2 units
    mask[1, 2] = mask[2, 1] = 2  # the other diagonal, another class
    probs = np.ones((3, 4, 4))
    rows = tiled_segments(mask, probs, 2, 2)
    assert [(r[0], r[1]) for r in rows] == [(1, 2), (2, 2)]
    assert join_components([], n_classes=2)["pmean_1"].shape == (0,)


def per_class_components(mask: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Reference: one whole-unit ndimage.label per class value, classes ascending."""
    rows: list[tuple] = []
    edge_ids = {k: np.full(n, -1, np.int64) for k, n in
                (("edge_top", mask.shape[1]), ("edge_bottom", mask.shape[1]),
                 ("edge_left", mask.shape[0]), ("edge_right", mask.shape[0]))}
    for c in np.unique(mask):
        if c in (0, NODATA):
            continue
        lab, n = ndimage.label(mask == c, structure=EIGHT)
        for k in range(1, n + 1):
            yy, xx = np.nonzero(lab == k)
            i = len(rows)
            for name, line in (("edge_top", lab[0]), ("edge_bottom", lab[-1]),
                               ("edge_left", lab[:, 0]), ("edge_right", lab[:, -1])):
                edge_ids[name][line == k] = i
            rows.append((int(c), yy.size, int(xx.sum()), int(yy.sum()), yy.min(), yy.max(),
                         xx.min(), xx.max(), *(float(probs[j, yy, xx].sum())
                                              for j in range(probs.shape[0]))))
    cols = list(zip(*rows)) if rows else [()] * (8 + probs.shape[0])
    names = ["class_id", "area", "sum_x", "sum_y", "ymin", "ymax", "xmin", "xmax",
             *(f"psum_{j}" for j in range(probs.shape[0]))]
    out = {n: np.asarray(v) for n, v in zip(names, cols)}
    out.update(edge_ids)
    return out


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**32 - 1),
       st.integers(1, 7), st.floats(0.0, 0.3), st.booleans())
def test_unit_components_rows_and_order_equal_one_labelling_per_class(
    ny: int, nx: int, seed: int, n_values: int, p_nodata: float, high: bool
) -> None:
    """Same rows, same order, same edge arrays as labelling each class separately
    (fragments of earlier runs and the merge depend on that order)."""
    rng = np.random.default_rng(seed)
    field = ndimage.uniform_filter(rng.normal(size=(ny, nx)), 2)
    mask = np.digitize(field, np.quantile(field, np.linspace(0, 1, n_values + 1)[1:-1]))
    mask = mask.astype(np.uint8) * (37 if high else 1)  # class values beyond the probs too
    mask[rng.random((ny, nx)) < p_nodata] = NODATA
    probs = rng.random((3, ny, nx))
    got = unit_components(mask, origin=(0, 0), image_shape=(ny, nx), probs=probs)
    ref = per_class_components(mask, probs)
    for name, want in ref.items():
        if name.startswith("psum_"):
            np.testing.assert_allclose(got[name], want, rtol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want, err_msg=name)
