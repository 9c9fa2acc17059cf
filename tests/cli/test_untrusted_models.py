"""Untrusted models: external data that leaves the model's folder, pickled checkpoints.

A model package or checkpoint from elsewhere must never make cnnpipe read files outside
the model's folder or run code: ``inspect``, ``run`` and ``export --from-onnx`` refuse
external-data locations that leave the folder (absolute, ``..``, or a symbolic link out),
and ``export`` loads checkpoints with ``torch.load(weights_only=True)``, so a pickled
object that would run code on loading is refused, not executed.
"""

from __future__ import annotations

import os
import pathlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner, Result

from cnnpipe.cli import cli
from cnnpipe.modelmeta import read_model_meta
from cnnpipe.testing.onnx_models import external_data_model


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result: Result) -> str:
    """The one error line of a refused command (no traceback, nothing on stdout)."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("cnnpipe: error: ")
    return line


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


def test_external_data_inside_the_folder_is_accepted(models: Path) -> None:
    path = models / "inside.onnx"
    external_data_model(path, location="weights/conv.bin")
    result = invoke("inspect", path)
    assert result.exit_code == 0, result.output
    assert "model        craters" in result.stdout
    assert read_model_meta(path).name == "craters"


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("../evil.bin", "which resolves to {tmp}/evil.bin, outside the model's folder"),
        ("weights/../../evil.bin", "which resolves to {tmp}/evil.bin, outside"),
        ("{tmp}/abs.bin", "an absolute path"),
        ("missing.bin", "no such file"),
    ],
    ids=["parent", "nested-parent", "absolute", "missing"],
)
@pytest.mark.parametrize("command", ["inspect", "run", "export"])
def test_external_data_leaving_the_folder_is_refused(
    models: Path, tmp_path: Path, location: str, why: str, command: str
) -> None:
    path = models / "evil.onnx"
    where = location.format(tmp=tmp_path)
    external_data_model(path, location=where)
    if location == "missing.bin":
        (models / "missing.bin").unlink()
    if command == "inspect":
        result = invoke("inspect", path, "--json")
    elif command == "run":
        image = tmp_path / "sky.fits"
        fits.PrimaryHDU(np.zeros((16, 16), np.float32)).writeto(image)
        result = invoke("run", image, "--model", path, "--out", tmp_path / "o.zarr",
                        "--device", "cpu")
        assert not (tmp_path / "o.zarr").exists(), "refused before any work starts"
    else:
        result = invoke("export", "--from-onnx", path, "--task", "craters", "--bands", "r",
                        "--out", tmp_path / "annotated.onnx")
        assert not (tmp_path / "annotated.onnx").exists()
    line = error_line(result)
    assert f"{path}: expected external data in a file inside the model's folder" in line
    assert f"Got tensor 'rim.w' at {where!r} ({why.format(tmp=tmp_path)}" in line


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(
    models: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 36)
    (models / "link.bin").symlink_to(secret)
    path = models / "linked.onnx"
    external_data_model(path, location="link.bin")
    line = error_line(invoke("inspect", path))
    assert f"'link.bin' (which resolves to {secret}, outside the model's folder)" in line


class _RunsCode:
    """Unpickling this creates ``marker``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("payload", ["object", "function"])
def test_pickled_code_in_a_checkpoint_is_refused_not_run(
    tmp_path: Path, payload: str
) -> None:
    torch = pytest.importorskip("torch")
    from cnnpipe.export.architectures import crater_unet

    marker = tmp_path / "pwned"
    state = crater_unet(1, base=4, depth=2).state_dict()
    extra = _RunsCode(marker) if payload == "object" else os.system
    ckpt = tmp_path / "hostile.pt"
    torch.save({"state_dict": state, "extra": extra}, ckpt)
    out = tmp_path / "m.onnx"
    result = invoke("export", "crater_unet", "--arch-opt", "base=4", "--arch-opt", "depth=2",
                    "--weights", ckpt, "--bands", "r", "--out", out)
    line = error_line(result)
    assert f"{ckpt}: cannot load the checkpoint with torch.load(weights_only=True)" in line
    assert "Save model.state_dict() rather than the whole model." in line
    assert not marker.exists(), "the pickled code ran"
    assert not out.exists()
    # the same weights saved as a plain state_dict export fine: only the payload is refused
    torch.save(state, ckpt)
    result = invoke("export", "crater_unet", "--arch-opt", "base=4", "--arch-opt", "depth=2",
                    "--weights", ckpt, "--bands", "r", "--out", out)
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_model_identity_covers_its_external_data(models: Path, tmp_path: Path) -> None:
    """Replacing an external-data file changes the model's SHA-256: a store made with the
    old weights is refused, never resumed with the new ones."""
    from cnnpipe.modelmeta import file_sha256, model_sha256

    single = models / "single.onnx"
    from cnnpipe.testing.onnx_models import craters_model

    craters_model(str(single), name="craters")
    assert model_sha256(single) == file_sha256(single)  # single-file models: unchanged

    path = models / "inside.onnx"
    external_data_model(path, location="weights/conv.bin")
    before = model_sha256(path)
    assert before != file_sha256(path)
    image = tmp_path / "img.fits"
    fits.PrimaryHDU(np.random.default_rng(1).random((64, 64), np.float32)).writeto(image)
    out = tmp_path / "out.zarr"
    first = invoke("run", image, "--model", path, "--out", out, "--tile", 64, "--device", "cpu")
    assert first.exit_code == 0, first.output
    blob = models / "weights" / "conv.bin"
    data = bytearray(blob.read_bytes())
    data[:4] = np.float32(0.5).tobytes()  # new weights, same graph file
    blob.write_bytes(bytes(data))
    assert model_sha256(path) != before
    again = invoke("run", image, "--model", path, "--out", out, "--tile", 64, "--device", "cpu")
    assert "another configuration" in error_line(again)
