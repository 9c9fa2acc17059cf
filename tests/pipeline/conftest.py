"""Shared fixtures of the pipeline tests: real ``dask scheduler`` / ``dask worker`` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def real_dask(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start a real ``dask scheduler`` and ``dask worker`` on 127.0.0.1: ``start(nworkers=1)``.

    Returns the scheduler address once ``nworkers`` worker processes (each behind its own
    nanny, one thread each) are connected.  Everything started is killed at teardown;
    each command runs in its own session, so its nannies and workers go with it.
    """
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[str]] = []
    dask = str(Path(sys.executable).with_name("dask"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(nworkers: int = 1) -> str:
        from distributed import Client

        port = _free_port()
        address = f"tcp://127.0.0.1:{port}"
        for name, cmd in (
            ("scheduler", [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                           "--no-dashboard"]),
            ("worker", [dask, "worker", address, "--nworkers", str(nworkers), "--nthreads",
                        "1", "--no-dashboard", "--host", "127.0.0.1"]),
        ):
            logs.append(open(tmp_path / f"{name}-{port}.log", "w"))  # noqa: SIM115
            procs.append(subprocess.Popen(cmd, stdout=logs[-1], stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(nworkers, timeout=60)
        return address

    try:
        yield start
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for f in logs:
            f.close()
