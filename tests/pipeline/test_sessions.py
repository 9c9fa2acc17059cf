"""CPU sessions of a run: the patch fixed, concatenations split (``worker.cpu_graph``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cnnpipe.modelmeta import model_sha256
from cnnpipe.pipeline.worker import SessionSpec, clear_sessions, cpu_graph, get_session
from cnnpipe.testing.onnx_models import segment_model

MODELS = Path(__file__).resolve().parents[2] / "src" / "cnnpipe" / "models"
UNET = str(MODELS / "demo_segment.onnx")  # 3 skip concatenations, input (batch, 1, 8*h, 8*w)


def _session(model: str | bytes, options: ort.SessionOptions | None = None
             ) -> ort.InferenceSession:
    return ort.InferenceSession(model, sess_options=options,
                                providers=["CPUExecutionProvider"])


def test_a_unet_session_runs_the_split_graph_at_the_fixed_patch() -> None:
    so = ort.SessionOptions()
    model = cpu_graph(UNET, (64, 80), so)
    assert isinstance(model, bytes)
    ops = [n.op_type for n in onnx.load_from_string(model).graph.node]
    assert "Concat" not in ops
    assert ops.count("Add") == 3
    fast, plain = _session(model, so), _session(UNET)
    x = np.random.default_rng(1).normal(0, 2, (3, 1, 64, 80)).astype(np.float32)
    np.testing.assert_allclose(fast.run(None, {"input": x})[0],
                               plain.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5)
    # the patch is fixed, the batch is not
    with pytest.raises(Exception, match=r"(?i)invalid dimensions"):
        fast.run(None, {"input": x[:, :, :56]})


@pytest.mark.parametrize("case", ["static input", "external weights", "one name, two sizes",
                                  "no concatenation"])
def test_other_models_load_as_they_are(case: str, tmp_path: Path) -> None:
    so = ort.SessionOptions()
    path = str(MODELS / "demo_galaxy.onnx")  # (batch, 1, 32, 32): nothing to fix
    patch = (64, 80)
    if case == "external weights":
        path = str(tmp_path / "unet.onnx")
        onnx.save(onnx.load(UNET), path, save_as_external_data=True, size_threshold=0)
    elif case == "one name, two sizes":
        m = onnx.load(UNET)
        for d in m.graph.input[0].type.tensor_type.shape.dim[2:]:
            d.dim_param = "size"
        path = str(tmp_path / "square.onnx")
        onnx.save(m, path)
    elif case == "no concatenation":  # named dims, but nothing to split: left free
        path = str(tmp_path / "plain.onnx")
        segment_model(path)
    assert cpu_graph(path, patch, so) == path
    x = np.zeros((1, 1, 24, 40), np.float32)
    if case == "no concatenation":  # other sizes still run
        assert _session(path, so).run(None, {"image": x})[0].shape[2:] == (24, 40)


def test_cpu_sessions_are_cached_per_patch() -> None:
    clear_sessions()
    spec = SessionSpec(device="cpu", intra_op_threads=1)
    sha = model_sha256(UNET)
    a = get_session(UNET, sha, spec, (64, 64))
    assert get_session(UNET, sha, spec, (64, 64)) is a
    b = get_session(UNET, sha, spec, (96, 96))
    assert b is not a
    x = np.zeros((1, 1, 96, 96), np.float32)
    assert b.run(None, {"input": x})[0].shape == (1, 5, 96, 96)
    clear_sessions()
