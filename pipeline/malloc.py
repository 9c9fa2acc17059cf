"""glibc malloc settings for processes that run work units.

Every work unit allocates and frees a few hundred MB in large arrays (the window read,
onnxruntime's outputs, the stitched probabilities and their float16 copy).  By default
glibc serves a request over its mmap threshold (at most 32 MiB), or one that does not
fit a thread's own 64 MiB arena, with ``mmap`` and gives it back with ``munmap`` when
freed; the next unit then faults every page in again, zeroed by the kernel, and in a
threaded worker each ``munmap`` also interrupts the other threads' inference (TLB
shootdowns).  With one arena, no ``mmap`` and no trimming, the heap grows once to the
run's peak and is reused: on the 2-core benchmark machine the 4096² demo_segment run
went from ~210,000 page faults and 0.5-0.9 s of kernel time per warm run to under
50,000 and 0.25-0.4 s, and the benchmark suite's section a from 3.12 s to 2.71 s end
to end.  Peak memory grows a little (a 16000² run: 1,255 -> 1,323 MiB): memory freed
after the peak is kept for reuse until the process ends.

Only processes cnnpipe starts are tuned: the ``cnnpipe`` command (whose embedded
worker runs in-process) and the worker processes of an embedded multi-process cluster
(through the environment, :data:`MALLOC_ENV`, which glibc reads at start-up).  Workers
of an external cluster get it from their environment (``deploy/`` and the Containerfile
set :data:`MALLOC_ENV`).  Any glibc malloc variable already in the environment
(``MALLOC_ARENA_MAX``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES=glibc.malloc...``)
means the user chose: cnnpipe then changes nothing; so does ``CNNPIPE_MALLOC=off``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator, Mapping

__all__ = [
    "MALLOC_ENV", "OPT_OUT", "malloc_env", "tune_malloc", "tuned_worker_processes",
    "user_chose_malloc",
]

#: the settings as glibc environment variables (read once, when a process starts)
MALLOC_ENV: Mapping[str, str] = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),
}

#: ``CNNPIPE_MALLOC=off``: leave glibc's defaults (also to worker processes)
OPT_OUT = "CNNPIPE_MALLOC"

# mallopt(3) parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))

_USER_VARIABLES = (
    "MALLOC_ARENA_MAX", "MALLOC_ARENA_TEST", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
)

_lock = threading.Lock()
_tuned: bool | None = None


def user_chose_malloc(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment sets glibc malloc itself, or says ``CNNPIPE_MALLOC=off``."""
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT, "").strip().lower() in ("off", "0", "no", "false"):
        return True
    if any(v in env for v in _USER_VARIABLES):
        return True
    return "glibc.malloc." in env.get("GLIBC_TUNABLES", "")


def malloc_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables to give a worker process cnnpipe starts ({} when the user chose)."""
    return {} if user_chose_malloc(environ) else dict(MALLOC_ENV)


@contextlib.contextmanager
def tuned_worker_processes() -> Iterator[None]:
    """Dask nannies created inside start their worker processes with :func:`malloc_env`.

    glibc reads the variables when a process starts, so they go into the nanny's
    pre-spawn environment (where Dask itself puts ``MALLOC_TRIM_THRESHOLD_``); a variable
    already in this process's environment still wins there.
    """
    import dask

    key = "distributed.nanny.pre-spawn-environ"
    with dask.config.set({key: {**dask.config.get(key, {}), **malloc_env()}}):
        yield


def tune_malloc() -> bool:
    """Apply :data:`MALLOC_ENV` to this process with ``mallopt`` (glibc only; once).

    Call it before the process starts threads: a thread that has allocated keeps its
    own arena.  Returns whether the settings are in effect (False: not glibc, or the
    environment sets malloc itself).
    """
    global _tuned
    with _lock:
        if _tuned is None:
            _tuned = _apply()
        return _tuned


def _glibc() -> bool:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):  # not a glibc system (macOS, musl)
        return False
    return bool(version and version.startswith("glibc"))


def _apply() -> bool:
    if user_chose_malloc() or not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
