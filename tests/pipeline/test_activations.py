"""The live-tensor peak that ``--dry-run`` adds to a worker's memory."""

from __future__ import annotations

from pathlib import Path

from onnx import ModelProto, TensorProto, helper

from cnnpipe.pipeline.activations import peak_activation_bytes
from cnnpipe.pipeline.plan import ACTIVATION_FACTOR, make_plan
from cnnpipe.testing.onnx_models import segment_model


def _chain() -> ModelProto:
    # x -> Relu -> a -> Relu -> b ; Add(a, b) -> y: a is still alive when b and y exist
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "chain", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_peak_counts_tensors_alive_together() -> None:
    one = 4 * 4 * 4  # bytes of a (1, 1, 4, 4) float32 tensor
    assert peak_activation_bytes(_chain(), (1, 1, 4, 4)) == 3 * one  # a, b and y at the end
    assert peak_activation_bytes(_chain(), (5, 1, 4, 4)) == 3 * 5 * one


def test_dry_run_memory_includes_activations(tmp_path: Path) -> None:
    import onnx

    from cnnpipe.modelmeta import read_model_meta

    path = tmp_path / "seg.onnx"
    segment_model(path)
    acts = peak_activation_bytes(onnx.load(path), (4, 1, 40, 40))
    assert acts > 0
    plan = make_plan([("im", (200, 200), 1)], [read_model_meta(path)], tile=64, patch=40,
                     batch=4)
    name = plan.models[0].name
    without = plan.memory_per_task()
    assert plan.memory_per_task(activation_bytes={name: acts}) - without == int(
        ACTIVATION_FACTOR * acts)
