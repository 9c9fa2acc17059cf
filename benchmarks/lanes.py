"""`cnnpipe run` with and without the worker's inference lanes, alternating in one process.

``python -m benchmarks.lanes [--size 8192] [--reps 8]`` writes a simulated sky, runs
``cnnpipe run`` on it (embedded cluster, today's defaults) once each way untimed, then
``--reps`` times each way, alternating which goes first.  "Without" replaces
:func:`cnnpipe.pipeline.worker.worker_lanes` with ``None``: every unit runs its own
batches in its own Dask thread, as before the lanes.  Prints and writes (``lanes.json``
in ``--out``) the wall seconds of every run, their medians and the cores the process
kept busy (its CPU seconds / wall seconds).
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import code_state, log, machine, tool_parser, write_image


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    """Measure; print a summary; write the JSON."""
    ap = tool_parser(__doc__, size=8192)
    ap.add_argument("--reps", type=int, default=8)
    a = ap.parse_args(argv)

    from cnnpipe.pipeline.malloc import tune_malloc

    tune_malloc()  # as the cnnpipe command and its workers
    import cnnpipe.pipeline.worker as worker
    from cnnpipe.pipeline.config import RunConfig
    from cnnpipe.pipeline.runner import run

    real = worker.worker_lanes
    ways: dict[str, Any] = {"lanes": real, "no lanes": lambda: None}
    walls: dict[str, list[float]] = {k: [] for k in ways}
    cores: dict[str, list[float]] = {k: [] for k in ways}
    work = Path(tempfile.mkdtemp(prefix="cnnpipe-lanes-"))
    try:
        image = work / "sky.fits"
        write_image(image, a.size, seed=5)

        def one(way: str) -> tuple[float, float]:
            worker.worker_lanes = ways[way]  # type: ignore[assignment]
            cfg = RunConfig(inputs=(str(image),), models=(a.model,), device="cpu",
                            out=str(work / "out.zarr"), mode="overwrite")
            c0, t0 = _cpu_s(), time.perf_counter()
            run(cfg)
            dt = time.perf_counter() - t0
            return dt, (_cpu_s() - c0) / dt

        try:
            for way in ways:  # untimed: imports, first session, page cache
                one(way)
            for rep in range(a.reps):
                for way in (list(ways) if rep % 2 == 0 else list(ways)[::-1]):
                    dt, busy = one(way)
                    walls[way].append(dt)
                    cores[way].append(busy)
                log(f"rep {rep + 1}/{a.reps}: " + ", ".join(
                    f"{w} {walls[w][-1]:.2f} s" for w in ways))
        finally:
            worker.worker_lanes = real  # type: ignore[assignment]
        result = {
            "command": "python -m benchmarks.lanes " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "machine": machine(), "code": code_state(), "model": a.model, "size": a.size,
            "seconds": walls, "cores_busy": cores,
            "median_s": {w: statistics.median(v) for w, v in walls.items()},
            "median_cores_busy": {w: statistics.median(v) for w, v in cores.items()},
        }
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "lanes.json").write_text(json.dumps(result, indent=1))
        for w in ways:
            log(f"{w}: median {result['median_s'][w]:.2f} s, cores busy "
                f"{result['median_cores_busy'][w]:.2f} ({a.reps} runs of {a.size}²)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
