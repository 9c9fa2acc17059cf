"""Crater extraction (cnnpipe.pipeline.craterfind) and matching (cnnpipe.pipeline.cratermatch)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from cnnpipe.errors import ConfigError, InputError
from cnnpipe.pipeline.craterfind import CraterCandidates, find_craters, ring_template
from cnnpipe.pipeline.cratermatch import match_craters
from cnnpipe.testing.craters import CraterCatalog, make_crater_catalog, render_crater_window


def _ring_map(shape: tuple[int, int], rings: list[tuple[float, float, float]]) -> np.ndarray:
    """The simulator's rim mask convention: 1 where |rho - R| <= 1 px."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    out = np.zeros(shape, np.float32)
    for x, y, r in rings:
        out[np.abs(np.hypot(yy - y, xx - x) - r) <= 1.0] = 1.0
    return out


def _stand_in_heat(mask: np.ndarray, seed: int) -> np.ndarray:
    """A good network's heat map: the truth rim mask, slightly blurred, plus noise."""
    rng = np.random.default_rng(seed)
    blurred = ndimage.gaussian_filter(mask.astype(np.float32), 0.7)
    return np.clip(blurred + rng.normal(0.0, 0.1, mask.shape), 0.0, 1.0).astype(np.float32)


def _detectable(cat: CraterCatalog) -> np.ndarray:
    """Craters with 2 r >= 10 px and more than half of the rim visible and in the image.

    ``rim_visible`` is the fraction not erased by later craters; the fraction of the rim
    inside the image is sampled at 64 points (the product approximates both at once).
    """
    phi = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
    px = cat.x[:, None] + cat.radius[:, None] * np.cos(phi)
    py = cat.y[:, None] + cat.radius[:, None] * np.sin(phi)
    ny, nx = cat.shape
    inside = ((px > -0.5) & (px < nx - 0.5) & (py > -0.5) & (py < ny - 0.5)).mean(axis=1)
    return (cat.rim_visible * inside > 0.5) & (2.0 * cat.radius >= 10.0)


@pytest.mark.parametrize(
    ("x", "y", "r"),
    [(40.3, 41.7, 4.2), (64.6, 63.2, 11.4), (100.25, 99.8, 23.7), (128.4, 127.1, 47.3)],
)
def test_isolated_ring_is_found_to_sub_pixel(x: float, y: float, r: float) -> None:
    heat = _ring_map((256, 256), [(x, y, r)])
    found = find_craters(heat)
    assert len(found) == 1
    assert abs(found.x[0] - x) < 0.1
    assert abs(found.y[0] - y) < 0.1
    assert abs(found.radius[0] - r) < 0.15
    assert found.score[0] > 0.9
    # no refinement: the template grid and parabola alone are coarser but close
    coarse = find_craters(heat, refine=False)
    assert len(coarse) == 1
    assert np.hypot(coarse.x[0] - x, coarse.y[0] - y) < max(0.6, 0.05 * r)
    assert abs(coarse.radius[0] - r) < max(0.6, 0.06 * r)


def test_overlapping_rings_and_nodata() -> None:
    rings = [(60.0, 60.0, 20.0), (85.0, 62.0, 14.0), (150.0, 150.0, 30.0), (200.0, 60.0, 6.0)]
    heat = _ring_map((256, 256), rings)
    found = find_craters(heat)
    res = match_craters(found.xyr, np.array(rings))
    assert res.recall == 1.0
    assert res.precision == 1.0
    # the right half without data: only the craters wholly on the left remain
    heat[:, 128:] = np.nan
    found = find_craters(heat)
    res = match_craters(found.xyr, np.array(rings))
    assert sorted(res.pairs[:, 1].tolist()) == [0, 1]
    assert np.all(found.x < 128)


def test_transposed_map_gives_transposed_craters() -> None:
    cat = make_crater_catalog(256, seed=5)
    _, mask = render_crater_window(cat, 0, 0, cat.shape, noise=False)
    heat = _stand_in_heat(mask, 5)
    a = find_craters(heat)
    b = find_craters(np.ascontiguousarray(heat.T))
    swapped = np.stack([b.y, b.x, b.radius], axis=1)
    res = match_craters(a.xyr, swapped, pos_frac=0.05, rad_frac=0.02)
    assert len(a) > 50
    assert res.recall > 0.97
    assert res.precision > 0.97


@pytest.mark.parametrize("seed", [7, 123])
def test_recall_and_precision_on_a_simulated_field(seed: int) -> None:
    # The target for craters of diameter >= 10 px, with the truth rim mask
    # (blurred, noisy) standing in for a good network.
    cat = make_crater_catalog(512, seed=seed)
    _, mask = render_crater_window(cat, 0, 0, cat.shape, noise=False)
    found = find_craters(_stand_in_heat(mask, seed))
    truth = np.stack([cat.x, cat.y, cat.radius], axis=1)
    res = match_craters(found.xyr, truth, pos_frac=0.5, rad_frac=0.3,
                        truth_select=_detectable(cat), pred_select=2.0 * found.radius >= 10.0)
    assert res.n_truth > 150
    assert res.recall >= 0.85
    assert res.precision >= 0.85
    # matched craters are placed well within the tolerance
    p, t = res.pairs[:, 0], res.pairs[:, 1]
    big = 2.0 * truth[t, 2] >= 10.0
    dpos = np.hypot(found.x[p] - truth[t, 0], found.y[p] - truth[t, 1]) / truth[t, 2]
    drad = np.abs(found.radius[p] - truth[t, 2]) / truth[t, 2]
    assert np.median(dpos[big]) < 0.05
    assert np.median(drad[big]) < 0.05


def test_results_are_sorted_and_empty_map_gives_empty_schema() -> None:
    heat = _ring_map((128, 128), [(30.0, 30.0, 8.0), (90.0, 90.0, 15.0)])
    heat[60:70, 20:40] = 1.0  # a blob is no crater
    found = find_craters(heat)
    assert len(found) == 2
    assert np.all(np.diff(found.score) <= 0)
    assert found.xyr.shape == (2, 3)
    empty = find_craters(np.zeros((64, 64)))
    assert len(empty) == 0
    assert empty.xyr.shape == (0, 3)
    assert isinstance(empty, CraterCandidates)
    assert len(find_craters(np.full((64, 64), np.nan))) == 0


def test_radius_range_is_respected() -> None:
    heat = _ring_map((200, 200), [(50.0, 50.0, 5.0), (130.0, 130.0, 30.0)])
    large = find_craters(heat, r_min=15, r_max=40)
    assert np.allclose(large.xyr, [[130.0, 130.0, 30.0]], atol=0.2)
    small = find_craters(heat, r_min=3, r_max=12)
    assert np.allclose(small.xyr[0], [50.0, 50.0, 5.0], atol=0.2)
    assert small.radius.max() <= 12 * 1.1
    # The large rim, unclaimed at these radii, is matched by small rings tangent to it
    # (documented): search the full range and select afterwards.
    assert np.all(np.abs(np.hypot(small.x[1:] - 130, small.y[1:] - 130) - 30) < 5)


def test_ring_template_is_zero_sum_with_unit_ring() -> None:
    t = ring_template(10.0, 3.0, 3.0)
    h = 16  # ceil(10 + 3 / 2 + 3 + 1)
    assert t.shape == (2 * h + 1, 2 * h + 1)
    assert abs(t.sum()) < 1e-12
    assert t[t > 0].sum() == pytest.approx(1.0, abs=0.03)  # soft edges overlap the bands
    assert t[h, h + 10] > 0  # on the ring
    assert t[h, h] == 0  # centre: neither ring nor guard band
    assert t[h, h + 6] < 0  # inner guard band
    assert t[h, h + 14] < 0  # outer guard band
    assert t[h, h + 16] == 0


def test_odd_shapes_and_values_do_not_break_it() -> None:
    rng = np.random.default_rng(0)
    for i in range(60):
        ny, nx = (int(v) for v in rng.integers(1, 70, 2))
        heat = [rng.random((ny, nx)), (rng.random((ny, nx)) > 0.8).astype(float),
                np.where(rng.random((ny, nx)) > 0.5, 1.0, np.nan),
                rng.normal(0, 3, (ny, nx)), np.ones((ny, nx))][i % 5]  # fmt: skip
        r_min = float(rng.uniform(1, 5))
        found = find_craters(heat, r_min=r_min, r_max=r_min + float(rng.uniform(1, 70)),
                             match_threshold=float(rng.uniform(0.05, 1)),
                             pyramid_radius=float(rng.uniform(4, 10)))  # fmt: skip
        assert np.isfinite(found.xyr).all()
        assert np.all(found.radius > 0)
        assert np.all(found.score <= 1.0)


def test_errors() -> None:
    with pytest.raises(InputError, match=r"\(y, x\)"):
        find_craters(np.zeros(10))
    with pytest.raises(ConfigError, match="r_min < r_max"):
        find_craters(np.zeros((10, 10)), r_min=5, r_max=5)
    with pytest.raises(ConfigError, match="match_threshold"):
        find_craters(np.zeros((10, 10)), match_threshold=0)


# -- matching ------------------------------------------------------------------------------


def test_match_criteria_and_one_to_one() -> None:
    truth = np.array([[0.0, 0.0, 10.0], [100.0, 0.0, 10.0], [200.0, 0.0, 4.0]])
    pred = np.array([
        [4.9, 0.0, 10.0],    # centre 0.49 r away: a match
        [1.0, 0.0, 10.5],    # a better match for truth 0: takes it, 4.9 becomes a FP
        [100.0, 5.1, 10.0],  # 0.51 r: no match
        [200.0, 0.0, 5.3],   # radius 32 % off: no match
    ])  # fmt: skip
    res = match_craters(pred, truth)
    assert res.pairs.tolist() == [[1, 0]]
    assert res.recall == pytest.approx(1 / 3)
    assert res.precision == pytest.approx(1 / 4)
    loose = match_craters(pred, truth, pos_frac=0.6, rad_frac=0.35)
    assert sorted(loose.pairs.tolist()) == [[1, 0], [2, 1], [3, 2]]


def test_match_selection_counts() -> None:
    truth = np.array([[0.0, 0.0, 10.0], [50.0, 0.0, 3.0]])
    pred = np.array([[0.0, 0.0, 10.0], [50.0, 0.0, 3.0], [90.0, 0.0, 3.0]])
    # recall over the large truth crater only; precision over the small detections, of
    # which one matches a (non-selected) truth crater
    res = match_craters(pred, truth, truth_select=[True, False],
                        pred_select=pred[:, 2] < 5)  # fmt: skip
    assert (res.n_truth, res.n_pred) == (1, 2)
    assert res.recall == 1.0
    assert res.precision == 0.5
    none = match_craters(np.zeros((0, 3)), truth)
    assert none.recall == 0.0
    assert np.isnan(none.precision)
    assert none.pairs.shape == (0, 2)


def test_match_errors() -> None:
    with pytest.raises(InputError, match=r"\(n, 3\)"):
        match_craters(np.zeros((2, 2)), np.zeros((0, 3)))
    with pytest.raises(InputError, match="one flag per row"):
        match_craters(np.ones((2, 3)), np.ones((1, 3)), pred_select=[True])
    with pytest.raises(ConfigError, match="pos_frac"):
        match_craters(np.ones((1, 3)), np.ones((1, 3)), pos_frac=0)


@pytest.mark.slow
def test_speed_2048() -> None:
    cat = make_crater_catalog(2048, seed=11)
    _, mask = render_crater_window(cat, 0, 0, cat.shape, noise=False)
    heat = _stand_in_heat(mask, 11)
    t0 = time.perf_counter()
    found = find_craters(heat)
    elapsed = time.perf_counter() - t0
    res = match_craters(found.xyr, np.stack([cat.x, cat.y, cat.radius], axis=1),
                        truth_select=_detectable(cat), pred_select=2.0 * found.radius >= 10.0)
    assert res.recall >= 0.85
    assert res.precision >= 0.85
    assert elapsed < 30.0
