"""Hypothesis fuzzing of FITS header values: a refusal naming the file, or a complete run.

A valid small image (float32, or int16 with BSCALE/BZERO/BLANK) with a TAN WCS gets up to
three of its cards' values overwritten in place, byte for byte, with integers of any size,
floats, FITS logicals, quoted strings and unquoted junk (values astropy itself cannot
parse).  Whatever the header says, validation either refuses the file with a one-line
:class:`~cnnpipe.errors.CnnpipeError` that names it, or accepts it, and then every pixel
reads as float32 and a run gives a complete store.  Any other exception is a bug.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from cnnpipe.errors import CnnpipeError
from cnnpipe.pipeline.config import RunConfig
from cnnpipe.pipeline.runner import run
from cnnpipe.pipeline.sources import open_sources
from cnnpipe.testing import fitsfiles as ff
from cnnpipe.testing.onnx_models import craters_model

SHAPE = (24, 32)
#: cards of the base files (placeholders are added where needed; BLANK: int16 only)
KEYS = (
    "SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BSCALE", "BZERO", "BLANK",
    "CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1",
    "CD2_2", "CUNIT1", "LONPOLE", "LATPOLE", "EQUINOX", "RADESYS", "DATE-OBS", "MJD-OBS",
    "A_ORDER", "PV2_1", "WCSAXES", "CHECKSUM", "DATASUM", "EXTNAME", "EXTVER",
)
_TEXT = {"CTYPE1", "CTYPE2", "CUNIT1", "RADESYS", "DATE-OBS", "EXTNAME"}


def _base(kind: str) -> bytes:
    """The raw bytes of a valid image whose header holds every card of :data:`KEYS`."""
    header = ff.tan_header(SHAPE)
    if kind == "int16":
        raw = np.random.default_rng(0).integers(-100, 3000, SHAPE).astype(np.int16)
        hdu = fits.PrimaryHDU(raw, header=header)
        hdu.header["BSCALE"], hdu.header["BZERO"], hdu.header["BLANK"] = 0.5, 10.0, -32768
    else:
        hdu = fits.PrimaryHDU(ff.sky_image(SHAPE), header=header)
        hdu.header["BSCALE"], hdu.header["BZERO"] = 1.0, 0.0
    # no BLANK with BITPIX -32: astropy would then "fix" every unparsable card it meets
    for key in KEYS:
        if key not in hdu.header and key not in ("CHECKSUM", "DATASUM", "BLANK"):
            hdu.header[key] = "x" if key in _TEXT else 0
    hdu.header["CHECKSUM"], hdu.header["DATASUM"] = "", ""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdu.writeto(buf, output_verify="silentfix")
    return buf.getvalue()


BASES = {kind: _base(kind) for kind in ("float32", "int16")}

_ints = (st.integers(-70, 70) | st.integers(-(2**70), 2**70)
         | st.sampled_from([0, 8, 16, 32, 64, -32, -64, 12, 2**31, 2**63, -(2**63)]))
_floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, 1e308, 5e-324])
_printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
#: what goes after "KEYWORD = " (right-justified like fixed-format FITS where it is a number)
VALUES = (
    _ints.map(lambda v: f"{v:>20}")
    | _floats.map(lambda v: f"{v!r:>20}".upper())
    | st.sampled_from(["T", "F", "NAN", "INF", "1.0E+9999", "''", "(1, 2)", "1D5"])
    .map(lambda v: f"{v:>20}")
    | _printable.map(lambda s: "'" + s.replace("'", "''")[:66] + "'")
    | _printable
)


def mutate(raw: bytes, key: str, value: str) -> bytes:
    """Overwrite the value of card ``key`` in place (the card stays 80 bytes), if any."""
    out = bytearray(raw)
    at = next((i for i in range(0, 2880 * 4, 80) if out[i:i + 8] == key.ljust(8).encode()), -1)
    if at < 0:
        return raw
    out[at:at + 80] = f"{key:<8}= {value}"[:80].ljust(80).encode("ascii")
    return bytes(out)


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None, silence_logs=logging.CRITICAL) as lc:
        yield lc.scheduler_address


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz_model") / "craters.onnx"
    craters_model(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_counter = iter(range(10**9))


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(BASES)),
       changes=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
# found by this test, crashes before the fix in wcsio.header_cards: astropy cannot parse
# the value (VerifyError), or parses it as inf, which no FITS header may hold (ValueError
# when the WCS is rebuilt from the cards)
@example(kind="float32", changes=[("CTYPE1", f"{'NAN':>20}")])
@example(kind="float32", changes=[("CRVAL1", f"{'1.0E+9999':>20}")])
@example(kind="int16", changes=[("CTYPE1", "'RA---TAN' / "), ("CD1_1", f"{'INF':>20}")])
# found by this test, endless before the NAXISn check in fitsread.scan_file: -60 x 24 x 4
# bytes sends astropy back to the start of the file, to read the same HDU again and again
@example(kind="float32", changes=[("NAXIS1", f"{-60:>20}"), ("BZERO", f"{-64:>20}")])
# found by this test, minutes and then MemoryError before fitscheck.prescan: astropy builds
# a list of NAXIS axes before anything checks NAXIS
@example(kind="int16", changes=[("NAXIS", f"{2**70:>20}")])
# data that end beyond any file offset (the header walk must not seek there)
@example(kind="float32", changes=[("NAXIS1", f"{96076792050570511:>20}")])
# a BLANK that is not an integer; a DATASUM the data do not match (refused)
@example(kind="int16", changes=[("BLANK", f"{'1D5':>20}")])
@example(kind="float32", changes=[("DATASUM", "'12345'")])
def test_header_values_are_refused_by_name_or_run_to_completion(
    kind: str, changes: list[tuple[str, str]], folder: Path, model: Path, scheduler: str
) -> None:
    raw = BASES[kind]
    for key, value in changes:
        raw = mutate(raw, key, value)
    path = folder / f"fuzz{next(_counter)}.fits"
    path.write_bytes(raw)
    try:
        sources = open_sources([str(path)])
    except CnnpipeError as exc:
        message = str(exc)
        assert message.startswith(str(path)), message
        assert "\n" not in message
        event("refused at validation")
        return
    for source in sources:
        pixels = source.read_window(0, source.shape[0], 0, source.shape[1])
        assert pixels.dtype == np.float32
        assert pixels.shape == (1, *source.shape)
        source.wcs()  # a WCS that was accepted can be rebuilt
    out = folder / f"{path.stem}.zarr"
    failure = None
    try:
        run(RunConfig(inputs=(str(path),), models=(str(model),), out=str(out), tile=32,
                      patch=24, device="cpu", scheduler=scheduler, retries=0))
    except CnnpipeError as exc:  # accepted but unrunnable: must still be named, not a crash
        failure = str(exc)
    status = zarr.open_group(str(out), mode="r").attrs["cnnpipe"]["status"]
    if failure is not None:
        assert path.name in failure, failure
        assert status == "failed"
        event("failed in the run")
    else:
        assert status == "complete"
        event("complete")
