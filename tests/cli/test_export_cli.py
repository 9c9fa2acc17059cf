"""``cnnpipe export`` through the command line: round trip, precisions, error messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from astropy.io import fits
from click.testing import CliRunner, Result

from cnnpipe.cli import cli

GALAXY = ["galaxy_cnn", "--arch-opt", "width=4", "--arch-opt", "depth=2",
          "--arch-opt", "hidden=8", "--patch", "16"]
CRATER = ["crater_unet", "--arch-opt", "base=4", "--arch-opt", "depth=2"]


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_error(result: Result, code: int, pattern: str) -> None:
    """One clean error line with the exit code, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("cnnpipe: error:")]
    assert len(errors) == 1, result.output
    assert re.search(pattern, errors[0]), errors[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export_cli")


@pytest.fixture(scope="module")
def sky(workdir: Path) -> Path:
    """(g, r) cube 96x96: noise on a background of 100 with bright blobs."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    img = 100 + 5 * rng.standard_normal((2, 96, 96))
    for _ in range(10):
        y, x, s = rng.uniform(0, 96), rng.uniform(0, 96), rng.uniform(1, 4)
        img += rng.uniform(200, 2000) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * s * s))
    path = workdir / "sky.fits"
    fits.PrimaryHDU(img.astype(np.float32)).writeto(path)
    return path


@pytest.fixture(scope="module")
def confident_ckpt(workdir: Path) -> Path:
    """A tiny galaxy_cnn state_dict whose logits are spread (clear argmax)."""
    torch = pytest.importorskip("torch")
    from cnnpipe.export.architectures import galaxy_cnn

    torch.manual_seed(1)
    m = galaxy_cnn(2, 3, patch=16, width=4, depth=2, hidden=8)
    with torch.no_grad():
        m.head[4].weight.mul_(20.0)
    path = workdir / "galaxy.pt"
    torch.save(m.state_dict(), path)
    return path


def _number(output: str, label: str, key: str) -> float:
    line = next(line for line in output.splitlines() if line.startswith(label))
    return float(re.search(rf"{key} ([0-9.e+-]+)", line).group(1))


def test_export_inspect_round_trip(workdir: Path, sky: Path, confident_ckpt: Path) -> None:
    torch = pytest.importorskip("torch")
    from cnnpipe.export.architectures import galaxy_cnn
    from cnnpipe.export.build import state_dict_sha256

    out = workdir / "galaxy.onnx"
    r = invoke("export", *GALAXY, "--weights", confident_ckpt, "--bands", "g,r", "--out", out,
               "--name", "morph", "--classes", "star,disk,spheroid", "--licence", "CC-BY-4.0",
               "--description", "tiny", "--model-version", "1.2", "--parity-fits", sky,
               "--postprocess", "min_probability=0.6", "--normalisation", "asinh:scale=10")
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.stdout
    assert _number(r.stdout, "onnxruntime vs torch, real patches", "max abs error") <= 1e-4
    assert _number(r.stdout, "onnxruntime vs torch, random patches", "max abs error") <= 1e-4

    r = invoke("inspect", out, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    meta = doc["metadata"]
    assert meta["name"] == "morph"
    assert meta["version"] == "1.2"
    assert meta["task"] == "classify"
    assert meta["bands"] == ["g", "r"]
    assert meta["input"] == {"name": "input", "layout": "NCHW", "patch": [16, 16],
                             "multiple": 1, "halo": 0}
    assert meta["output"] == {"name": "output", "kind": "probabilities",
                              "classes": ["star", "disk", "spheroid"]}
    assert meta["normalisation"] == {"method": "asinh", "params": {"scale": 10}}
    assert meta["postprocess"] == {"min_probability": 0.6}
    assert (meta["licence"], meta["description"], meta["demo"]) == ("CC-BY-4.0", "tiny", False)
    assert meta["provenance"]["checkpoint"] == "galaxy.pt"
    m = galaxy_cnn(2, 3, patch=16, width=4, depth=2, hidden=8)
    m.load_state_dict(torch.load(confident_ckpt, weights_only=True))
    assert meta["weights_sha256"] == state_dict_sha256(m)
    assert doc["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 2, 16, 16]}]
    assert doc["outputs"] == [{"name": "output", "dtype": "float32", "shape": ["batch", 3]}]


def test_fp16_variant(workdir: Path, sky: Path) -> None:
    pytest.importorskip("torch")
    out = workdir / "crater16.onnx"
    r = invoke("export", *CRATER, "--bands", "g,r", "--out", out, "--precision", "fp16",
               "--parity-fits", sky, "--demo")
    assert r.exit_code == 0, r.output
    label = "fp16 vs fp32, real patches"
    assert _number(r.stdout, label, "max abs error") < 1e-2
    assert _number(r.stdout, label, "agreement at 0.5") >= 0.99
    assert "(0.0" in r.stdout
    assert "fp16)" in r.stdout
    model = onnx.load(str(out))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    r = invoke("inspect", out)
    assert r.exit_code == 0, r.output
    assert "demo model trained on simulated data" in r.stdout
    assert re.search(r"^precision\s+fp16$", r.stdout, re.M)
    assert re.search(r"^input\s+input NCHW, any size, halo 24, multiple 4$", r.stdout, re.M)


def test_int8_variant_calibrated_from_fits(workdir: Path, sky: Path, confident_ckpt: Path) -> None:
    pytest.importorskip("torch")
    out = workdir / "galaxy8.onnx"
    r = invoke("export", *GALAXY, "--weights", confident_ckpt, "--bands", "g,r", "--out", out,
               "--quantize", "int8", "--calibrate", sky)
    assert r.exit_code == 0, r.output
    label = "int8 vs fp32, real patches"
    assert _number(r.stdout, label, "argmax agreement") >= 0.9
    assert _number(r.stdout, label, "mean") < 0.05
    model = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    meta = json.loads(invoke("inspect", out, "--json").stdout)["metadata"]
    assert meta["provenance"]["precision"] == "int8"
    assert meta["provenance"]["variant_agreement"][label]["argmax_agreement"] >= 0.9


def test_parity_failure(workdir: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    out = workdir / "strict.onnx"
    r = invoke("export", *GALAXY, "--bands", "g,r", "--out", out, "--tolerance", "1e-12")
    assert_error(r, 1, r"onnxruntime and PyTorch disagree on random patches: max abs error "
                       r"\S+ > tolerance 1e-12")
    assert not out.exists()


def _factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> str:
    (tmp_path / f"{name}.py").write_text(
        "import torch\n"
        "class NaNHead(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.log(x - x - 1.0)[:, :1]\n"
        "def nan_model(in_channels):\n    return NaNHead()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_error_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    out = tmp_path / "m.onnx"
    base = ["--bands", "g,r", "--out", out]
    assert_error(invoke("export", "vgg16", *base), 2,
                 r"Unknown architecture 'vgg16'. Expected one of crater_unet, galaxy_cnn, "
                 r"lens_resnet, segment_unet")
    assert_error(invoke("export", "no_such_pkg_xyz:make", "--task", "segment", *base), 2,
                 r"Cannot import module 'no_such_pkg_xyz'")
    assert_error(invoke("export", "cnnpipe.export.architectures:nope", *base), 2,
                 r"has no attribute 'nope'")

    from cnnpipe.export.architectures import crater_unet

    ckpt = tmp_path / "wide.pt"
    torch.save(crater_unet(2, base=8, depth=2).state_dict(), ckpt)
    assert_error(invoke("export", *CRATER, "--weights", ckpt, *base), 1,
                 r"checkpoint does not fit the model: shape mismatches \['bottleneck")
    torch.save(crater_unet(2, base=4, depth=3).state_dict(), ckpt)
    assert_error(invoke("export", *CRATER, "--weights", ckpt, *base), 1,
                 r"unexpected keys \['dec.2")

    mod = _factory_module(tmp_path, monkeypatch, "nanfactory_cli")
    assert_error(invoke("export", f"{mod}:nan_model", "--task", "craters", "--halo", "0", *base),
                 1, r"non-finite outputs \(NaN/inf\)")
    sys.modules.pop(mod, None)

    assert_error(invoke("export", *CRATER, "--bands", "", "--out", out), 2,
                 "comma-separated list of band names")
    assert_error(invoke("export", *CRATER, "--bands", "g,r,g", "--out", out), 2,
                 r"distinct band names.*\['g'\] repeated")
    assert_error(invoke("export", *CRATER, "--bands", "g", "--out", tmp_path / "no" / "m.onnx"),
                 1, "does not exist")
    assert not out.exists()


def test_metadata_and_option_errors(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "m.onnx"
    base = [*CRATER, "--bands", "g", "--out", out]
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    assert_error(invoke("export", *base, "--metadata", bad), 1, "expected JSON metadata")
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"colour": "red"}')
    assert_error(invoke("export", *base, "--metadata", unknown), 1,
                 r"Unknown cnnpipe metadata keys \['colour'\]")
    assert_error(invoke("export", *base, "--task", "segment"), 2,
                 "crater_unet is a craters model. Got --task segment")
    r = invoke("export", *base, "--task", "detect")
    assert r.exit_code == 2
    assert "'detect' is not one of" in r.output
    assert_error(invoke("export", *base, "--quantize", "int8"), 2, "--calibrate")
    assert_error(invoke("export", *base, "--quantize", "int8", "--precision", "fp16"), 2,
                 "Got both")
    assert_error(invoke("export", *base, "--arch-opt", "width=3"), 2,
                 r"Unknown option 'width' for architecture crater_unet")
    assert_error(invoke("export", *base, "--arch-opt", "depth"), 2, "KEY=VALUE")
    assert_error(invoke("export", *base, "--normalisation", "gamma"), 2,
                 "normalisation method one of")
    assert_error(invoke("export", *base, "--patch", "40", "--halo", "24"), 2,
                 "larger than twice the halo")
    assert_error(invoke("export", "--bands", "g", "--out", out), 2, "Got neither")
    assert not out.exists()


FROM_ONNX_SCRIPT = r"""
import sys
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
from click.testing import CliRunner
from cnnpipe.cli import cli

w = numpy_helper.from_array(np.full((1, 2, 1, 1), 0.5, np.float32), "w")
g = helper.make_graph(
    [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["y"])],
    "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, "H", "W"])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", "W"])],
    initializer=[w],
)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
onnx.save(m, sys.argv[1] + "/plain.onnx")
r = CliRunner().invoke(cli, ["export", "--from-onnx", sys.argv[1] + "/plain.onnx", "--task",
                             "craters", "--bands", "g,r", "--out", sys.argv[1] + "/ann.onnx",
                             "--halo", "0", "--name", "lin"])
assert r.exit_code == 0, r.output
assert "wrote" in r.stdout, r.output
assert "torch" not in sys.modules, "export --from-onnx imported torch"
print("OK")
"""


def test_from_onnx_needs_no_torch(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FROM_ONNX_SCRIPT, str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("OK")
    r = invoke("inspect", tmp_path / "ann.onnx", "--json")
    doc = json.loads(r.stdout)
    assert doc["metadata"]["name"] == "lin"
    assert doc["metadata"]["input"]["name"] == "x"
    assert doc["inputs"][0]["shape"] == ["N", 2, "H", "W"]
    assert_error(invoke("export", "crater_unet", "--from-onnx", tmp_path / "ann.onnx",
                        "--bands", "g,r", "--out", tmp_path / "x.onnx"), 2, "Got both")
