"""export_model / export_request: round trip, dynamic shapes, metadata, error cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from cnnpipe.errors import ExportError  # noqa: E402
from cnnpipe.export import export_model, segment_unet, state_dict_sha256  # noqa: E402
from cnnpipe.inspection import inspect_model  # noqa: E402
from cnnpipe.modelmeta import (  # noqa: E402
    InputSpec,
    ModelMeta,
    Normalisation,
    OutputSpec,
    read_model_meta,
)

ARCHS = ["galaxy_cnn", "lens_resnet", "crater_unet", "segment_unet"]

SIGNATURES = {
    "galaxy_cnn": ([ "batch", 2, 16, 16], ["batch", 3]),
    "lens_resnet": (["batch", 2, 32, 32], ["batch", 2]),
    "crater_unet": (["batch", 2, "4*height", "4*width"], ["batch", 1, "4*height", "4*width"]),
    "segment_unet": (["batch", 2, "4*height", "4*width"], ["batch", 5, "4*height", "4*width"]),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_metadata_and_signature(exported: dict, arch: str) -> None:
    report = exported[arch]
    path = report.path
    assert read_model_meta(path) == report.meta
    info = inspect_model(path)
    assert info.meta == report.meta
    (inp,), (out,) = info.inputs, info.outputs
    assert (inp.name, inp.dtype) == ("input", "float32")
    assert (out.name, out.dtype) == ("output", "float32")
    assert [list(inp.shape), list(out.shape)] == [*map(list, SIGNATURES[arch])]
    # one self-contained file, checker-clean, demo-sized
    assert sorted(p.name for p in path.parent.iterdir() if p.stem == arch) == [f"{arch}.onnx"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert all(not t.external_data for t in model.graph.initializer)
    assert report.size_bytes == path.stat().st_size < 5e6


@pytest.mark.parametrize("arch", ARCHS)
def test_metadata_values(exported: dict, arch: str) -> None:
    meta = exported[arch].meta
    assert meta.name == arch
    assert meta.bands == ("g", "r")
    assert len(meta.weights_sha256) == 64
    prov = meta.provenance
    assert prov["exporter"] == "torch.onnx dynamo"
    assert prov["torch"] == torch.__version__
    assert prov["onnx"] == onnx.__version__
    assert prov["precision"] == "fp32"
    assert prov["date"].endswith("Z")
    assert prov["architecture"] == arch
    parity = prov["parity"]
    assert "onnxruntime vs torch, real patches" in parity
    assert all(p["max_abs_error"] <= 1e-4 for p in parity.values())
    if arch in ("crater_unet", "segment_unet"):
        assert meta.input.patch is None
        assert (meta.input.multiple, meta.input.halo) == (4, 24)
        assert exported[arch].receptive_radius == 22
        assert meta.normalisation.params == {"scale": 1.0, "offset": 0.0}
    else:
        assert meta.input.halo == 0
        assert meta.input.patch is not None
    kinds = {"crater_unet": "heatmap"}
    assert meta.output.kind.value == kinds.get(arch, "probabilities")


@pytest.mark.parametrize("arch", ARCHS)
def test_dynamic_batch_and_size_run(exported: dict, arch: str) -> None:
    meta = exported[arch].meta
    sess = ort.InferenceSession(str(exported[arch].path), providers=["CPUExecutionProvider"])
    sizes = [meta.input.patch] if meta.input.patch else [(16, 16), (40, 56), (128, 36)]
    rng = np.random.default_rng(0)
    for batch in (1, 5):
        for h, w in sizes:
            x = rng.standard_normal((batch, 2, h, w)).astype(np.float32)
            (y,) = sess.run(None, {"input": x})
            n_out = len(meta.output.classes)
            want = (batch, n_out) if meta.task.value == "classify" else (batch, n_out, h, w)
            assert y.shape == want
            assert np.isfinite(y).all()
            if meta.output.kind.value == "probabilities":
                np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
            else:
                assert y.min() >= 0
                assert y.max() <= 1


def test_python_api_with_trained_module(tmp_path: Path) -> None:
    """The demo-training script's path: an in-memory module and a hand-made ModelMeta."""
    torch.manual_seed(3)
    module = segment_unet(1, 2, base=2, depth=1)
    meta = ModelMeta(
        name="seg-demo",
        task="segment",
        bands=("r",),
        input=InputSpec(patch=None, multiple=2),
        output=OutputSpec(classes=("bg", "fg")),
        normalisation=Normalisation(method="asinh", params={"scale": 3.0, "offset": 0.0}),
        demo=True,
        provenance={"training": "simulated"},
    )
    module.train()
    lines: list[str] = []
    raw = 100 + np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    report = export_model(
        module, meta=meta, out=tmp_path / "seg.onnx", real_patches=raw,
        extra_provenance={"epochs": 2}, log=lines.append,
    )
    got = read_model_meta(tmp_path / "seg.onnx")
    assert got == report.meta
    assert module.training  # the caller's module is left as it was
    assert got.weights_sha256 == state_dict_sha256(module)
    assert (got.input.halo, report.receptive_radius) == (8, 8)
    assert got.provenance["training"] == "simulated"
    assert got.provenance["epochs"] == 2
    assert got.demo
    assert got.normalisation.params["scale"] == 3.0
    assert any(line.startswith("onnxruntime vs torch, real patches: n=3 max abs error")
               for line in lines)


def test_declared_halo_is_kept_and_checked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(4)
    meta = ModelMeta(
        name="seg", task="segment", bands=("r",), input=InputSpec(patch=None, multiple=2),
        output=OutputSpec(classes=("bg", "fg")),
    )
    with caplog.at_level("WARNING", logger="cnnpipe.export.exporter"):
        report = export_model(segment_unet(1, 2, base=2, depth=1), meta=meta, halo=2,
                              out=tmp_path / "seg.onnx", log=lambda _: None)
    assert report.meta.input.halo == 2
    assert read_model_meta(tmp_path / "seg.onnx").input.halo == 2
    assert "declared halo 2 is smaller than the receptive-field radius 8" in caplog.text


class _NaN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x - x - 1.0).mean(dim=(2, 3)).repeat(1, 2)[:, :2]


def _classify_meta(**kw: object) -> ModelMeta:
    base: dict = {
        "name": "m", "task": "classify", "bands": ("g",),
        "input": InputSpec(patch=(8, 8)), "output": OutputSpec(classes=("a", "b")),
    }
    base.update(kw)
    return ModelMeta(**base)


def test_non_finite_outputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"non-finite outputs \(NaN/inf\)"):
        export_model(_NaN(), meta=_classify_meta(), out=tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_output_shape_must_fit_metadata(tmp_path: Path) -> None:
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.Softmax(dim=1))
    with pytest.raises(ExportError, match=r"outputs 3 channels but the metadata lists 2"):
        export_model(three, meta=_classify_meta(), out=tmp_path / "m.onnx")
    dense = nn.Conv2d(1, 2, 3, padding=1)
    with pytest.raises(ExportError, match=r"classify model to output \(n, classes\)"):
        export_model(dense, meta=_classify_meta(), out=tmp_path / "m.onnx")


def test_unwritable_output(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        export_model(nn.Identity(), meta=_classify_meta(), out=tmp_path / "no" / "m.onnx")
