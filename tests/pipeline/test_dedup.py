"""De-duplication of crater detections (cnnpipe.pipeline.dedup): pure, property-tested."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnpipe.errors import ConfigError, InputError
from cnnpipe.pipeline.dedup import dedupe_craters, duplicate_pairs


def _rows(
    x: np.ndarray, y: np.ndarray, r: np.ndarray, s: np.ndarray, idx: np.ndarray
) -> set[tuple[float, float, float, float]]:
    return {(float(x[i]), float(y[i]), float(r[i]), float(s[i])) for i in idx}


@st.composite
def detections(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    n = draw(st.integers(0, 40))
    # A coarse grid of values makes exact ties in score and near-duplicates likely.
    coord = st.integers(0, 60).map(lambda v: v / 2)
    x = np.array(draw(st.lists(coord, min_size=n, max_size=n)), dtype=float)
    y = np.array(draw(st.lists(coord, min_size=n, max_size=n)), dtype=float)
    r = np.array(draw(st.lists(st.integers(4, 40).map(lambda v: v / 2), min_size=n,
                               max_size=n)), dtype=float)
    s = np.array(draw(st.lists(st.integers(0, 5).map(lambda v: v / 5), min_size=n,
                               max_size=n)), dtype=float)
    perm = np.array(draw(st.permutations(list(range(n)))), dtype=np.int64)
    return x, y, r, s, perm


@settings(max_examples=100, deadline=None)
@given(detections())
def test_kept_set_does_not_depend_on_input_order(case: tuple[np.ndarray, ...]) -> None:
    x, y, r, s, perm = case
    kept = dedupe_craters(x, y, r, s)
    kept_p = dedupe_craters(x[perm], y[perm], r[perm], s[perm])
    assert _rows(x, y, r, s, kept) == _rows(x[perm], y[perm], r[perm], s[perm], kept_p)
    assert len(kept) == len(kept_p)


@settings(max_examples=100, deadline=None)
@given(detections())
def test_idempotent_and_kept_are_pairwise_distinct(case: tuple[np.ndarray, ...]) -> None:
    x, y, r, s, _ = case
    kept = dedupe_craters(x, y, r, s)
    assert np.all(np.diff(kept) > 0)
    again = dedupe_craters(x[kept], y[kept], r[kept], s[kept])
    np.testing.assert_array_equal(again, np.arange(kept.size))
    i, _ = duplicate_pairs(x[kept], y[kept], r[kept])
    assert i.size == 0
    # every dropped detection duplicates a kept one with a score at least as high
    dropped = np.setdiff1d(np.arange(x.size), kept)
    for d in dropped:
        rbar = 0.5 * (r[d] + r[kept])
        dup = (np.hypot(x[d] - x[kept], y[d] - y[kept]) < 0.5 * rbar) & (
            np.abs(r[d] - r[kept]) < 0.3 * rbar)
        assert dup.any()
        assert s[kept][dup].max() >= s[d]


@settings(max_examples=50, deadline=None)
@given(detections())
def test_pairs_match_brute_force(case: tuple[np.ndarray, ...]) -> None:
    x, y, r, _, _ = case
    i, j = duplicate_pairs(x, y, r, pos_frac=0.7, rad_frac=0.4)
    got = set(zip(i.tolist(), j.tolist()))
    want = set()
    for a in range(x.size):
        for b in range(a + 1, x.size):
            rbar = 0.5 * (r[a] + r[b])
            if np.hypot(x[a] - x[b], y[a] - y[b]) < 0.7 * rbar and abs(r[a] - r[b]) < 0.4 * rbar:
                want.add((a, b))
    assert got == want


def test_criterion_values_and_best_score_wins() -> None:
    # centre offset 4 px, mean radius 10: 4 < 0.5 * 10 -> duplicate; radii 9 / 11: 2 < 3
    x = np.array([0.0, 4.0, 40.0, 44.0, 80.0, 80.0])
    y = np.zeros(6)
    r = np.array([9.0, 11.0, 10.0, 10.0, 10.0, 14.0])
    s = np.array([0.5, 0.9, 0.8, 0.7, 0.6, 0.95])
    # pair (2, 3): offset 4 < 5 -> duplicate, 2 wins; pair (4, 5): |dr| = 4 >= 0.3 * 12
    np.testing.assert_array_equal(dedupe_craters(x, y, r, s), [1, 2, 4, 5])
    # offset 6 px: not a duplicate at pos_frac 0.5, one at 0.7
    x2, r2 = np.array([0.0, 6.0]), np.array([10.0, 10.0])
    assert dedupe_craters(x2, np.zeros(2), r2, [1, 0]).tolist() == [0, 1]
    assert dedupe_craters(x2, np.zeros(2), r2, [1, 0], pos_frac=0.7).tolist() == [0]


def test_exact_ties_are_broken_by_position_not_index() -> None:
    x = np.array([3.0, 0.0])
    r = np.array([10.0, 10.0])
    assert dedupe_craters(x, np.zeros(2), r, [1.0, 1.0]).tolist() == [1]  # smaller x wins
    assert dedupe_craters(x[::-1], np.zeros(2), r, [1.0, 1.0]).tolist() == [0]


def test_chain_is_resolved_greedily() -> None:
    # a-b and b-c are duplicates, a-c are not: a (best) suppresses b; c survives
    x = np.array([0.0, 4.0, 8.0])
    out = dedupe_craters(x, np.zeros(3), np.full(3, 10.0), [0.9, 0.8, 0.7])
    assert out.tolist() == [0, 2]


def test_many_near_duplicates_collapse_to_about_one_each() -> None:
    rng = np.random.default_rng(0)
    n = 50_000
    x, y = rng.uniform(0, 4000, n), rng.uniform(0, 4000, n)
    r = rng.uniform(3, 30, n)
    x2 = np.concatenate([x, x + rng.normal(0, 0.5, n)])
    y2 = np.concatenate([y, y + rng.normal(0, 0.5, n)])
    r2 = np.concatenate([r, r * rng.uniform(0.95, 1.05, n)])
    keep = dedupe_craters(x2, y2, r2, rng.uniform(0, 1, 2 * n))
    assert n * 0.8 < keep.size < n * 1.05


def test_empty_and_errors() -> None:
    assert dedupe_craters([], [], [], []).size == 0
    with pytest.raises(InputError, match="one length"):
        dedupe_craters([0.0], [0.0, 1.0], [1.0], [1.0])
    with pytest.raises(InputError, match="radii > 0"):
        dedupe_craters([0.0], [0.0], [0.0], [1.0])
    with pytest.raises(InputError, match="finite"):
        dedupe_craters([np.nan], [0.0], [1.0], [1.0])
    with pytest.raises(ConfigError, match="rad_frac"):
        dedupe_craters([0.0], [0.0], [1.0], [1.0], rad_frac=2.0)
