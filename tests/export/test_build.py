"""Reference architectures, the registry, factories and checkpoint loading."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from cnnpipe.errors import ConfigError, ExportError  # noqa: E402
from cnnpipe.export.architectures import ARCH_SPECS, get_arch  # noqa: E402
from cnnpipe.export.build import (  # noqa: E402
    build_module,
    import_factory,
    load_checkpoint,
    state_dict_sha256,
)
from cnnpipe.export.request import ExportRequest  # noqa: E402
from cnnpipe.inspection import ARCHITECTURES  # noqa: E402


def test_registry_matches_torch_free_table() -> None:
    assert set(ARCH_SPECS) == set(ARCHITECTURES) == {
        "galaxy_cnn", "lens_resnet", "crater_unet", "segment_unet",
    }


@pytest.mark.parametrize(
    ("arch", "shape", "out_shape"),
    [
        ("galaxy_cnn", (3, 2, 32, 32), (3, 3)),
        ("lens_resnet", (3, 2, 64, 64), (3, 2)),
        ("crater_unet", (3, 2, 48, 40), (3, 1, 48, 40)),
        ("segment_unet", (3, 2, 48, 40), (3, 5, 48, 40)),
    ],
)
def test_default_architectures(arch: str, shape: tuple, out_shape: tuple) -> None:
    spec = get_arch(arch)
    m = spec.build(2, len(spec.info.classes)).eval()
    with torch.no_grad():
        y = m(torch.randn(*shape))
    assert tuple(y.shape) == out_shape
    if spec.info.output_kind.value == "probabilities":
        assert torch.allclose(y.sum(dim=1), torch.ones(()), atol=1e-5)
    else:
        assert float(y.min()) >= 0
        assert float(y.max()) <= 1
    # demo-size models: float32 weights well under 5 MB
    n_params = sum(p.numel() for p in m.parameters())
    assert 1_000 < n_params * 4 < 5e6
    assert spec.multiple() == (8 if spec.info.fully_convolutional else 1)
    assert spec.patch() == spec.info.patch


def test_unknown_architecture_lists_known() -> None:
    with pytest.raises(ConfigError, match="crater_unet, galaxy_cnn, lens_resnet, segment_unet"):
        get_arch("vgg16")


def test_unknown_and_bad_options() -> None:
    spec = get_arch("crater_unet")
    with pytest.raises(ConfigError, match=r"Unknown option 'width'.*\['base', 'depth'\]"):
        spec.resolve_options({"width": 3})
    with pytest.raises(ConfigError, match="positive int"):
        spec.resolve_options({"depth": 0})
    assert spec.multiple({"depth": 4}) == 16


def test_galaxy_patch_must_divide() -> None:
    with pytest.raises(ConfigError, match="divisible by 2\\*\\*depth=8"):
        get_arch("galaxy_cnn").build(1, 3, {"patch": 20})


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_checkpoint_forms(tmp_path: Path) -> None:
    spec = get_arch("crater_unet")
    src = spec.build(2, 1, {"base": 2, "depth": 1})
    sd = src.state_dict()
    for i, obj in enumerate([
        sd,
        {"state_dict": sd, "epoch": 3},
        {"model_state_dict": sd},
        {f"module.{k}": v for k, v in sd.items()},
    ]):
        dst = spec.build(2, 1, {"base": 2, "depth": 1})
        load_checkpoint(dst, _save(obj, tmp_path / f"c{i}.pt"))
        assert state_dict_sha256(dst) == state_dict_sha256(src)


def test_sha_changes_with_weights() -> None:
    m = get_arch("crater_unet").build(1, 1, {"base": 2, "depth": 1})
    before = state_dict_sha256(m)
    assert len(before) == 64
    assert before == state_dict_sha256(m)
    with torch.no_grad():
        next(m.parameters())[0, 0, 0, 0] += 1
    assert state_dict_sha256(m) != before


def test_checkpoint_that_does_not_fit(tmp_path: Path) -> None:
    spec = get_arch("crater_unet")
    sd = spec.build(2, 1, {"base": 4, "depth": 2}).state_dict()
    dst = spec.build(2, 1, {"base": 2, "depth": 2})
    pattern = r"shape mismatches \['bottleneck.0.weight \[16, 8, 3, 3\] vs model \[8, 4, 3, 3\]'"
    with pytest.raises(ExportError, match=pattern):
        load_checkpoint(dst, _save(sd, tmp_path / "wide.pt"))
    deeper = spec.build(2, 1, {"base": 4, "depth": 3})
    with pytest.raises(ExportError, match=r"missing keys \['dec.2.*\(\+\d+ more\)"):
        load_checkpoint(deeper, _save(sd, tmp_path / "wide.pt"))
    extra = dict(sd, stray=torch.zeros(1))
    with pytest.raises(ExportError, match=r"unexpected keys \['stray'\]"):
        load_checkpoint(spec.build(2, 1, {"base": 4, "depth": 2}), _save(extra, tmp_path / "x.pt"))


def test_checkpoint_with_pickled_module_is_refused(tmp_path: Path) -> None:
    path = _save(nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(ExportError, match=r"weights_only=True.*state_dict"):
        load_checkpoint(nn.Linear(2, 2), path)
    with pytest.raises(ExportError, match="no such checkpoint"):
        load_checkpoint(nn.Linear(2, 2), tmp_path / "nope.pt")


def test_import_factory_errors() -> None:
    with pytest.raises(ConfigError, match="'module:function'"):
        import_factory("justaname:")
    with pytest.raises(ConfigError, match="Cannot import module 'no_such_mod_xyz'"):
        import_factory("no_such_mod_xyz:make")
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        import_factory("cnnpipe.export.architectures:nope")
    assert import_factory("cnnpipe.export.architectures:crater_unet") is not None


def test_factory_kwargs_follow_its_signature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "facts_build.py").write_text(
        "import torch.nn as nn\n"
        "def noarg():\n    return nn.Conv2d(3, 2, 1)\n"
        "def full(in_channels, num_classes, width=1):\n"
        "    return nn.Conv2d(in_channels, num_classes * width, 1)\n"
        "def notmodule(in_channels):\n    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    base = {"out": tmp_path / "m.onnx", "bands": ("g", "r", "i"), "task": "segment"}
    m, defaults, _ = build_module(ExportRequest(source="facts_build:noarg", **base))
    assert isinstance(m, nn.Conv2d)
    assert defaults["name"] == "noarg"
    m, _, prov = build_module(ExportRequest(
        source="facts_build:full", classes=("a", "b"), options={"width": 2}, **base
    ))
    assert (m.in_channels, m.out_channels) == (3, 4)
    assert prov["options"] == {"width": 2}
    with pytest.raises(ExportError, match=r"return a torch\.nn\.Module"):
        build_module(ExportRequest(source="facts_build:notmodule", **base))
    with pytest.raises(ConfigError, match="Expected --task"):
        build_module(ExportRequest(source="facts_build:noarg", out=base["out"], bands=("g",)))
    sys.modules.pop("facts_build", None)


def test_task_must_match_architecture(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"crater_unet is a craters model\. Got --task segment"):
        build_module(ExportRequest(
            source="crater_unet", task="segment", out=tmp_path / "m.onnx", bands=("g",)
        ))
