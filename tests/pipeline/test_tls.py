"""``cnnpipe run --scheduler tls://...`` against real ``dask scheduler`` / ``dask worker``
processes with mutual TLS, certificates made by ``deploy/tls/make-certs.sh``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits
from click.testing import CliRunner

from cnnpipe.cli import cli
from cnnpipe.testing.onnx_models import segment_model

ROOT = Path(__file__).resolve().parents[2]
DASK = str(Path(sys.executable).with_name("dask"))

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@dataclass(frozen=True)
class Cluster:
    address: str
    certs: Path
    tmp: Path

    def tls(self, who: str = "client") -> list[str]:
        c = self.certs
        return ["--tls-ca-file", str(c / "ca.pem"), "--tls-cert", str(c / f"{who}.pem"),
                "--tls-key", str(c / f"{who}.key")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen([DASK, *args], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                start_new_session=True)


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _workers(cluster: Cluster) -> int:
    from distributed import Client
    from distributed.security import Security

    sec = Security(tls_ca_file=str(cluster.certs / "ca.pem"),
                   tls_client_cert=str(cluster.certs / "client.pem"),
                   tls_client_key=str(cluster.certs / "client.key"), require_encryption=True)
    with Client(cluster.address, security=sec, timeout="30s") as client:
        return len(client.scheduler_info()["workers"])


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("tls")
    certs = tmp / "certs"
    subprocess.run(["bash", str(ROOT / "deploy/tls/make-certs.sh"), str(certs)], check=True,
                   capture_output=True)
    port = _free_port()
    cluster = Cluster(address=f"tls://127.0.0.1:{port}", certs=certs, tmp=tmp)
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", str(port),
                     "--protocol", "tls", "--no-dashboard", *cluster.tls("scheduler")],
                    tmp / "scheduler.log")]
    procs.append(_start(["worker", cluster.address, "--nworkers", "1", "--nthreads", "1",
                         "--no-dashboard", "--host", "127.0.0.1", *cluster.tls("worker")],
                        tmp / "worker.log"))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _workers(cluster) == 1:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                logs = (tmp / "scheduler.log").read_text() + (tmp / "worker.log").read_text()
                pytest.fail(f"TLS cluster did not come up:\n{logs}")
            time.sleep(0.5)
        yield cluster
    finally:
        for p in reversed(procs):
            _stop(p)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tlsdata")
    rng = np.random.default_rng(3)
    img = rng.normal(0, 1, (96, 130)).astype(np.float32)
    img[40:50, 60:75] += 6
    image = root / "survey.fits"
    fits.PrimaryHDU(img).writeto(image)
    model = root / "seg.onnx"
    segment_model(model)
    return image, model


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)
    return res.exit_code, res.output


def _arrays(path: Path) -> dict[str, bytes]:
    g = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(g[f"images/survey/seg/{k}"][...]).tobytes()
            for k in ("mask", "prob", "tiles")}


def test_tls_scheduler_gives_the_embedded_store(
    tls_cluster: Cluster, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    image, model = inputs
    common = [str(image), "--model", str(model), "--tile", "64", "--patch", "40",
              "--device", "cpu"]
    code, out = _run([*common, "--out", str(tmp_path / "embedded.zarr"), "--workers", "1"])
    assert code == 0, out
    code, out = _run([*common, "--out", str(tmp_path / "tls.zarr"),
                      "--scheduler", tls_cluster.address, *tls_cluster.tls()])
    assert code == 0, out
    assert zarr.open_group(str(tmp_path / "tls.zarr"), mode="r").attrs["cnnpipe"]["status"] \
        == "complete"
    assert _arrays(tmp_path / "tls.zarr") == _arrays(tmp_path / "embedded.zarr")


def test_client_without_certificate_is_refused_with_a_hint(
    tls_cluster: Cluster, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    image, model = inputs
    res = CliRunner().invoke(cli, [
        "run", str(image), "--model", str(model), "--out", str(tmp_path / "x.zarr"),
        "--scheduler", tls_cluster.address,
    ], env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"})
    assert res.exit_code == 2
    assert "--tls-ca-file" in res.output
    assert not (tmp_path / "x.zarr").exists()


def test_worker_with_a_certificate_of_another_ca_is_refused(
    tls_cluster: Cluster, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    subprocess.run(["bash", str(ROOT / "deploy/tls/make-certs.sh"), str(other)], check=True,
                   capture_output=True)
    p = _start(["worker", tls_cluster.address, "--nworkers", "1", "--no-dashboard",
                "--host", "127.0.0.1", "--death-timeout", "8",
                "--tls-ca-file", str(other / "ca.pem"), "--tls-cert", str(other / "worker.pem"),
                "--tls-key", str(other / "worker.key")], tmp_path / "intruder.log")
    try:
        code = p.wait(timeout=60)  # gives up after --death-timeout: never admitted
    finally:
        _stop(p)
    assert code != 0
    assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "intruder.log").read_text()
    assert _workers(tls_cluster) == 1


def _handshake(cluster: Cluster, who: str | None) -> str:
    """Talk TLS to the scheduler trusting its CA, showing ``who``'s certificate (or none).

    Returns the error that ended the connection, or "" if the scheduler kept it open.
    """
    ctx = ssl.create_default_context(cafile=str(cluster.certs / "ca.pem"))
    if who:
        ctx.load_cert_chain(cluster.certs / f"{who}.pem", cluster.certs / f"{who}.key")
    host, port = cluster.address.removeprefix("tls://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"\0" * 8)  # TLS 1.3: a refused certificate shows at the first read
            tls.settimeout(2)
            try:
                return "" if tls.recv(1) else "closed by the scheduler"
            except TimeoutError:
                return ""  # still connected: the scheduler waits for a message
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
        return str(exc) or type(exc).__name__


def test_peer_without_a_certificate_is_refused_by_the_scheduler(tls_cluster: Cluster) -> None:
    assert _handshake(tls_cluster, "client") == ""  # the control: a certificate of the CA
    # the scheduler ends the connection: an alert naming the certificate, or (depending
    # on timing) an EOF in the handshake / a reset / a close; the control stays open
    refused = _handshake(tls_cluster, None)
    assert refused
    assert _workers(tls_cluster) == 1
