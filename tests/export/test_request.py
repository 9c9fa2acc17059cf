"""Option parsing and metadata assembly for ``cnnpipe export`` (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnpipe.errors import ConfigError, ModelError
from cnnpipe.export.package import (
    check_writable,
    merge_meta,
    parse_bands,
    parse_classes,
    parse_normalisation,
)
from cnnpipe.export.precision import Precision
from cnnpipe.export.request import DEMO_DESCRIPTION, ExportRequest, build_meta
from cnnpipe.modelmeta import NormMethod


@pytest.mark.parametrize(
    ("text", "method", "params"),
    [
        ("none", NormMethod.NONE, {}),
        ("standardise", NormMethod.STANDARDISE, {}),
        ("asinh:scale=2.5", NormMethod.ASINH, {"scale": 2.5}),
        ("asinh:scale=1,offset=0", NormMethod.ASINH, {"scale": 1, "offset": 0}),
        ("fixed:mean=0.1,0.2,std=1.5,2", NormMethod.FIXED, {"mean": [0.1, 0.2], "std": [1.5, 2]}),
        ("fixed:mean=3,std=4", NormMethod.FIXED, {"mean": [3], "std": [4]}),
    ],
)
def test_parse_normalisation(text: str, method: NormMethod, params: dict) -> None:
    norm = parse_normalisation(text)
    assert norm.method is method
    assert norm.params == params


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("gamma", "one of none, asinh"),
        ("asinh", "params.scale > 0"),
        ("asinh:scale=-1", "params.scale > 0"),
        ("asinh:scale", "key=value"),
        ("asinh:scale=abc", "Expected a number"),
        ("fixed:mean=1,2,std=1", "equal length"),
    ],
)
def test_parse_normalisation_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_normalisation(text)


def test_parse_bands() -> None:
    assert parse_bands("g, r,i") == ("g", "r", "i")
    with pytest.raises(ConfigError, match="comma-separated list of band names"):
        parse_bands("")
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_bands("g,,r")
    with pytest.raises(ConfigError, match=r"distinct band names.*\['g'\] repeated"):
        parse_bands("g,r,g")
    assert parse_classes("a,b") == ("a", "b")
    with pytest.raises(ConfigError, match="distinct class names"):
        parse_classes("a,a")


def test_check_writable(tmp_path: Path) -> None:
    from cnnpipe.errors import ExportError

    assert check_writable(tmp_path / "m.onnx") == tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="does not exist"):
        check_writable(tmp_path / "missing" / "m.onnx")
    with pytest.raises(ExportError, match="is a directory"):
        check_writable(tmp_path)


def _defaults() -> dict:
    return {
        "name": "crater_unet",
        "task": "craters",
        "bands": ["x"],
        "input": {"name": "input", "patch": None, "multiple": 8, "halo": 0},
        "output": {"name": "output", "kind": "heatmap", "classes": ["rim"]},
        "normalisation": {"method": "asinh", "params": {"scale": 1.0, "offset": 0.0}},
        "postprocess": {"threshold": 0.5},
    }


def _req(tmp_path: Path, **kw: object) -> ExportRequest:
    return ExportRequest(source="crater_unet", out=tmp_path / "m.onnx", bands=("g", "r"), **kw)


def test_build_meta_precedence(tmp_path: Path) -> None:
    doc = tmp_path / "meta.json"
    doc.write_text(json.dumps({
        "version": "2.0", "licence": "CC-BY-4.0", "postprocess": {"min_radius": 3},
        "pixel_scale": 100.0, "input": {"multiple": 8},
    }))
    meta = build_meta(
        _req(tmp_path, metadata_file=doc, licence="MIT", postprocess={"threshold": 0.3},
             normalisation=parse_normalisation("standardise"), demo=True),
        _defaults(),
    )
    assert meta.bands == ("g", "r")
    assert meta.version == "2.0"  # file over defaults
    assert meta.licence == "MIT"  # command line over file
    assert meta.postprocess == {"threshold": 0.3, "min_radius": 3}
    assert meta.pixel_scale == 100.0
    assert meta.normalisation.method is NormMethod.STANDARDISE
    assert meta.normalisation.params == {}
    assert meta.demo
    assert meta.description == DEMO_DESCRIPTION


def test_build_meta_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="expected JSON metadata"):
        build_meta(_req(tmp_path, metadata_file=bad), _defaults())
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"colour": "red"}))
    with pytest.raises(ModelError, match=r"Unknown cnnpipe metadata keys \['colour'\]"):
        build_meta(_req(tmp_path, metadata_file=unknown), _defaults())
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"input": {"stride": 2}}))
    with pytest.raises(ModelError, match="stride"):
        build_meta(_req(tmp_path, metadata_file=nested), _defaults())
    with pytest.raises(ModelError, match="Expected task one of classify, craters, segment"):
        build_meta(_req(tmp_path, task="detect"), _defaults())
    with pytest.raises(ConfigError, match="larger than twice the halo"):
        build_meta(_req(tmp_path, patch=48, halo=24), _defaults())
    with pytest.raises(ConfigError, match="multiple of 8"):
        build_meta(_req(tmp_path, patch=60), _defaults())
    with pytest.raises(ModelError, match="two class names"):
        build_meta(_req(tmp_path, task="segment", output_kind="probabilities"), _defaults())


def test_request_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Got both"):
        ExportRequest(source="x", from_onnx=tmp_path / "m.onnx", out=tmp_path / "o", bands=("g",))
    with pytest.raises(ConfigError, match="Got neither"):
        ExportRequest(out=tmp_path / "o", bands=("g",))
    with pytest.raises(ConfigError, match="--calibrate"):
        _req(tmp_path, precision=Precision.INT8)
    with pytest.raises(ConfigError, match="--halo >= 0"):
        _req(tmp_path, halo=-1)


def test_merge_meta_is_one_level_deep() -> None:
    merged = merge_meta(_defaults(), {"input": {"halo": 8}, "normalisation": {"params": {}}})
    assert merged["input"] == {"name": "input", "patch": None, "multiple": 8, "halo": 8}
    assert merged["normalisation"] == {"method": "asinh", "params": {}}
