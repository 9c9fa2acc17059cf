"""The bad-input corpus (DESIGN §8): every case is refused in one line, and never completes.

Each case is generated here from a valid seeded file (truncations, flipped bytes, header
lies) or built directly (tables, cubes, stores, models), then run through the real
command line.  Every case must end with exit code != 0, exactly one ``cnnpipe: error:``
line naming the file (and the HDU where there is one), no traceback, and no store whose
attributes say ``complete``.  Cases that may legitimately run (a flipped data byte of a
float image without DATASUM is just another valid image) are not in the corpus; with a
DATASUM they are (``datasum_mismatch``).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
import zarr
from astropy.io import fits
from click.testing import CliRunner

from cnnpipe.cli import cli
from cnnpipe.modelmeta import METADATA_KEY
from cnnpipe.pipeline.store import lock_path
from cnnpipe.testing import fitsfiles as ff
from cnnpipe.testing.onnx_models import (
    classify_model,
    craters_model,
    external_data_model,
    segment_model,
)

SHAPE = (48, 64)


@dataclass(frozen=True)
class Kit:
    """Valid inputs the cases mutate, and a running scheduler for cases that get that far."""

    root: Path
    image: Path
    model: Path
    scheduler: str


@dataclass(frozen=True)
class Case:
    """A command line that must be refused, and what its error line must name."""

    args: list[str]
    names: tuple[str, ...]
    out: Path
    #: the refusal comes before the store and its lock exist
    before_store: bool = True
    code: int = 1
    store_before: dict[str, object] | None = field(default=None, compare=False)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    from distributed import LocalCluster

    root = tmp_path_factory.mktemp("corpus")
    image, _ = ff.write_float(root / "sky.fits", shape=SHAPE)
    model = root / "craters.onnx"
    craters_model(model)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.CRITICAL) as lc:
        yield Kit(root=root, image=image, model=model, scheduler=lc.scheduler_address)


def _run(kit: Kit, tmp: Path, *images: str | Path, model: Path | None = None,
         extra: tuple[str, ...] = ()) -> tuple[list[str], Path]:
    out = tmp / "out.zarr"
    args = ["run", *map(str, images), "--model", str(model or kit.model), "--out", str(out),
            "--tile", "32", "--patch", "24", "--device", "cpu", "--retries", "0",
            "--scheduler", kit.scheduler, *extra]
    return args, out


def _image_case(kit: Kit, tmp: Path, path: Path, *names: str) -> Case:
    args, out = _run(kit, tmp, path)
    return Case(args=args, names=(path.name, *names), out=out)


# -- byte-level mutations of a valid file ----------------------------------------------


def _copy_bytes(kit: Kit) -> bytearray:
    return bytearray(kit.image.read_bytes())


def _header_end(raw: bytes | bytearray) -> int:
    """Offset of the first data byte (the header block after the END card)."""
    end = next(i for i in range(0, len(raw), 80) if raw[i:i + 80].rstrip() == b"END")
    return (end // 2880 + 1) * 2880


def _set_card(raw: bytearray, key: str, value: str) -> bytearray:
    """Overwrite the value of an existing card in place (a header lie)."""
    at = next(i for i in range(0, _header_end(raw), 80) if raw[i:i + 8] == key.ljust(8).encode())
    raw[at:at + 80] = f"{key:<8}= {value:>20}".ljust(80).encode("ascii")
    return raw


def _write(tmp: Path, name: str, raw: bytes | bytearray) -> Path:
    path = tmp / name
    path.write_bytes(bytes(raw))
    return path


def _mutated(name: str, mutate: Callable[[bytearray], bytearray], *hdu: str
             ) -> Callable[[Kit, Path], Case]:
    def build(kit: Kit, tmp: Path) -> Case:
        return _image_case(kit, tmp, _write(tmp, name, mutate(_copy_bytes(kit))), *hdu)
    return build


def _flip(at: Callable[[bytearray], int], mask: int = 0xFF) -> Callable[[bytearray], bytearray]:
    def mutate(raw: bytearray) -> bytearray:
        raw[at(raw)] ^= mask
        return raw
    return mutate


def _card_value_at(key: str, back: int = 0) -> Callable[[bytearray], int]:
    """Offset of a character ``back`` places before the end of a card's value."""
    def at(raw: bytearray) -> int:
        start = next(i for i in range(0, _header_end(raw), 80)
                     if raw[i:i + 8] == key.ljust(8).encode())
        return start + 29 - back  # fixed format: the value ends in column 30
    return at


def _end_card(raw: bytearray) -> int:
    return next(i for i in range(0, len(raw), 80) if raw[i:i + 80].rstrip() == b"END")


# -- cases built whole -------------------------------------------------------------------


def _checksummed(kit: Kit, tmp: Path) -> tuple[bytearray, int]:
    path = tmp / "summed.fits"
    with fits.open(kit.image) as hdul:
        hdul.writeto(path, checksum=True)
    raw = bytearray(path.read_bytes())
    return raw, _header_end(raw)


def case_datasum_mismatch(kit: Kit, tmp: Path) -> Case:
    raw, data = _checksummed(kit, tmp)
    raw[data + 1001] ^= 0x01  # a low mantissa bit: a valid float, but not the one written
    return _image_case(kit, tmp, _write(tmp, "datasum.fits", raw), "[0]", "DATASUM")


def case_checksum_mismatch(kit: Kit, tmp: Path) -> Case:
    raw, _ = _checksummed(kit, tmp)
    at = bytes(raw).index(b"OBJECT  = ")
    raw[at + 12] ^= 0x01  # one letter of a string value: the header still parses
    return _image_case(kit, tmp, _write(tmp, "checksum.fits", raw), "[0]", "CHECKSUM")


def case_gzip_truncated(kit: Kit, tmp: Path) -> Case:
    packed = gzip.compress(kit.image.read_bytes())
    return _image_case(kit, tmp, _write(tmp, "cut.fits.gz", packed[: len(packed) // 2]))


def case_gzip_corrupt(kit: Kit, tmp: Path) -> Case:
    packed = bytearray(gzip.compress(kit.image.read_bytes()))
    packed[-6] ^= 0xFF  # the CRC-32 at the end no longer matches the data
    return _image_case(kit, tmp, _write(tmp, "crc.fits.gz", packed))


def _compressed(tmp: Path) -> tuple[Path, bytearray]:
    path, _ = ff.write_compressed(tmp / "tiles.fits", shape=(96, 96), tile_shape=(8, 96))
    return path, bytearray(path.read_bytes())


def _tile_bytes(path: Path, tile: int) -> range:
    """File offsets of one compressed tile: its heap descriptor (count, offset)."""
    with fits.open(path, disable_image_compression=True) as hdul:
        table, data = hdul[1], hdul.fileinfo(1)["datLoc"]
        heap = data + int(table.header.get("THEAP", table.header["NAXIS1"]
                                           * table.header["NAXIS2"]))
        count, offset = (int(v) for v in np.recarray.field(table.data, "COMPRESSED_DATA")[tile])
    return range(heap + offset, heap + offset + count)


def _corrupt_tile(tmp: Path, tile: int, name: str) -> Path:
    path, raw = _compressed(tmp)
    for at in _tile_bytes(path, tile):
        raw[at] ^= 0x5A
    return _write(tmp, name, raw)


def case_compressed_truncated(kit: Kit, tmp: Path) -> Case:
    _, raw = _compressed(tmp)
    return _image_case(kit, tmp, _write(tmp, "tc_cut.fits", raw[:-3000]))


def case_compressed_corrupt_last_tile(kit: Kit, tmp: Path) -> Case:
    """Validation reads the last row, so it decompresses this tile."""
    return _image_case(kit, tmp, _corrupt_tile(tmp, -1, "tc_bad.fits"), "[1]")


def case_compressed_corrupt_middle_tile(kit: Kit, tmp: Path) -> Case:
    """Not seen by validation (which reads the last row): the worker's read fails."""
    bad = _corrupt_tile(tmp, 5, "tc_mid.fits")
    args, out = _run(kit, tmp, bad)
    return Case(args=args, names=("tc_mid.fits[1]", "unit"), out=out, before_store=False)


def case_mef_truncated(kit: Kit, tmp: Path) -> Case:
    path, _ = ff.write_mef(tmp / "mef.fits")
    raw = path.read_bytes()
    return _image_case(kit, tmp, _write(tmp, "mef_cut.fits", raw[:-2000]))


def case_cube(kit: Kit, tmp: Path) -> Case:
    return _image_case(kit, tmp, ff.write_cube(tmp / "cube.fits"), "[0]", "NAXIS=3")


def case_table_only(kit: Kit, tmp: Path) -> Case:
    return _image_case(kit, tmp, ff.write_table(tmp / "cat.fits"), "table")


def case_table_selected(kit: Kit, tmp: Path) -> Case:
    path = ff.write_table(tmp / "cat.fits")
    args, out = _run(kit, tmp, f"{path}[1]")
    return Case(args=args, names=("cat.fits[CATALOG]", "table"), out=out)


def case_header_only(kit: Kit, tmp: Path) -> Case:
    return _image_case(kit, tmp, ff.write_empty(tmp / "empty_hdu.fits"), "NAXIS=0")


def case_empty_primary_selected(kit: Kit, tmp: Path) -> Case:
    path, _ = ff.write_mef(tmp / "mef.fits")
    args, out = _run(kit, tmp, f"{path}[0]")
    return Case(args=args, names=("mef.fits[0]", "without pixels"), out=out)


def case_empty_image(kit: Kit, tmp: Path) -> Case:
    path = tmp / "zero_rows.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((0, 5), np.float32))]).writeto(path)
    return _image_case(kit, tmp, path, "shape 0x5")


def case_random_groups(kit: Kit, tmp: Path) -> Case:
    path = tmp / "groups.fits"
    data = fits.GroupData(np.ones((3, 1, 2, 2), np.float32), parnames=["u"],
                          pardata=[np.zeros(3, np.float32)], bitpix=-32)
    fits.GroupsHDU(data).writeto(path)
    return _image_case(kit, tmp, path, "random groups")


def case_hdu_out_of_range(kit: Kit, tmp: Path) -> Case:
    args, out = _run(kit, tmp, f"{kit.image}[5]")
    return Case(args=args, names=("sky.fits[5]", "no such HDU"), out=out)


def case_extname_missing(kit: Kit, tmp: Path) -> Case:
    path, _ = ff.write_mef(tmp / "mef.fits")
    args, out = _run(kit, tmp, f"{path}[NOPE]")
    return Case(args=args, names=("mef.fits[NOPE]",), out=out)


def case_missing_file(kit: Kit, tmp: Path) -> Case:
    return _image_case(kit, tmp, tmp / "nowhere.fits", "no such file")


def case_directory(kit: Kit, tmp: Path) -> Case:
    (tmp / "dir.fits").mkdir()
    return _image_case(kit, tmp, tmp / "dir.fits", "directory")


def case_empty_file(kit: Kit, tmp: Path) -> Case:
    return _image_case(kit, tmp, _write(tmp, "zero.fits", b""))


def case_text_named_fits(kit: Kit, tmp: Path) -> Case:
    return _image_case(kit, tmp, ff.write_not_fits(tmp / "notes.fits"))


def case_random_bytes(kit: Kit, tmp: Path) -> Case:
    raw = np.random.default_rng(7).integers(0, 256, 8640, dtype=np.uint8).tobytes()
    return _image_case(kit, tmp, _write(tmp, "noise.fits", raw))


# -- bands and models --------------------------------------------------------------------


def case_band_grids_differ_in_shape(kit: Kit, tmp: Path) -> Case:
    ff.write_bands(tmp, ("g", "r"), shapes={"r": (40, 50)})
    two = tmp / "two.onnx"
    segment_model(two, bands=("g", "r"), name="two")
    out = tmp / "out.zarr"
    args = ["run", "--band", f"g={tmp / 'field_g.fits'}", "--band", f"r={tmp / 'field_r.fits'}",
            "--model", str(two), "--out", str(out), "--device", "cpu"]
    return Case(args=args, names=("field_r.fits[0]", "field_g.fits[0]", "one pixel grid"),
                out=out)


def case_band_grids_differ_in_wcs(kit: Kit, tmp: Path) -> Case:
    ff.write_bands(tmp, ("g", "r"), shifts={"r": (3.0, 0.0)})
    two = tmp / "two.onnx"
    segment_model(two, bands=("g", "r"), name="two")
    out = tmp / "out.zarr"
    args = ["run", "--band", f"g={tmp / 'field_g.fits'}", "--band", f"r={tmp / 'field_r.fits'}",
            "--model", str(two), "--out", str(out), "--device", "cpu"]
    return Case(args=args, names=("field_r.fits[0]", "WCS differs"), out=out)


def case_model_band_not_given(kit: Kit, tmp: Path) -> Case:
    two = tmp / "two.onnx"
    segment_model(two, bands=("g", "r"), name="two")
    out = tmp / "out.zarr"
    args = ["run", "--band", f"g={kit.image}", "--model", str(two), "--out", str(out)]
    return Case(args=args, names=("model two", "two.onnx", "needs bands g,r", "missing r"),
                out=out)


def case_multiband_model_on_one_image(kit: Kit, tmp: Path) -> Case:
    two = tmp / "two.onnx"
    segment_model(two, bands=("g", "r"), name="two")
    args, out = _run(kit, tmp, kit.image, model=two)
    return Case(args=args, names=("model two", "two.onnx", "needs bands g,r", "sky.fits"),
                out=out)


def case_classifier_patch_larger_than_image(kit: Kit, tmp: Path) -> Case:
    big = tmp / "big.onnx"
    classify_model(big, patch=64)
    args, out = _run(kit, tmp, kit.image, model=big)
    return Case(args=args, names=("big.onnx", "64x64", "48x64"), out=out)


def case_metadata_contradicts_graph(kit: Kit, tmp: Path) -> Case:
    model = onnx.load(str(kit.model))
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    meta["input"]["name"] = "pixels"
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    path = tmp / "liar.onnx"
    onnx.save(model, str(path))
    args, out = _run(kit, tmp, kit.image, model=path)
    return Case(args=args, names=("liar.onnx", "'pixels'"), out=out)


def case_model_missing(kit: Kit, tmp: Path) -> Case:
    args, out = _run(kit, tmp, kit.image, model=tmp / "gone.onnx")
    return Case(args=args, names=("gone.onnx", "no such model file"), out=out)


def case_model_not_onnx(kit: Kit, tmp: Path) -> Case:
    path = _write(tmp, "junk.onnx", b"\x00\x01 not protobuf")
    args, out = _run(kit, tmp, kit.image, model=path)
    return Case(args=args, names=("junk.onnx", "not a readable ONNX model"), out=out)


def case_model_without_metadata(kit: Kit, tmp: Path) -> Case:
    model = onnx.load(str(kit.model))
    del model.metadata_props[:]
    path = tmp / "bare.onnx"
    onnx.save(model, str(path))
    args, out = _run(kit, tmp, kit.image, model=path)
    return Case(args=args, names=("bare.onnx", "no 'cnnpipe' metadata"), out=out)


def _external_case(location: str) -> Callable[[Kit, Path], Case]:
    def build(kit: Kit, tmp: Path) -> Case:
        models = tmp / "models"
        models.mkdir()
        path = models / "ext.onnx"
        external_data_model(path, location=location.format(tmp=tmp))
        args, out = _run(kit, tmp, kit.image, model=path)
        return Case(args=args, names=("ext.onnx", "outside", "rim.w"), out=out)
    return build


def case_external_data_symlink(kit: Kit, tmp: Path) -> Case:
    models = tmp / "models"
    models.mkdir()
    (tmp / "secret.bin").write_bytes(b"\x00" * 36)
    (models / "link.bin").symlink_to(tmp / "secret.bin")
    path = models / "ext.onnx"
    external_data_model(path, location="link.bin")
    args, out = _run(kit, tmp, kit.image, model=path)
    return Case(args=args, names=("ext.onnx", "secret.bin", "outside"), out=out)


# -- stores ------------------------------------------------------------------------------


def case_store_of_another_run(kit: Kit, tmp: Path) -> Case:
    args, out = _run(kit, tmp, kit.image)
    attrs = {"schema": "cnnpipe.run/1", "status": "complete", "run_id": "other",
             "identity_sha256": "0" * 64, "identity": {"tile": 16}}
    zarr.open_group(str(out), mode="w").attrs["cnnpipe"] = attrs
    return Case(args=args, names=(str(out), "another configuration", "--overwrite"),
                out=out, before_store=False, store_before=attrs)


def case_store_locked(kit: Kit, tmp: Path) -> Case:
    args, out = _run(kit, tmp, kit.image)
    lock_path(out).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                          "started": "now", "run_id": "busy"}))
    return Case(args=args, names=(str(out), f"pid {os.getpid()} on host {socket.gethostname()}"),
                out=out, before_store=False)


def case_out_is_not_a_store(kit: Kit, tmp: Path) -> Case:
    args, out = _run(kit, tmp, kit.image)
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    return Case(args=args, names=(str(out), "not a Zarr store"), out=out, before_store=False)


def case_out_is_a_foreign_zarr_store(kit: Kit, tmp: Path) -> Case:
    args, out = _run(kit, tmp, kit.image)
    zarr.open_group(str(out), mode="w").attrs["owner"] = "someone else"
    return Case(args=args, names=(str(out), "not a cnnpipe run store"), out=out,
                before_store=False)


CASES: dict[str, Callable[[Kit, Path], Case]] = {
    # files that are not FITS, or not there
    "missing_file": case_missing_file,
    "directory": case_directory,
    "empty_file": case_empty_file,
    "text_named_fits": case_text_named_fits,
    "random_bytes": case_random_bytes,
    # truncations
    "truncated_in_header": _mutated("cut_header.fits", lambda b: b[:1000]),
    "truncated_after_header": _mutated("cut_at_data.fits", lambda b: b[:_header_end(b)]),
    "truncated_in_data": _mutated("cut_data.fits", lambda b: b[: len(b) - 5000]),
    "truncated_last_byte": _mutated("cut_byte.fits", lambda b: b[:-1]),
    "gzip_truncated": case_gzip_truncated,
    "compressed_truncated": case_compressed_truncated,
    "mef_truncated": case_mef_truncated,
    # flipped bytes
    "flipped_simple": _mutated("flip_simple.fits", _flip(lambda b: 0, 0x0B)),
    "flipped_end_card": _mutated("flip_end.fits", _flip(_end_card, 0x1D)),
    # NAXIS1 64 -> 94: more data than the file holds (64 -> 65 would still fit the last
    # 2880-byte block and run, on wrong pixels: only a CHECKSUM can catch that)
    "flipped_naxis1_digit": _mutated("flip_naxis1.fits",
                                     _flip(_card_value_at("NAXIS1", back=1), 0x0F)),
    "flipped_bitpix_digit": _mutated("flip_bitpix.fits", _flip(_card_value_at("BITPIX"), 0x01),
                                     "[0]", "BITPIX", "Got -33"),
    "datasum_mismatch": case_datasum_mismatch,
    "checksum_mismatch": case_checksum_mismatch,
    "gzip_corrupt": case_gzip_corrupt,
    "compressed_corrupt_last_tile": case_compressed_corrupt_last_tile,
    "compressed_corrupt_middle_tile": case_compressed_corrupt_middle_tile,
    # NAXIS and BITPIX lies
    "naxis1_larger": _mutated("naxis1_big.fits", lambda b: _set_card(b, "NAXIS1", "640")),
    "naxis2_larger": _mutated("naxis2_big.fits", lambda b: _set_card(b, "NAXIS2", "480")),
    "naxis1_smaller": _mutated("naxis1_small.fits", lambda b: _set_card(b, "NAXIS1", "10")),
    "naxis_3_without_naxis3": _mutated("naxis3.fits", lambda b: _set_card(b, "NAXIS", "3")),
    "naxis_1": _mutated("naxis1d.fits", lambda b: _set_card(b, "NAXIS", "1")),
    "naxis_0": _mutated("naxis0.fits", lambda b: _set_card(b, "NAXIS", "0")),
    "naxis1_zero": _mutated("naxis1_zero.fits", lambda b: _set_card(b, "NAXIS1", "0")),
    "naxis1_negative": _mutated("naxis1_neg.fits", lambda b: _set_card(b, "NAXIS1", "-64"),
                                "[0]", "NAXIS1"),
    # -15 x 48 x 4 bytes = -2880: "the next HDU" starts at the primary header again; astropy
    # 8 then reads the file's HDUs in an endless loop (found by test_header_fuzz)
    "naxis1_negative_points_back": _mutated("naxis1_loop.fits",
                                            lambda b: _set_card(b, "NAXIS1", "-15"), "[0]"),
    "naxis1_huge": _mutated("naxis1_huge.fits", lambda b: _set_card(b, "NAXIS1", str(10**15))),
    # astropy 8 builds a list of NAXIS axes before anything checks it: minutes, then
    # MemoryError (found by test_header_fuzz)
    "naxis_huge": _mutated("naxis_huge.fits", lambda b: _set_card(b, "NAXIS", str(2**70)),
                           "[0]", "NAXIS"),
    "naxis_as_text": _mutated("naxis_text.fits", lambda b: _set_card(b, "NAXIS", "'2'")),
    "naxis1_as_float": _mutated("naxis1_float.fits", lambda b: _set_card(b, "NAXIS1", "64.0")),
    "bitpix_wider": _mutated("bitpix_wide.fits", lambda b: _set_card(b, "BITPIX", "-64")),
    "bitpix_narrower": _mutated("bitpix_narrow.fits", lambda b: _set_card(b, "BITPIX", "16")),
    "bitpix_invalid": _mutated("bitpix_12.fits", lambda b: _set_card(b, "BITPIX", "12")),
    "bitpix_as_text": _mutated("bitpix_text.fits", lambda b: _set_card(b, "BITPIX", "'E'")),
    # HDUs that are not 2-D images
    "cube": case_cube,
    "table_only": case_table_only,
    "table_selected": case_table_selected,
    "header_only": case_header_only,
    "empty_primary_selected": case_empty_primary_selected,
    "empty_image": case_empty_image,
    "random_groups": case_random_groups,
    "hdu_out_of_range": case_hdu_out_of_range,
    "extname_missing": case_extname_missing,
    # bands and models that do not fit the data
    "band_grids_differ_in_shape": case_band_grids_differ_in_shape,
    "band_grids_differ_in_wcs": case_band_grids_differ_in_wcs,
    "model_band_not_given": case_model_band_not_given,
    "multiband_model_on_one_image": case_multiband_model_on_one_image,
    "classifier_patch_larger_than_image": case_classifier_patch_larger_than_image,
    "metadata_contradicts_graph": case_metadata_contradicts_graph,
    "model_missing": case_model_missing,
    "model_not_onnx": case_model_not_onnx,
    "model_without_metadata": case_model_without_metadata,
    "external_data_parent": _external_case("../evil.bin"),
    "external_data_absolute": _external_case("{tmp}/evil.bin"),
    "external_data_symlink": case_external_data_symlink,
    # stores
    "store_of_another_run": case_store_of_another_run,
    "store_locked": case_store_locked,
    "out_is_not_a_store": case_out_is_not_a_store,
    "out_is_a_foreign_zarr_store": case_out_is_a_foreign_zarr_store,
}


def _status(out: Path) -> object:
    if not (out / "zarr.json").exists():
        return None
    return zarr.open_group(str(out), mode="r").attrs.get("cnnpipe", {}).get("status")


def _single_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("cnnpipe: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 30


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_in_one_line(name: str, kit: Kit, tmp_path: Path) -> None:
    case = CASES[name](kit, tmp_path)
    result = CliRunner().invoke(cli, case.args)
    assert isinstance(result.exception, SystemExit), result.exception  # nothing escaped
    assert result.exit_code == case.code, result.output
    assert "Traceback" not in result.output
    line = _single_error(result.stderr)
    assert result.stderr.strip().splitlines() == [line]
    for part in case.names:
        assert part in line, (part, line)
    if case.before_store:
        assert not case.out.exists(), "refused before the store is created"
        assert not lock_path(case.out).exists()
    elif case.store_before is not None:
        after = zarr.open_group(str(case.out), mode="r").attrs["cnnpipe"]
        assert after == case.store_before, "another run's store is left as it was"
    else:
        assert _status(case.out) != "complete"
    if name == "store_locked":
        assert lock_path(case.out).exists(), "the owner's lock is left alone"
    elif name != "store_of_another_run":
        assert not lock_path(case.out).exists(), "the lock is released"


@pytest.mark.parametrize("name", ["truncated_in_data", "external_data_parent",
                                  "compressed_corrupt_middle_tile"])
def test_real_process_prints_no_traceback(name: str, kit: Kit, tmp_path: Path) -> None:
    """The same refusals from a real ``cnnpipe`` process: stderr as a user sees it."""
    case = CASES[name](kit, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "cnnpipe", *case.args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == case.code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    line = _single_error(proc.stderr)
    for part in case.names:
        assert part in line
    assert _status(case.out) != "complete"
