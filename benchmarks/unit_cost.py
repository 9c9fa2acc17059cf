"""What a work unit costs besides onnxruntime: the real task with the model's outputs replayed.

``python -m benchmarks.unit_cost [--size 4096] [--tile 2048] [--gaps] [--reps 5]`` writes a
simulated sky (``--gaps``: with chip gaps, i.e. units with pixels without data), runs
``cnnpipe run`` on it once, then calls the worker's task (:func:`process_unit`) on every
unit in this process: first with the cached onnxruntime session, recording each batch's
output and timing the ``run`` calls, then ``--reps`` times with a session stand-in that
returns the recorded outputs, so that the time left is everything a unit does besides
inference (FITS read, normalise, stitch, mask, float16, catalog fragment, Zarr writes,
ledger), on one thread.  Prints seconds per unit (wall and CPU), onnxruntime seconds per
unit for scale, and the functions of ``cnnpipe`` that take the most time (cProfile,
cumulative); writes ``unit_cost.json`` into ``--out``.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.common import code_state, log, machine, tool_parser


class _Recording:
    """A session that records every output of the real one and times its ``run``."""

    def __init__(self, session: Any) -> None:
        self.session, self.outputs, self.seconds = session, [], 0.0

    def run(self, names: Any, feed: Any) -> Any:
        t0 = time.perf_counter()
        out = self.session.run(names, feed)
        self.seconds += time.perf_counter() - t0
        self.outputs.append(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


class _Replay:
    """A session that returns the recorded outputs in order (inputs ignored)."""

    def __init__(self, rec: _Recording) -> None:
        self.rec, self.i = rec, 0

    def run(self, names: Any, feed: Any) -> Any:
        out = self.rec.outputs[self.i % len(self.rec.outputs)]
        self.i += 1
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rec.session, name)


def main(argv: list[str] | None = None) -> int:
    """Measure; print a summary; write the JSON."""
    ap = tool_parser(__doc__, size=4096)
    ap.add_argument("--tile", type=int, default=2048)
    ap.add_argument("--gaps", action="store_true", help="simulate chip gaps (no-data pixels)")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args(argv)

    from cnnpipe.pipeline.malloc import tune_malloc

    tune_malloc()  # as the cnnpipe command and its workers
    import cnnpipe.pipeline.worker as worker
    from cnnpipe.pipeline.config import RunConfig
    from cnnpipe.pipeline.runner import _tasks, prepare, run
    from cnnpipe.testing.sky import make_sky_catalog, write_sky

    work = Path(tempfile.mkdtemp(prefix="cnnpipe-unitcost-"))
    try:
        image = work / "sky.fits"
        write_sky(make_sky_catalog(a.size, seed=5, gaps=a.gaps), image, overwrite=True)
        cfg = RunConfig(inputs=(str(image),), models=(a.model,), out=str(work / "out.zarr"),
                        device="cpu", tile=a.tile, mode="overwrite")
        run(cfg)
        prep = prepare(cfg)
        todo = {s.key: np.ones((len(prep.jobs), *im.grid), bool)
                for s, im in zip(prep.sources, prep.plan.images)}
        spec = worker.SessionSpec(intra_op_threads=1)
        tasks = list(_tasks(prep, SimpleNamespace(path=cfg.out), todo, spec))
        real = worker.get_session
        rec = _Recording(real(prep.jobs[0].path, prep.jobs[0].sha256, spec))
        worker.get_session = lambda *args: rec  # type: ignore[assignment]
        try:
            for t in tasks:
                worker.process_unit(t)
            replay = _Replay(rec)
            worker.get_session = lambda *args: replay  # type: ignore[assignment]
            for t in tasks:  # warm
                worker.process_unit(t)
            walls, cpus = [], []
            for _ in range(a.reps):
                w0, c0 = time.perf_counter(), time.process_time()
                for t in tasks:
                    worker.process_unit(t)
                walls.append((time.perf_counter() - w0) / len(tasks))
                cpus.append((time.process_time() - c0) / len(tasks))
            prof = cProfile.Profile()
            prof.enable()
            for t in tasks:
                worker.process_unit(t)
            prof.disable()
        finally:
            worker.get_session = real  # type: ignore[assignment]
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(
            r"cnnpipe|pipeline/", 20)
        result = {
            "command": "python -m benchmarks.unit_cost " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "machine": machine(), "code": code_state(), "model": a.model,
            "size": a.size, "tile": a.tile, "gaps": a.gaps, "units": len(tasks),
            "onnxruntime_s_per_unit": rec.seconds / len(tasks),
            "other_wall_s_per_unit": statistics.median(walls),
            "other_cpu_s_per_unit": statistics.median(cpus),
            "reps_wall": walls, "reps_cpu": cpus, "profile": text.getvalue(),
        }
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "unit_cost.json").write_text(json.dumps(result, indent=1))
        log(f"{len(tasks)} units of {a.tile}²: onnxruntime {result['onnxruntime_s_per_unit']:.3f}"
            f" s/unit (1 thread); everything else {result['other_wall_s_per_unit']:.3f} s wall,"
            f" {result['other_cpu_s_per_unit']:.3f} s CPU per unit (median of {a.reps})")
        print(text.getvalue())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
