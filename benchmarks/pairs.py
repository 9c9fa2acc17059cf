"""`cnnpipe run` end to end against a bare onnxruntime loop, in adjacent pairs.

``python -m benchmarks.pairs [--size 16384] [--pairs 8]`` is issue 3's throughput
target (end to end >= 0.9x bare onnxruntime on the same model and patches) measured so
that a host whose speed drifts from minute to minute still gives a usable figure: each
pair times the bare loop and ``cnnpipe run`` one right after the other (alternating which
goes first), and the figure is the median of the pairs' ratios, not a ratio of medians
taken minutes apart.

* bare: one onnxruntime session with 2 intra-op threads (default session options, as a
  user writes it) over the exact normalised batches the engine runs, built before any
  timing (:func:`benchmarks.common.build_batches`);
* ``cnnpipe run``: in this process, today's defaults (embedded cluster started and
  stopped, session created, FITS read, Zarr written, catalog merged), as section a's
  end-to-end row of the suite.

Both untimed once first (imports, page cache).  Prints and writes ``pairs.json`` in
``--out``: every pair's seconds and ratio, the median, the lowest and highest ratio, and
each side's median and spread.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    build_batches,
    code_state,
    log,
    machine,
    ort_session,
    tool_parser,
    write_image,
)


def main(argv: list[str] | None = None) -> int:
    """Measure; print a summary; write the JSON."""
    ap = tool_parser(__doc__, size=16384)
    ap.add_argument("--pairs", type=int, default=8)
    a = ap.parse_args(argv)

    from cnnpipe.pipeline.malloc import tune_malloc

    tune_malloc()  # both sides, as the cnnpipe command sets for itself
    from cnnpipe.pipeline.config import RunConfig
    from cnnpipe.pipeline.runner import prepare, run
    from cnnpipe.pipeline.worker import clear_sessions

    work = Path(tempfile.mkdtemp(prefix="cnnpipe-pairs-"))
    try:
        image = work / "sky.fits"
        write_image(image, a.size, seed=11)
        cfg = RunConfig(inputs=(str(image),), models=(a.model,), device="cpu",
                        out=str(work / "out.zarr"), mode="overwrite")
        batches = build_batches(prepare(cfg))
        batches.raw.clear()  # only the normalised batches are timed
        session = ort_session(a.model, threads=2)
        name = session.get_inputs()[0].name

        def bare() -> float:
            t0 = time.perf_counter()
            for x in batches.norm:
                session.run(None, {name: x})
            return time.perf_counter() - t0

        def cnnpipe() -> float:
            clear_sessions()  # every run creates its session, as a new process does
            t0 = time.perf_counter()
            summary = run(cfg)
            dt = time.perf_counter() - t0
            if summary.status != "complete":
                msg = f"cnnpipe run did not complete: {summary}"
                raise RuntimeError(msg)
            return dt

        sides = {"bare": bare, "cnnpipe": cnnpipe}
        for fn in sides.values():  # untimed
            fn()
        seconds: dict[str, list[float]] = {k: [] for k in sides}
        ratios = []
        for k in range(a.pairs):
            for side in (list(sides) if k % 2 == 0 else list(sides)[::-1]):
                seconds[side].append(sides[side]())
            ratios.append(seconds["bare"][-1] / seconds["cnnpipe"][-1])
            log(f"pair {k + 1}/{a.pairs}: bare {seconds['bare'][-1]:.2f} s, cnnpipe run "
                f"{seconds['cnnpipe'][-1]:.2f} s, ratio {ratios[-1]:.3f}")
        result: dict[str, Any] = {
            "command": "python -m benchmarks.pairs " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "machine": machine(), "code": code_state(), "model": a.model, "size": a.size,
            "patches": batches.n_patches, "patch": list(batches.patch),
            "batches": len(batches.norm), "seconds": seconds, "ratios": ratios,
            "median_ratio": statistics.median(ratios),
            "min_ratio": min(ratios), "max_ratio": max(ratios),
            "median_s": {s: statistics.median(v) for s, v in seconds.items()},
            "spread": {s: max(v) / min(v) for s, v in seconds.items()},
        }
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "pairs.json").write_text(json.dumps(result, indent=1))
        log(f"{a.pairs} pairs on {a.size}² ({batches.n_patches} patches of "
            f"{batches.patch[0]}x{batches.patch[1]}): median ratio bare / cnnpipe run "
            f"{result['median_ratio']:.3f} (pairs {result['min_ratio']:.3f}-"
            f"{result['max_ratio']:.3f}); medians bare {result['median_s']['bare']:.2f} s, "
            f"cnnpipe run {result['median_s']['cnnpipe']:.2f} s; each side's slowest / "
            f"fastest run: bare {result['spread']['bare']:.2f}, cnnpipe "
            f"{result['spread']['cnnpipe']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
