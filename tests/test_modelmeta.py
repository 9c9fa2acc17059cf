"""Model metadata schema cnnpipe.model/1 and pixel normalisation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnpipe.errors import ModelError
from cnnpipe.modelmeta import (
    InputSpec,
    ModelMeta,
    Normalisation,
    NormMethod,
    OutputKind,
    OutputSpec,
    Task,
)
from cnnpipe.normalise import normalise


def _meta(**kw: object) -> ModelMeta:
    base: dict[str, object] = {
        "name": "seg",
        "task": "segment",
        "bands": ["r"],
        "input": {"name": "x", "patch": None, "multiple": 8, "halo": 24},
        "output": {"name": "y", "kind": "probabilities", "classes": ["bg", "star"]},
        "normalisation": {"method": "asinh", "params": {"scale": 2.0}},
    }
    base.update(kw)
    return ModelMeta.from_dict(base)


def test_round_trip_json() -> None:
    meta = _meta(demo=True, pixel_scale=0.2)
    again = ModelMeta.from_json(meta.to_json())
    assert again == meta
    assert again.task is Task.SEGMENT
    assert again.input.fully_convolutional
    assert again.normalisation.method is NormMethod.ASINH
    assert again.output.kind is OutputKind.PROBABILITIES
    assert json.loads(meta.to_json())["schema"] == "cnnpipe.model/1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "detect"}, "Expected task one of classify, craters, segment. Got 'detect'"),
        ({"bands": []}, "Expected at least one band"),
        ({"bands": ["g", "g"]}, "distinct"),
        ({"colour": 1}, "Unknown cnnpipe metadata keys ['colour']"),
        ({"schema": "cnnpipe.model/9"}, "Expected schema 'cnnpipe.model/1'"),
        ({"name": "a b"}, "model name"),
        ({"normalisation": {"method": "asinh", "params": {}}}, "params.scale > 0"),
        ({"normalisation": {"method": "zscale"}}, "normalisation method one of"),
        ({"output": {"kind": "probabilities", "classes": ["one"]}}, "at least two class names"),
        ({"input": {"patch": [0, 4]}}, "two positive ints"),
    ],
)
def test_validation_errors(change: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError, match=None) as info:
        _meta(**change)
    assert message in str(info.value)


def test_missing_keys_and_bad_json() -> None:
    with pytest.raises(ModelError, match="keys"):
        ModelMeta.from_dict({"name": "x"})
    with pytest.raises(ModelError, match="JSON"):
        ModelMeta.from_json("{not json")


def test_classify_needs_fixed_patch() -> None:
    with pytest.raises(ModelError, match="fixed input patch"):
        ModelMeta(
            name="c",
            task=Task.CLASSIFY,
            bands=("r",),
            input=InputSpec(patch=None),
            output=OutputSpec(classes=("a", "b")),
        )


def test_normalise_methods() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(10.0, 3.0, size=(2, 2, 16, 16)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    std = normalise(x, Normalisation(method="standardise"))
    assert std[0, 0, 0, 0] == 0.0
    np.testing.assert_allclose(std[1].mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(std[1].std(axis=(1, 2)), 1.0, atol=1e-4)
    fixed = normalise(x, Normalisation(method="fixed", params={"mean": [10, 0], "std": [2, 1]}))
    np.testing.assert_allclose(fixed[1, 0], (x[1, 0] - 10) / 2, rtol=1e-6)
    np.testing.assert_allclose(fixed[1, 1], x[1, 1], rtol=1e-6)
    asinh = normalise(x, Normalisation(method="asinh", params={"scale": 3.0, "offset": 10.0}))
    np.testing.assert_allclose(asinh[1], np.arcsinh((x[1] - 10) / 3), rtol=1e-5)
    mm = normalise(x, Normalisation(method="minmax"))
    assert mm[1].min() == 0.0
    assert mm[1].max() == pytest.approx(1.0)
    allnan = np.full((1, 1, 4, 4), np.nan, np.float32)
    assert not normalise(allnan, Normalisation(method="asinh", params={"scale": 1})).any()


def _reference_normalise(x: np.ndarray, norm: Normalisation) -> np.ndarray:
    """The formulas of :func:`normalise`'s docstring, one plain numpy expression each."""
    finite = np.isfinite(x)
    masked = np.where(finite, x, np.nan)
    p = norm.params
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if norm.method is NormMethod.NONE:
            out = x.copy()
        elif norm.method is NormMethod.FIXED:
            out = ((x - np.asarray(p["mean"], np.float32)[None, :, None, None])
                   / np.asarray(p["std"], np.float32)[None, :, None, None])
        elif norm.method is NormMethod.ASINH:
            centre = (np.full((*x.shape[:2], 1, 1), float(p["offset"]), np.float32)
                      if "offset" in p else np.nanmedian(masked, axis=(2, 3), keepdims=True))
            out = np.arcsinh((x - centre) / np.float32(p["scale"]))
        elif norm.method is NormMethod.STANDARDISE:
            out = ((x - np.nanmean(masked, axis=(2, 3), keepdims=True))
                   / np.maximum(np.nanstd(masked, axis=(2, 3), keepdims=True), 1e-6))
        else:
            lo = np.nanmin(masked, axis=(2, 3), keepdims=True)
            hi = np.nanmax(masked, axis=(2, 3), keepdims=True)
            out = (x - lo) / np.maximum(hi - lo, 1e-6)
    return np.where(finite & np.isfinite(out), out, 0.0).astype(np.float32)


NORMS = [
    Normalisation(method="none"),
    Normalisation(method="fixed", params={"mean": [3.5, -1.0], "std": [2.0, 1e-30]}),
    Normalisation(method="asinh", params={"scale": 3.0, "offset": 10.0}),
    Normalisation(method="asinh", params={"scale": 0.7}),
    Normalisation(method="standardise"),
    Normalisation(method="minmax"),
]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bad=st.floats(0.0, 0.5), huge=st.booleans(),
       which=st.integers(0, len(NORMS) - 1))
def test_normalise_is_bit_for_bit_the_formula(seed: int, bad: float, huge: bool,
                                              which: int) -> None:
    """Same float32 bits as the plain formulas, NaN, inf and overflow included (export
    parity, training and every stored run depend on it)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(10.0, 30.0, size=(3, 2, 9, 7)).astype(np.float32)
    hit = rng.random(x.shape) < bad
    x[hit] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), size=int(hit.sum()))
    if huge:
        x[0, 0, 0, :] = 3e38  # finite input, non-finite output
    x[1, 1] = np.nan  # a fully masked patch band
    norm = NORMS[which]
    got = normalise(x, norm)
    assert got.dtype == np.float32
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got.view(np.uint32),
                                  _reference_normalise(x, norm).view(np.uint32))
