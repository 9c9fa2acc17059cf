"""Peak memory of ``cnnpipe run`` with the engine's default layout, one model, two sizes.

``python -m benchmarks.memory_check [--model PATH] [--sizes 4000,16000]`` writes a
simulated sky of each size, runs the ``cnnpipe run`` CLI on it in a subprocess with the
default settings (``--device cpu``), samples the RSS of the whole process tree every
50 ms (:func:`benchmarks.common.peak_rss`) and writes ``memory_check.json`` into
``--out``.  The issue-3 targets: the larger <= 2 GB and <= 1.25x the smaller.
The full issue-3 benchmark (``python -m benchmarks.run_issue3``) measures the same
among its throughput and plan figures; this one re-checks memory alone in ~2 minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.common import REPO, code_state, log, machine, peak_rss, write_image


def main(argv: list[str] | None = None) -> int:
    """Measure and write the JSON; print one line per size."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "src/cnnpipe/models/demo_segment.onnx"))
    ap.add_argument("--sizes", default="4000,16000")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cnnpipe-memcheck-"))
    result: dict[str, object] = {"command": "python -m benchmarks.memory_check " + " ".join(
        argv if argv is not None else sys.argv[1:]), "machine": machine(), "code": code_state(),
        "model": a.model, "sizes": {}}
    try:
        for size in (int(s) for s in a.sizes.split(",")):
            image = work / f"sky{size}.fits"
            write_image(image, size, seed=5)
            store = work / f"s{size}.zarr"
            r = peak_rss([sys.executable, "-m", "cnnpipe", "-q", "run", str(image), "--model",
                          a.model, "--out", str(store), "--device", "cpu"],
                         every_s=0.05, log_path=work / f"run{size}.log")
            r.pop("series", None)
            result["sizes"][str(size)] = r  # type: ignore[index]
            log(f"{size}²: peak RSS {r['peak_bytes'] / 2**20:.0f} MiB in {r['wall_s']:.0f} s")
            shutil.rmtree(store, ignore_errors=True)
            for f in work.glob(f"sky{size}*"):
                f.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "memory_check.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
