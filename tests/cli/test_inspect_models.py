"""``cnnpipe inspect`` and ``cnnpipe models`` (torch-free commands)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto, helper, numpy_helper

import cnnpipe.models
from cnnpipe.cli import cli
from cnnpipe.modelmeta import METADATA_KEY


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def meta_doc(**kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "seg",
        "task": "segment",
        "bands": ["g", "r"],
        "input": {"name": "x", "patch": None, "multiple": 2, "halo": 2},
        "output": {"name": "y", "kind": "probabilities", "classes": ["bg", "star"]},
        "normalisation": {"method": "asinh", "params": {"scale": 2.0, "offset": 0.0}},
        "weights_sha256": "ab" * 32,
        "provenance": {"exporter": "test", "precision": "fp32"},
    }
    doc.update(kw)
    return doc


def write_model(path: Path, metadata: str | dict | None, *, bands: int = 2) -> Path:
    """Conv 1x1 (bands -> 2) + Softmax over channels, dynamic N/H/W."""
    w = numpy_helper.from_array(np.ones((2, bands, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]),
         helper.make_node("Softmax", ["c"], ["y"], axis=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", bands, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is not None:
        text = metadata if isinstance(metadata, str) else json.dumps(metadata)
        helper.set_model_props(model, {METADATA_KEY: text})
    onnx.save(model, str(path))
    return path


def test_inspect_text(tmp_path: Path) -> None:
    path = write_model(tmp_path / "seg.onnx", meta_doc(demo=True, licence="MIT"))
    r = invoke("inspect", path)
    assert r.exit_code == 0, r.output
    out = r.stdout
    lines = out.splitlines()
    assert "demo model trained on simulated data" in lines
    assert re.search(r"^model\s+seg 0\.0\.0 \(cnnpipe\.model/1\)$", out, re.M)
    assert re.search(r"^task\s+segment$", out, re.M)
    assert re.search(r"^bands\s+g, r$", out, re.M)
    assert re.search(r"^input\s+x NCHW, any size, halo 2, multiple 2$", out, re.M)
    assert re.search(r"^output\s+y probabilities: bg, star$", out, re.M)
    assert re.search(r"^normalise\s+asinh \(offset=0\.0, scale=2\.0\)$", out, re.M)
    assert re.search(r"^graph input\s+x: float32\[N, 2, H, W\]$", out, re.M)
    assert re.search(r"^graph output\s+y: float32\[N, 2, H, W\]$", out, re.M)
    assert re.search(r"^providers\s+.*CPUExecutionProvider", out, re.M)
    assert re.search(r"^licence\s+MIT$", out, re.M)
    size = path.stat().st_size
    assert f"({size / 1e6:.2f} MB, opset 17)" in lines[0]


def test_inspect_json(tmp_path: Path) -> None:
    import onnxruntime

    doc = meta_doc()
    path = write_model(tmp_path / "seg.onnx", doc)
    r = invoke("inspect", path, "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["metadata"]["name"] == "seg"
    assert got["metadata"]["bands"] == ["g", "r"]
    assert got["metadata"]["normalisation"] == doc["normalisation"]
    assert got["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 2, "H", "W"]}]
    assert got["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["N", 2, "H", "W"]}]
    assert got["providers"] == onnxruntime.get_available_providers()
    assert got["size_bytes"] == path.stat().st_size
    assert got["opset"] == 17
    assert got["demo"] is False
    assert "demo model trained" not in r.stdout


def test_inspect_without_metadata(tmp_path: Path) -> None:
    r = invoke("inspect", write_model(tmp_path / "plain.onnx", None))
    assert r.exit_code == 0, r.output
    assert "metadata     none (annotate with `cnnpipe export --from-onnx" in r.stdout
    assert re.search(r"^graph input\s+x: float32\[N, 2, H, W\]$", r.stdout, re.M)


@pytest.mark.parametrize(
    ("metadata", "pattern"),
    [
        ("{not json", r"Expected the cnnpipe metadata to be JSON"),
        (meta_doc(colour="red"), r"Unknown cnnpipe metadata keys \['colour'\]"),
        (meta_doc(task="detect"), r"Expected task one of classify, craters, segment. Got 'detect'"),
        (meta_doc(bands=["g", "g"]), r"distinct, non-empty band names"),
        (meta_doc(input={"name": "x", "patch": None, "halo": -1}), r"halo >= 0"),
        (meta_doc(schema="cnnpipe.model/9"), r"Expected schema 'cnnpipe.model/1'"),
        (meta_doc(bands=["g", "r", "i"]), r"input has 2 channels but the metadata lists 3 bands"),
        (meta_doc(input={"name": "img"}), r"metadata input 'img' is not a graph input \['x'\]"),
        (meta_doc(output={"name": "y", "classes": ["a", "b", "c"]}),
         r"output has 2 channels but the metadata lists 3 classes"),
    ],
)
def test_inspect_invalid_metadata(tmp_path: Path, metadata: str | dict, pattern: str) -> None:
    path = write_model(tmp_path / "bad.onnx", metadata)
    r = invoke("inspect", path)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    (err,) = [line for line in r.output.splitlines() if line.startswith("cnnpipe: error:")]
    assert str(path) in err
    assert re.search(pattern, err), err


def test_inspect_missing_and_corrupt(tmp_path: Path) -> None:
    r = invoke("inspect", tmp_path / "nope.onnx")
    assert r.exit_code == 1
    assert "no such model file" in r.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage")
    r = invoke("inspect", junk)
    assert r.exit_code == 1
    assert "not a readable ONNX model" in r.output
    assert "Traceback" not in r.output


@pytest.fixture
def demo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_model(tmp_path / "seg_demo.onnx", meta_doc(name="seg_demo", demo=True))
    write_model(tmp_path / "broken_demo.onnx", "{oops")
    paths = {p.stem: p for p in sorted(tmp_path.glob("*.onnx"))}
    monkeypatch.setattr(cnnpipe.models, "demo_model_paths", lambda: paths)
    return tmp_path


def test_models_text(demo_dir: Path) -> None:
    r = invoke("models")
    assert r.exit_code == 0, r.output
    out = r.stdout
    for name, task in [("galaxy_cnn", "classify"), ("lens_resnet", "classify"),
                       ("crater_unet", "craters"), ("segment_unet", "segment")]:
        assert re.search(rf"^  {name}\s+{task}\s", out, re.M), out
    assert "any size (multiple 2**depth)" in out
    assert "patch 32" in out
    assert "classes background,star,disk,spheroid,artefact" in out
    assert "Bundled demo models (demo model trained on simulated data):" in out
    assert re.search(rf"seg_demo\s+segment\s+bands g,r\s+{re.escape(str(demo_dir))}", out)
    assert "broken_demo" in out
    assert "unreadable" in out


def test_models_json(demo_dir: Path) -> None:
    r = invoke("models", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    archs = {a["name"]: a for a in doc["architectures"]}
    assert set(archs) == {"galaxy_cnn", "lens_resnet", "crater_unet", "segment_unet"}
    assert archs["crater_unet"]["fully_convolutional"] is True
    assert archs["crater_unet"]["output_kind"] == "heatmap"
    assert archs["galaxy_cnn"]["patch"] == 32
    assert archs["galaxy_cnn"]["classes"] == [
        "star", "disk", "spheroid"]
    assert archs["lens_resnet"]["classes"] == ["non_lens", "lens"]
    assert archs["segment_unet"]["options"] == {"base": 8, "depth": 3}
    demos = {d["name"]: d for d in doc["demo_models"]}
    assert demos["seg_demo"]["path"] == str(demo_dir / "seg_demo.onnx")
    assert demos["seg_demo"]["demo"] is True
    assert demos["seg_demo"]["task"] == "segment"
    assert "error" in demos["broken_demo"]


def test_models_with_bundled_package_data() -> None:
    """Whatever demo models are installed are listed with existing paths."""
    r = invoke("models", "--json")
    assert r.exit_code == 0, r.output
    for d in json.loads(r.stdout)["demo_models"]:
        assert Path(d["path"]).is_file()


NO_TORCH = r"""
import sys
import cnnpipe.commands.inspect, cnnpipe.commands.models, cnnpipe.commands.export
import cnnpipe.inspection, cnnpipe.export.annotate
from click.testing import CliRunner
from cnnpipe.cli import cli
r = CliRunner().invoke(cli, ["models", "--json"])
assert r.exit_code == 0, r.output
r = CliRunner().invoke(cli, ["inspect", sys.argv[1]])
assert r.exit_code == 0, r.output
assert "torch" not in sys.modules, "torch was imported"
print("OK")
"""


def test_inspect_and_models_do_not_import_torch(tmp_path: Path) -> None:
    path = write_model(tmp_path / "seg.onnx", meta_doc())
    proc = subprocess.run(
        [sys.executable, "-c", "import cnnpipe.commands.inspect, sys; "
         "assert 'torch' not in sys.modules"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "OK"
