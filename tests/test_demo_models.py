"""The bundled demo models: present, valid, small, labelled as demo models."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
from click.testing import CliRunner

from cnnpipe.cli import cli
from cnnpipe.modelmeta import Task, read_model_meta
from cnnpipe.models import demo_model_paths

EXPECTED = {"demo_galaxy": Task.CLASSIFY, "demo_segment": Task.SEGMENT,
            "demo_craters": Task.CRATERS}


def test_bundled_demo_models_are_valid_packages() -> None:
    paths = demo_model_paths()
    assert set(EXPECTED) <= set(paths)
    for name, task in EXPECTED.items():
        path = paths[name]
        assert path.stat().st_size < 5_000_000
        meta = read_model_meta(path)
        assert meta.name == name
        assert meta.task is task
        assert meta.demo
        assert "simulated" in meta.description
        assert len(meta.weights_sha256) == 64
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert sess.get_inputs()[0].name == meta.input.name
        if meta.input.fully_convolutional:
            # tiled output equals whole-image output only with pixel-wise normalisation
            assert meta.normalisation.method.value in ("fixed", "none") or (
                "offset" in meta.normalisation.params
            )
            assert meta.input.halo >= meta.input.multiple


def test_inspect_says_demo_model() -> None:
    path = demo_model_paths()["demo_segment"]
    res = CliRunner().invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "demo model trained on simulated data" in res.output
    res = CliRunner().invoke(cli, ["models", "--json"])
    listed = json.loads(res.output)
    text = json.dumps(listed)
    for name in EXPECTED:
        assert str(demo_model_paths()[name]) in text


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_demo_model_tensor_names(name: str) -> None:
    meta = read_model_meta(demo_model_paths()[name])
    sess = ort.InferenceSession(str(demo_model_paths()[name]),
                                providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [meta.output.name]
