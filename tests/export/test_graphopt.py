"""Exact graph rewrites (``cnnpipe.export.graphopt``) and their use by ``cnnpipe export``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnnpipe.errors import ExportError
from cnnpipe.export import graphopt
from cnnpipe.export.annotate import annotate_onnx
from cnnpipe.export.graphopt import decompose_channel_softmax, optimise_graph, split_concat_convs
from cnnpipe.export.request import ExportRequest
from cnnpipe.modelmeta import read_model_meta
from cnnpipe.testing.onnx_models import segment_model


def _softmax_model(*, opset: int, axis: int, rank: int = 4, extra: bool = False,
                   name: str = "") -> onnx.ModelProto:
    """Conv 1x1 (2 -> 3 channels) then Softmax(axis) of a rank-4 map, or Flatten for rank 2."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(0, 2, (3, 2, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["z4"])]
    z, shape = "z4", ["N", 3, 5, 7]
    if rank == 2:
        nodes.append(helper.make_node("Flatten", ["z4"], ["z2"]))
        z, shape = "z2", ["N", 105]
    nodes.append(helper.make_node("Softmax", [z], ["probs"], axis=axis, name=name))
    outs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, shape)]
    if extra:  # a tensor already called what the rewrite would name its own
        nodes.append(helper.make_node("Identity", [z], ["probs/max"]))
        outs.append(helper.make_tensor_value_info("probs/max", TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 7])],
        outs, initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _req(src: Path, out: Path) -> ExportRequest:
    return ExportRequest(from_onnx=src, out=out, task="segment", bands=("r",),
                         classes=("background", "star", "galaxy"))


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in s.run(None, {"x": x})]


X = np.random.default_rng(0).normal(0, 3, (2, 2, 5, 7)).astype(np.float32)


@pytest.mark.parametrize(("opset", "axis"), [(13, 1), (17, 1), (18, 1), (18, -3), (18, 2)])
def test_softmax_over_a_non_last_axis_is_decomposed_exactly(opset: int, axis: int) -> None:
    model = _softmax_model(opset=opset, axis=axis)
    fast, n = decompose_channel_softmax(model)
    assert n == 1
    ops = [node.op_type for node in fast.graph.node]
    assert "Softmax" not in ops
    assert {"ReduceMax", "Sub", "Exp", "ReduceSum", "Div"} <= set(ops)
    onnx.checker.check_model(fast, full_check=True)
    (ref,), (got,) = _run(model, X), _run(fast, X)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=axis), 1.0, atol=1e-6)
    assert [n.op_type for n in model.graph.node][-1] == "Softmax", "input left unchanged"


@pytest.mark.parametrize(("opset", "axis", "rank"), [(18, 1, 2), (18, -1, 4), (18, 3, 4),
                                                     (12, 1, 4)])
def test_last_axis_and_old_opset_softmax_stay(opset: int, axis: int, rank: int) -> None:
    """onnxruntime's kernel is the fast one on the last axis; before opset 13 Softmax
    normalised over the flattened trailing axes, which the rewrite does not compute."""
    model = _softmax_model(opset=opset, axis=axis, rank=rank)
    fast, n = decompose_channel_softmax(model)
    assert n == 0
    assert fast.graph == model.graph


def test_new_names_never_collide_with_the_graph() -> None:
    model = _softmax_model(opset=18, axis=1, extra=True)
    fast, n = decompose_channel_softmax(model)
    assert n == 1
    onnx.checker.check_model(fast, full_check=True)  # SSA: every name written once
    ref, got = _run(model, X), _run(fast, X)
    np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got[1], ref[1])


def test_export_writes_the_faster_graph_and_says_so(tmp_path: Path) -> None:
    src = tmp_path / "seg.onnx"
    segment_model(src)
    out = tmp_path / "out.onnx"
    annotate_onnx(_req(src, out), log=lambda _: None)
    written = onnx.load(str(out))
    assert "Softmax" not in {n.op_type for n in written.graph.node}
    assert read_model_meta(out).provenance["graph_rewrites"] == {"channel_softmax": 1}
    x = np.random.default_rng(1).normal(0, 1, (2, 1, 16, 16)).astype(np.float32)
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(b.run(None, {"image": x})[0], a.run(None, {"image": x})[0],
                               rtol=0, atol=1e-6)
    # exporting the written package again finds nothing left to rewrite
    again = tmp_path / "again.onnx"
    annotate_onnx(_req(out, again), log=lambda _: None)
    assert "graph_rewrites" not in read_model_meta(again).provenance


def test_a_rewrite_that_changes_outputs_is_refused(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
        bad = onnx.ModelProto()
        bad.CopyFrom(model)
        for node in bad.graph.node:
            if node.op_type == "Softmax":
                node.op_type = "Sigmoid"
                del node.attribute[:]
        return bad, {"channel_softmax": 1}

    src = tmp_path / "seg.onnx"
    segment_model(src)
    monkeypatch.setattr("cnnpipe.export.package.optimise_graph", wrong)
    with pytest.raises(ExportError, match=r"changed the outputs .* a cnnpipe bug"):
        annotate_onnx(_req(src, tmp_path / "out.onnx"), log=lambda _: None)
    assert not (tmp_path / "out.onnx").exists()
    assert graphopt.optimise_graph is optimise_graph


def _concat_conv_model(*, axis: int = 1, group: int = 1, also_output: bool = False,
                       weights_as_input: bool = False, dims: tuple[str, str] = ("H", "W"),
                       ) -> onnx.ModelProto:
    """x (N, 2, H, W) -> Conv a (3 ch), Conv b (4 ch); Concat(a, b, x) -> Conv (bias) -> y.

    The decoder pattern of a U-Net, with three inputs to the concatenation.
    """
    rng = np.random.default_rng(5)

    def w(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 1, shape).astype(np.float32), name)

    c_in = 9 if axis == 1 else 2
    inits = [w("wa", (3, 2, 3, 3)), w("wb", (4, 2, 1, 1)), w("bias", (5,))]
    last = w("wc", (5, c_in // group, 3, 3))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, *dims])]
    if weights_as_input:
        inputs.append(helper.make_tensor_value_info("wc", TensorProto.FLOAT, list(last.dims)))
    else:
        inits.append(last)
    cat = ["a", "b", "x"] if axis == 1 else ["x", "x"]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"]),
        helper.make_node("Concat", cat, ["cat"], axis=axis),
        helper.make_node("Conv", ["cat", "wc", "bias"], ["y"], pads=[1, 1, 1, 1], group=group,
                         name="dec"),
    ]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, *dims])]
    if also_output:
        outs.append(helper.make_tensor_value_info("cat", TensorProto.FLOAT, ["N", 9, *dims]))
    graph = helper.make_graph(nodes, "g", inputs, outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_concat_feeding_a_conv_is_split_exactly() -> None:
    model = _concat_conv_model()
    fast, n = split_concat_convs(model)
    assert n == 1
    ops = [node.op_type for node in fast.graph.node]
    assert "Concat" not in ops
    assert ops.count("Conv") == 2 + 3
    assert ops.count("Add") == 2
    assert {i.name for i in fast.graph.initializer} == {
        "wa", "wb", "bias", "wc_split0", "wc_split1", "wc_split2"}
    onnx.checker.check_model(fast)
    want, got = _run(model, X)[0], _run(fast, X)[0]  # |y| up to ~100: float32 rounding
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    assert len(model.graph.node) == 4  # the input is not modified


@pytest.mark.parametrize("case", ["spatial axis", "grouped conv", "concat is an output",
                                  "weights are an input"])
def test_concats_that_are_not_one_plain_convs_input_stay(case: str) -> None:
    model = _concat_conv_model(
        axis=2 if case == "spatial axis" else 1, group=9 if case == "grouped conv" else 1,
        also_output=case == "concat is an output",
        weights_as_input=case == "weights are an input")
    fast, n = split_concat_convs(model)
    assert n == 0
    assert [node.op_type for node in fast.graph.node] == [
        node.op_type for node in model.graph.node]
