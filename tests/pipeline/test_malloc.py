"""glibc malloc settings: freed unit buffers are reused instead of faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cnnpipe.pipeline.execute import ClusterPlan, local_cluster
from cnnpipe.pipeline.malloc import MALLOC_ENV, malloc_env, user_chose_malloc

_LIBC = os.confstr("CS_GNU_LIBC_VERSION") if sys.platform.startswith("linux") else None
pytestmark = pytest.mark.skipif(not (_LIBC or "").startswith("glibc"), reason="glibc only")

# A worker-like thread allocates a unit-sized buffer (200 MB, over glibc's largest mmap
# threshold), frees it, and allocates it again; the second allocation's page faults
# say whether the memory was given back to the kernel in between.
_PROBE = """
import json, resource, sys, threading
import numpy as np
from cnnpipe.pipeline.malloc import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tune" else None
faults = []
def unit():
    a = np.ones(25_000_000); del a
    r0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    a = np.ones(25_000_000); del a
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - r0)
t = threading.Thread(target=unit); t.start(); t.join()
print(json.dumps({"tuned": tuned, "faults": faults[0]}))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without malloc settings or cnnpipe's opt-out, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALLOC_", "GLIBC_")) and k != "CNNPIPE_MALLOC"}
    return {**env, **extra}


def _probe(mode: str, **env: str) -> tuple[bool | None, int]:
    """(what tune_malloc returned, page faults of the second allocation)."""
    # numpy's transparent-huge-page advice would hide the 4 KiB faults counted here
    clean = _clean_env(NUMPY_MADVISE_HUGEPAGE="0", **env)
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=clean, check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out)
    return result["tuned"], int(result["faults"])


def test_tuned_process_reuses_a_freed_unit_buffer() -> None:
    _, default_faults = _probe("default")
    tuned, tuned_faults = _probe("tune")
    assert tuned is True
    # 200 MB is ~49,000 pages of 4 KiB: faulted in again by default, reused when tuned
    assert default_faults > 40_000
    assert tuned_faults < 1_000


def test_the_cnnpipe_command_tunes_before_it_runs_anything() -> None:
    code = ("import sys; from cnnpipe import cli; from cnnpipe.pipeline import malloc\n"
            "sys.argv = ['cnnpipe', '--version']\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print(malloc._tuned)")
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), check=True,
                         capture_output=True, text=True).stdout.split()
    assert out[-1] == "True"


def test_malloc_set_by_the_user_is_left_alone() -> None:
    tuned, faults = _probe("tune", MALLOC_ARENA_MAX="4")
    assert tuned is False
    assert faults > 40_000
    assert user_chose_malloc({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert not user_chose_malloc({"GLIBC_TUNABLES": "glibc.rtld.nns=2"})
    assert malloc_env({"MALLOC_TRIM_THRESHOLD_": "0"}) == {}
    assert malloc_env({"CNNPIPE_MALLOC": "off"}) == {}
    assert _probe("tune", CNNPIPE_MALLOC="off")[0] is False
    assert malloc_env({}) == dict(MALLOC_ENV)


def test_worker_processes_of_the_embedded_cluster_get_the_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for k in set(os.environ) - set(_clean_env()):
        monkeypatch.delenv(k)
    from distributed import Client

    plan = ClusterPlan(workers=2, threads=1, ort_threads=1, gpu=False)
    with local_cluster(plan) as cluster, Client(cluster) as client:
        seen = client.run(lambda: {k: os.environ.get(k) for k in MALLOC_ENV})
    assert len(seen) == 2
    assert all(env == dict(MALLOC_ENV) for env in seen.values())
