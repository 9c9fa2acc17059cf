"""cnnpipe benchmark suite: every comparison of issue 5 in one command.

From the repository root, in the project's virtual environment (``pip install -e
.[bench]``: torch, MONAI, psutil)::

    python -m benchmarks                 # full run: the README table (~20 min, 2 quiet cores)
    python -m benchmarks --quick         # CI smoke: tiny images, 1-2 minutes
    python -m benchmarks --only b,f      # some sections

Sections (``benchmarks/README.md`` says what each measures and how):

a  ``cnnpipe run`` vs a bare onnxruntime session on the same patches
b  vs MONAI ``sliding_window_inference`` (torch eager, same weights, overlap 0.25,
   gaussian), with each side's interior difference from whole-image inference
c  vs a naive per-patch torch loop
d  peak resident memory vs image size (cheap model)
e  I/O ceiling: identity model vs a plain numpy/zarr loop
f  fp32 vs fp16 vs int8 on this CPU
g  1 vs 2 worker processes; plan size and time for a 100000² image
h  CUDA / TensorRT vs a bare session with IOBinding, GPU busy fraction (GPU machines)

Writes ``suite.md`` and ``suite.json`` (``suite-quick.*`` with ``--quick``; a suffix
naming the sections with ``--only``) into ``--out`` (default ``benchmarks/results``).
Scratch files go to ``--workdir`` (default ``$TMPDIR/cnnpipe-bench-suite``); images are
deleted at the end, the exported models are kept and reused.  Exit status 1 when a
section failed (its error is in the report), 0 otherwise: missed targets are results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Meter, auto_int, code_state, log, machine, quiet_logging
from benchmarks.suite.context import SECTIONS, Context, Settings


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks",
                                 description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes and 2 repetitions (CI smoke); figures mean nothing")
    ap.add_argument("--only", help="comma-separated sections to run, e.g. a,b,f [all]")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                    help="folder for suite.md / suite.json")
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "cnnpipe-bench-suite",
                    help="scratch folder (images, stores, exported models)")
    ap.add_argument("--reps", type=int, help="interleaved repetitions per timing [3; quick 2]")
    ap.add_argument("--a-reps", type=int,
                    help="interleaved repetitions of section a [5; quick 1]")
    ap.add_argument("--size", type=int, help="image side of a, b, c, f, g [4096; quick 1024]")
    ap.add_argument("--tile", type=int, help="work unit / chunk side [2048; quick 512]")
    ap.add_argument("--patch", type=auto_int, help="patch side, or auto [auto]")
    ap.add_argument("--batch", type=auto_int, help="patches per call on the CPU, or auto [auto]")
    ap.add_argument("--gpu-batch", type=int, help="patches per call in h [16; quick 1]")
    ap.add_argument("--gpu-tile", type=int, help="work unit of h [4096; quick 512]")
    ap.add_argument("--gpu-size", type=int, help="image side of h [16384; quick 1024]")
    ap.add_argument("--mem-sizes", help="image sides of d [4096,8192,16384,32768; quick "
                    "1024,2048]")
    ap.add_argument("--io-size", type=int, help="image side of e [8192; quick 2048]")
    ap.add_argument("--plan-size", type=int, help="image side planned in g [100000]")
    ap.add_argument("--quiet-cores", type=float,
                    help="before each timing, wait until other processes use fewer cores [0.3]")
    ap.add_argument("--quiet-budget", type=float,
                    help="seconds the waiting for quiet may take in all [600; quick 0]")
    ap.add_argument("--malloc", choices=("cnnpipe", "glibc"), default="cnnpipe",
                    help="allocator settings of this process (both sides of every "
                         "comparison) and of the cnnpipe commands it starts: cnnpipe's "
                         "(what `cnnpipe` sets for itself) or glibc's defaults [cnnpipe]")
    ap.add_argument("--from-json", type=Path,
                    help="only re-render the Markdown of an earlier run's JSON (next to it)")
    ap.add_argument("--h-on-cpu", action="store_true",
                    help="run section h's code on the CPU provider (tests the benchmark on a "
                         "machine without a GPU; its figures are not GPU figures)")
    return ap.parse_args(argv)


def _sections(only: str | None) -> list[str]:
    if not only:
        return list(SECTIONS)
    chosen = {x.strip().lower() for x in only.split(",") if x.strip()}
    unknown = sorted(chosen - set(SECTIONS))
    if unknown:
        msg = f"--only: unknown section(s) {unknown}; expected some of {', '.join(SECTIONS)}"
        raise SystemExit(msg)
    return [x for x in SECTIONS if x in chosen]


def _run_section(letter: str, ctx: Context, chosen: list[str], *, h_on_cpu: bool
                 ) -> dict[str, dict[str, Any]]:
    """Run one section (b and c together, once); return ``{letter: figures}``."""
    from benchmarks.suite import gpu, memio, precision, throughput, torchcmp

    if letter in "bc":
        both = torchcmp.run_bc(ctx, monai="b" in chosen, naive="c" in chosen)
        return torchcmp.split_bc(both)
    run = {"a": throughput.run_a, "d": memio.run_d, "e": memio.run_e, "f": precision.run_f,
           "g": throughput.run_g}.get(letter)
    if run is not None:
        return {letter: run(ctx)}
    return {letter: gpu.run_h(ctx, on_cpu=h_on_cpu)}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.suite.gpu import gpu_name
    from benchmarks.suite.report import render, targets
    from cnnpipe.pipeline.malloc import OPT_OUT, tune_malloc

    a = _parse(argv)
    if a.malloc == "glibc":  # this process, the CLIs it starts and their workers
        os.environ[OPT_OUT] = "off"
    tuned = tune_malloc()  # as the cnnpipe command does, before any thread starts
    if a.from_json:
        md = render(json.loads(a.from_json.read_text()))
        a.from_json.with_suffix(".md").write_text(md)
        print(md)
        return 0
    chosen = _sections(a.only)
    mem = tuple(int(x) for x in a.mem_sizes.split(",")) if a.mem_sizes else None
    settings = Settings.for_mode(
        quick=a.quick, reps=a.reps, a_reps=a.a_reps, size=a.size, tile=a.tile,
        patch=a.patch, batch=a.batch, gpu_batch=a.gpu_batch, gpu_tile=a.gpu_tile,
        gpu_size=a.gpu_size, mem_sizes=mem, io_size=a.io_size,
        plan_size=a.plan_size, quiet_cores=a.quiet_cores, quiet_budget=a.quiet_budget)
    t_all = time.perf_counter()
    quiet_logging()
    a.workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(settings=settings, work=a.workdir.resolve(),
                  meter=Meter(quiet_cores=settings.quiet_cores, budget_s=settings.quiet_budget))
    args = sys.argv[1:] if argv is None else argv
    data: dict[str, Any] = {
        "mode": "quick" if a.quick else "full",
        "malloc_tuned": tuned,
        "command": " ".join(["python -m benchmarks", *args]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {**machine(("torch", "monai", "onnx")),
                    "gpu": gpu_name() if _has_smi() else "none"},
        "settings": settings.to_dict(),
        "sections_chosen": chosen,
        "code_at_start": code_state(),
        "sections": {},
    }
    stem = ("suite-quick" if a.quick else "suite") + (
        "-" + "".join(chosen) if a.only else "") + ("-glibc-malloc" if not tuned else "")
    a.out.mkdir(parents=True, exist_ok=True)
    failed = False
    try:
        for letter in chosen:
            if letter in data["sections"]:
                continue  # c ran with b
            log(f"== section {letter}: {SECTIONS[letter]}")
            t0 = time.perf_counter()
            try:
                got = _run_section(letter, ctx, chosen, h_on_cpu=a.h_on_cpu)
            except Exception as exc:
                failed = True
                log(f"section {letter} failed: {type(exc).__name__}: {exc}")
                got = {x: {"error": f"{type(exc).__name__}: {exc}",
                           "traceback": traceback.format_exc()}
                       for x in (("b", "c") if letter in "bc" else (letter,)) if x in chosen}
            for x, res in got.items():
                res["seconds"] = time.perf_counter() - t0
                data["sections"][x] = res
            (a.out / f"{stem}.partial.json").write_text(
                json.dumps(data, indent=2, default=str) + "\n")
    finally:
        ctx.cleanup()
    data["code_at_end"] = code_state()
    data["code_changed_during_run"] = (
        data["code_at_end"]["sources_sha256"] != data["code_at_start"]["sources_sha256"])
    data["quiet_waited_s"] = ctx.meter.waited_s
    data["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    data["targets"] = targets(data["sections"])
    data["total_s"] = time.perf_counter() - t_all
    md = render(data)
    (a.out / f"{stem}.md").write_text(md)
    (a.out / f"{stem}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (a.out / f"{stem}.partial.json").unlink(missing_ok=True)
    print(md)
    log(f"wrote {a.out / stem}.md and .json in {data['total_s']:.0f} s")
    return 1 if failed else 0


def _has_smi() -> bool:
    import shutil

    return shutil.which("nvidia-smi") is not None


if __name__ == "__main__":
    sys.exit(main())
