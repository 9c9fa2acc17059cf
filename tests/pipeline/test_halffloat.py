"""to_float16 is numpy's float32 -> float16 cast, bit for bit."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cnnpipe.pipeline.halffloat import to_float16

EDGES = np.array([0.0, -0.0, np.inf, -np.inf, 2**-14, -(2**-14), 2**-24, 2**-25, 3 * 2**-26,
                  2**-14 - 2**-25, 2**-14 - 2**-26, 65504.0, 65520.0, 1e6, 0.5, -1e-7],
                 dtype=np.float32)


def _same(x: np.ndarray) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16)
        got = to_float16(x)
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all()
    assert (got.view(np.uint16)[~nan] == want.view(np.uint16)[~nan]).all()


def test_edges_and_every_scale() -> None:
    _same(EDGES)
    rng = np.random.default_rng(0)
    for scale in (1e-9, 1e-7, 1e-6, 6e-5, 1e-4, 1.0, 7e4):
        _same((rng.standard_normal(200_000) * scale).astype(np.float32))
    # every float16 subnormal and its rounding midpoints
    m = np.arange(0, 1025, dtype=np.float64)
    _same(np.concatenate([m, m + 0.5, m - 0.5]).astype(np.float32) * np.float32(2**-24))


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.integers(1, 64),
              elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_any_float32_array(x: np.ndarray) -> None:
    _same(x)


def test_shape_is_kept() -> None:
    x = np.linspace(0, 1e-4, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert to_float16(x).shape == (2, 3, 4)
