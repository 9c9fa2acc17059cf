"""``export --from-onnx``: annotate plain ONNX models (built with onnx.helper, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from astropy.io import fits
from onnx import TensorProto, helper, numpy_helper

from cnnpipe.errors import ConfigError, ExportError, ModelError, ParityError
from cnnpipe.export.annotate import annotate_onnx
from cnnpipe.export.package import VariantLimits
from cnnpipe.export.precision import Precision
from cnnpipe.export.request import ExportRequest
from cnnpipe.modelmeta import read_model_meta


def _save(nodes: list, inp: onnx.ValueInfoProto, out: onnx.ValueInfoProto,
           inits: list, path: Path) -> Path:
    graph = helper.make_graph(nodes, "g", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="test")
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def dense_model(path: Path, *, bands: int = 2, log: bool = False) -> Path:
    """Conv 3x3 (bands -> 1) + Sigmoid on any size: a crater heat map."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (1, bands, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(1, np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    if log:  # log of a negative number: NaN everywhere
        nodes += [helper.make_node("Abs", ["c"], ["a"]), helper.make_node("Neg", ["a"], ["n"]),
                  helper.make_node("Log", ["n"], ["heat"])]
    else:
        nodes.append(helper.make_node("Sigmoid", ["c"], ["heat"]))
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", bands, "H", "W"])
    out = helper.make_tensor_value_info("heat", TensorProto.FLOAT, ["N", 1, "H", "W"])
    return _save(nodes, inp, out, [w, b], path)


def classify_model(path: Path) -> Path:
    """Flatten + Gemm + Softmax on fixed 1x8x8 patches: three classes."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (64, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    nodes = [
        helper.make_node("Flatten", ["img"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probs"], axis=1),
    ]
    inp = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 1, 8, 8])
    out = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])
    return _save(nodes, inp, out, [w, b], path)


def _fits(path: Path, bands: int = 2) -> Path:
    rng = np.random.default_rng(5)
    data = (rng.standard_normal((bands, 64, 64)) * 2).astype(np.float32)
    fits.PrimaryHDU(data if bands > 1 else data[0]).writeto(path)
    return path


def _req(src: Path, out: Path, **kw: object) -> ExportRequest:
    base: dict = {"from_onnx": src, "out": out, "bands": ("g", "r"), "task": "craters"}
    base.update(kw)
    return ExportRequest(**base)


def test_annotate_takes_names_and_geometry_from_graph(tmp_path: Path) -> None:
    src = dense_model(tmp_path / "plain.onnx")
    report = annotate_onnx(_req(src, tmp_path / "m.onnx", halo=2, classes=("rim",),
                                normalisation=None), log=lambda _: None)
    meta = read_model_meta(tmp_path / "m.onnx")
    assert meta == report.meta
    assert (meta.name, meta.task.value, meta.bands) == ("plain", "craters", ("g", "r"))
    assert (meta.input.name, meta.input.patch, meta.input.halo) == ("x", None, 2)
    assert (meta.output.name, meta.output.kind.value) == ("heat", "heatmap")
    assert meta.provenance["exporter"] == "cnnpipe export --from-onnx"
    assert meta.provenance["producer"] == "test"
    assert meta.provenance["precision"] == "fp32"
    assert len(meta.weights_sha256) == 64
    # the graph is unchanged apart from the metadata
    a, b = onnx.load(str(src)), onnx.load(str(tmp_path / "m.onnx"))
    assert a.graph == b.graph


def test_annotate_fixed_patch_classifier_in_place(tmp_path: Path) -> None:
    src = classify_model(tmp_path / "cls.onnx")
    annotate_onnx(_req(src, src, task="classify", bands=("r",), classes=("a", "b", "c"),
                       name="cls-1"), log=lambda _: None)
    meta = read_model_meta(src)
    assert meta.input.patch == (8, 8)
    assert meta.output.classes == ("a", "b", "c")
    assert (meta.input.name, meta.output.name, meta.name) == ("img", "probs", "cls-1")


def test_annotate_errors(tmp_path: Path) -> None:
    src = dense_model(tmp_path / "plain.onnx")
    with pytest.raises(ModelError, match="input has 2 channels but the metadata lists 3 bands"):
        annotate_onnx(_req(src, tmp_path / "m.onnx", bands=("g", "r", "i")))
    with pytest.raises(ConfigError, match="Expected --task"):
        annotate_onnx(_req(src, tmp_path / "m.onnx", task=None))
    cls = classify_model(tmp_path / "cls.onnx")
    with pytest.raises(ModelError, match="output has 3 channels but the metadata lists 2"):
        annotate_onnx(_req(cls, tmp_path / "m.onnx", task="classify", bands=("r",),
                           classes=("a", "b")))
    nan = dense_model(tmp_path / "nan.onnx", log=True)
    with pytest.raises(ExportError, match="non-finite outputs"):
        annotate_onnx(_req(nan, tmp_path / "m.onnx"))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(ExportError, match="not a readable ONNX model"):
        annotate_onnx(_req(broken, tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_annotate_fp16_and_int8(tmp_path: Path) -> None:
    src = dense_model(tmp_path / "plain.onnx")
    cal = _fits(tmp_path / "cal.fits")
    lines: list[str] = []
    r16 = annotate_onnx(_req(src, tmp_path / "m16.onnx", precision=Precision.FP16,
                             parity_fits=(cal,)), log=lines.append)
    (c16,) = [c for c in r16.checks if "real" in c.label]
    assert c16.label == "fp16 vs fp32, real patches"
    assert c16.max_abs_error < 1e-2
    assert c16.threshold_agreement >= 0.99
    m16 = onnx.load(str(tmp_path / "m16.onnx"))
    assert any(i.data_type == TensorProto.FLOAT16 for i in m16.graph.initializer)
    assert read_model_meta(tmp_path / "m16.onnx").provenance["precision"] == "fp16"

    r8 = annotate_onnx(_req(src, tmp_path / "m8.onnx", precision=Precision.INT8,
                            calibrate=(cal,)), log=lines.append)
    (c8,) = [c for c in r8.checks if "real" in c.label]
    assert c8.mean_abs_error < 0.05
    assert c8.threshold_agreement >= 0.9
    m8 = onnx.load(str(tmp_path / "m8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in m8.graph.node}
    meta8 = read_model_meta(tmp_path / "m8.onnx")
    assert meta8.provenance["precision"] == "int8"
    assert meta8.provenance["variant_agreement"]["int8 vs fp32, real patches"]["n"] == c8.n
    assert any(line.startswith("int8 vs fp32, real patches: n=") for line in lines)

    # limits are enforced
    with pytest.raises(ParityError, match="int8 model disagrees with fp32"):
        annotate_onnx(_req(src, tmp_path / "bad.onnx", precision=Precision.INT8,
                           calibrate=(cal,), limits=VariantLimits(int8_tolerance=1e-9)),
                      log=lambda _: None)
    assert not (tmp_path / "bad.onnx").exists()


def test_calibration_file_errors(tmp_path: Path) -> None:
    src = dense_model(tmp_path / "plain.onnx")
    one_band = _fits(tmp_path / "one.fits", bands=1)
    from cnnpipe.errors import InputError

    with pytest.raises(InputError, match=r"expected a \(2, y, x\) cube"):
        annotate_onnx(_req(src, tmp_path / "m.onnx", parity_fits=(one_band,)))


def test_written_package_is_readable_by_others(tmp_path: Path) -> None:
    # Regression: the atomic write left the package owner-only (0600), so cluster
    # workers running as another user and installed package data could not read it.
    import os
    import stat

    src = dense_model(tmp_path / "plain.onnx")
    old = os.umask(0o022)
    try:
        annotate_onnx(_req(src, tmp_path / "m.onnx", classes=("rim",), normalisation=None),
                      log=lambda _: None)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode) == 0o644
