"""Issue 3 benchmark: throughput, peak memory and planning cost of ``cnnpipe run``.

One command (from the repository root, in the project's virtual environment)::

    python -m benchmarks.run_issue3            # full: 4096² throughput, 4000²/16000² memory
    python -m benchmarks.run_issue3 --quick    # CI smoke: 1024²/2048², well under a minute

It writes ``issue3.md`` (Markdown tables) and ``issue3.json`` (every measured figure)
into ``--out`` (default ``benchmarks/results``; ``issue3-quick.*`` with ``--quick``).
Scratch files (simulated FITS images, Zarr stores, the exported model) go to
``--workdir`` (default ``$TMPDIR/cnnpipe-bench``); large images are deleted after use.

What is measured
----------------
1. Throughput on one simulated sky image (``write_sky``, no chip gaps so that every
   work unit is inferred), in image megapixels per second, on the SAME patches:

   * bare onnxruntime: one ``InferenceSession`` (CPU, ``intra_op_num_threads`` = all
     cores, default session options) looping over exactly the batches the plan makes
     (same patch shape, batch size and number of patches, batches never spanning two
     work units, as in the engine); patches pre-read and pre-normalised, i.e. ``run()``
     calls only;
   * the same plus the model's normalisation inside the timed loop;
   * the engine's own compute path in this process (``infer_unit`` + ``head.finish``
     with the engine's cached session and options; no Dask, no FITS read, no Zarr);
   * ``cnnpipe run`` on an already running local cluster of the embedded shape
     (``--scheduler``; session already cached on the worker by an untimed warm-up run;
     the cluster is up only while this row runs);
   * ``cnnpipe run`` end to end (``run(RunConfig)``, embedded cluster): model checks,
     planning, store creation, cluster start and stop, session creation (the process's
     session cache is cleared before every run), FITS reads, inference, stitching,
     Zarr writes, ledger; after one untimed run that imports the worker-side modules.
     Cluster start and stop are also timed on their own.
2. Peak resident memory of ``cnnpipe run`` (CLI in a subprocess) for two image sizes:
   RSS of the whole process tree (client, scheduler and nannies in the client process,
   every worker process), sampled every ``--sample-ms``; the peak of the sum.
3. Planning: ``make_plan`` for a ``--plan-size``² image with the model's geometry
   (tasks, patches, batches, time), and ``cnnpipe run --dry-run`` through the CLI on
   the large memory-test image and on a sparse ``--plan-size``² FITS file (real header,
   data a file hole: 40 GB long, no data blocks on disk, reads as zeros).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    REPO,
    Collector,
    Meter,
    Stages,
    auto_int,
    batch_size,
    build_batches,
    cli_value,
    code_state,
    cpu_mark,
    log,
    machine,
    mib,
    ok,
    ort_session,
    others_cores,
    peak_rss,
    resolve_model,
    rm,
    stats,
    timed,
    write_image,
)

TARGET_RATIO = 0.9
TARGET_PEAK_BYTES = 2 * 10**9
TARGET_PEAK_GROWTH = 1.25
TARGET_TASKS = 100_000


# -- 1. throughput -----------------------------------------------------------------------


def bench_throughput(model: str, image: Path, *, tile: int, patch: int | None,
                     batch: int | None,
                     reps: int, work: Path, meter: Meter) -> dict[str, Any]:
    from distributed import LocalCluster

    from cnnpipe.pipeline.config import RunConfig
    from cnnpipe.pipeline.execute import cluster_plan, connect
    from cnnpipe.pipeline.heads import head_for
    from cnnpipe.pipeline.malloc import tuned_worker_processes
    from cnnpipe.pipeline.runner import prepare, run
    from cnnpipe.pipeline.worker import SessionSpec, clear_sessions, get_session, infer_unit

    cores = os.cpu_count() or 1
    store = work / "throughput.zarr"
    cfg = RunConfig(inputs=(str(image),), models=(model,), out=str(store), device="cpu",
                    mode="overwrite", tile=tile, patch=patch, batch=batch)
    prep = prepare(cfg)
    cp = cluster_plan(cfg)
    job = prep.jobs[0]
    meta = job.meta
    batch_requested, batch = batch, batch_size(prep)  # auto: the plan's choice
    t0 = time.perf_counter()
    bt = build_batches(prep)
    log(f"built {bt.n_patches} patches of {bt.patch[0]}x{bt.patch[1]} in {len(bt.norm)} "
         f"batches ({time.perf_counter() - t0:.1f} s, not timed)")
    ny, nx = prep.sources[0].shape
    mpix = ny * nx / 1e6

    in_name, out_name = meta.input.name, meta.output.name
    bare = ort_session(model, cores)
    static = bare.get_inputs()[0].shape[0]

    def feed(x: np.ndarray) -> np.ndarray:
        if isinstance(static, int) and len(x) < static:  # fixed-batch export: pad as the engine
            x = np.concatenate([x, np.zeros((static - len(x), *x.shape[1:]), np.float32)])
        return x

    def bare_run(sess: Any = bare) -> None:
        for x in bt.norm:
            sess.run([out_name], {in_name: feed(x)})

    one_thread = ort_session(model, 1, spinning=False)

    def bare_streams() -> None:
        # the same cores as two 1-thread streams over alternate batches (what the engine's
        # default layout does with two units in flight): the fastest bare loop we know
        import threading

        def half(k: int) -> None:
            for x in bt.norm[k::2]:
                one_thread.run([out_name], {in_name: feed(x)})

        ts = [threading.Thread(target=half, args=(k,)) for k in (0, 1)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def bare_norm() -> None:
        from cnnpipe.normalise import normalise

        for x in bt.raw:
            bare.run([out_name], {in_name: feed(normalise(x, meta.normalisation))})

    # one stream, as the bare rows: all cores as intra-op threads
    spec = SessionSpec(device="cpu", intra_op_threads=cores)
    eng = get_session(job.path, job.sha256, spec)
    head = head_for(meta)

    def runfn(x: np.ndarray) -> np.ndarray:
        return np.asarray(eng.run([out_name], {in_name: x})[0])

    def engine_inproc(catalog: bool = False, stages: Stages | None = None) -> None:
        st = stages or (lambda name: contextlib.nullcontext())
        fixed = isinstance(static, int)
        run_fn = runfn
        if stages is not None:
            def run_fn(x: np.ndarray) -> np.ndarray:
                with stages("onnxruntime run"):
                    return runfn(x)
        for unit, region, pixels, (oy, ox) in bt.units:
            with st("infer_unit"):
                acc, _ = infer_unit(pixels, (oy, ox), region, meta, job.geometry, run_fn,
                                    batch=batch, fixed_batch=fixed)
            inner = pixels[:, unit.y0 - oy:unit.y1 - oy, unit.x0 - ox:unit.x1 - ox]
            inner_acc = acc[:, unit.y0 - region.y0:unit.y1 - region.y0,
                            unit.x0 - region.x0:unit.x1 - region.x0]
            with st("head.finish (mask, float16 copy)"):
                mask, _ = head.finish(inner_acc, ~np.all(np.isfinite(inner), axis=0))
            if catalog:
                with st("head.catalog (catalog fragment)"):
                    head.catalog(_unit_view(
                        unit=unit, image_shape=prep.sources[0].shape, region=region,
                        acc=acc if region != unit else inner_acc, mask=mask, pixels=pixels,
                        origin=(oy, ox), context=job.geometry.context, positions=None,
                        run=runfn, batch=batch, fixed_batch=fixed))

    def stage_breakdown() -> dict[str, list[float]]:
        """Per-stage wall / CPU seconds of the engine's compute path over all units."""
        import cnnpipe.pipeline.worker as wmod

        stages = Stages()
        orig = wmod.normalise

        def timed_normalise(*args: Any, **kw: Any) -> Any:
            with stages("normalise"):
                return orig(*args, **kw)

        wmod.normalise = timed_normalise  # type: ignore[assignment]
        try:
            engine_inproc(catalog=has_catalog, stages=stages)
        finally:
            wmod.normalise = orig
        t = stages.t
        inner = [t["onnxruntime run"][i] + t.get("normalise", [0.0, 0.0])[i] for i in (0, 1)]
        t["stack, activate, stitch (rest of infer_unit)"] = [
            t["infer_unit"][i] - inner[i] for i in (0, 1)]
        del t["infer_unit"]
        return t

    # the task head's catalog fragment (connected components for segment), where the
    # engine has one; built exactly as process_unit builds it
    try:
        from cnnpipe.pipeline.heads import UnitView as _unit_view

        has_catalog = hasattr(head, "catalog")
    except ImportError:
        has_catalog = False

    nospin = ort_session(model, cores, spinning=False)
    shapes = {x.shape: x for x in bt.norm}  # the full batch and a unit's last, short one
    for sess in (bare, nospin, eng, one_thread):  # first-call allocations per shape, untimed
        for x in shapes.values():
            sess.run([out_name], {in_name: feed(x)})

    # the same cores spent differently: two units at a time, one intra-op thread each
    alt = replace(cfg, threads=cores, ort_threads=1)

    def cnnpipe_e2e(c: RunConfig = cfg) -> tuple[float, dict[str, float]]:
        # the in-process worker would otherwise reuse the session cached by the run
        # before: every end-to-end run creates its session, as a new `cnnpipe run` does
        clear_sessions()
        col = Collector()
        t = time.perf_counter()
        summary = run(c, reporter=col)
        dt = time.perf_counter() - t
        if summary.status != "complete":
            msg = f"cnnpipe run did not complete: {summary}"
            raise RuntimeError(msg)
        return dt, col.breakdown()

    def cluster_cost() -> tuple[float, float]:
        t = time.perf_counter()
        with connect(cfg, cp) as client:
            client.run(lambda: None)  # every worker process is up and answering
            t_up = time.perf_counter() - t
            t = time.perf_counter()
        return t_up, time.perf_counter() - t

    rows: dict[str, list[float]] = {}
    noise: dict[str, list[float]] = {}
    e2e_parts: list[dict[str, float]] = []
    warm_parts: list[dict[str, float]] = []

    def measure(key: str, fn: Callable[[], Any]) -> Any:
        dt, others, out = meter.measure(fn)
        rows.setdefault(key, []).append(dt)
        noise.setdefault(key, []).append(others)
        return out

    def warm_run(wcfg: RunConfig) -> dict[str, float]:
        col = Collector()
        run(wcfg, reporter=col)
        return col.breakdown()

    def running_cluster_row() -> None:
        # The running cluster is up only for its own row: on a 2-core machine an idle
        # scheduler, nanny and worker cost the rows beside it 1-8 % (measured).
        # its worker process gets cnnpipe's malloc settings, as deploy/ gives dask workers
        with tuned_worker_processes(), LocalCluster(
                n_workers=cp.workers, threads_per_worker=cp.threads, processes=True,
                dashboard_address=None, silence_logs=logging.ERROR) as cluster:
            wcfg = replace(cfg, scheduler=cluster.scheduler_address,
                           ort_threads=cp.ort_threads, out=str(work / "warmup.zarr"))
            run(wcfg)  # caches the session (and the FITS handle) on that worker, untimed
            wcfg = replace(wcfg, out=str(store))
            warm_parts.append(measure("warm", lambda: warm_run(wcfg)))

    log("throughput: untimed end-to-end warm-up run (imports of the worker side)")
    cnnpipe_e2e()
    for r in range(reps):
        log(f"throughput rep {r + 1}/{reps} (waited for quiet so far: "
             f"{meter.waited_s:.0f} s)")
        measure("bare", bare_run)
        measure("bare_nospin", lambda: bare_run(nospin))
        measure("bare_streams", bare_streams)
        measure("bare_norm", bare_norm)
        measure("engine_inproc", engine_inproc)
        if has_catalog:
            measure("engine_inproc_cat", lambda: engine_inproc(catalog=True))
        running_cluster_row()
        e2e_parts.append(measure("e2e", cnnpipe_e2e)[1])
        up, down = measure("cluster", cluster_cost)
        rows.setdefault("start", []).append(up)
        rows.setdefault("stop", []).append(down)
        measure("prepare", lambda: prepare(cfg))
        measure("e2e_alt", lambda: cnnpipe_e2e(alt))
    log("throughput: stage breakdown of the engine's compute path (in-process)")
    breakdowns = []
    for _ in range(2):
        meter.wait_quiet()
        mark = cpu_mark()
        bd = stage_breakdown()
        breakdowns.append((sum(v[0] for v in bd.values()), others_cores(mark), bd))
        bare_cpu = time.process_time()
        bare_wall = timed(bare_run)
        bd["(bare onnxruntime, for reference)"] = [bare_wall,
                                                   time.process_time() - bare_cpu]
    rm(store, work / "warmup.zarr")
    rows.pop("cluster")
    rows["e2e_minus_cluster"] = [
        e - s - d for e, s, d in zip(rows["e2e"], rows["start"], rows["stop"])]
    noise["e2e_minus_cluster"] = noise["e2e"]
    res = {k: stats(v) for k, v in rows.items() if v}
    for k, v in res.items():
        ns = noise.get(k)
        if ns:
            v["others_cores"] = ns
            v["others_cores_in_best"] = ns[v["runs"].index(v["min"])]
    # the reference is the faster bare variant (default options or no spinning)
    ref_key = min(("bare", "bare_nospin"), key=lambda k: res[k]["median"])
    ref, ref_best = res[ref_key]["median"], min(res["bare"]["min"], res["bare_nospin"]["min"])
    for v in res.values():
        v["mpix_s"] = mpix / v["median"]
        v["mpix_s_best"] = mpix / v["min"]
        v["ratio_to_bare"] = ref / v["median"]
        v["ratio_to_bare_best"] = ref_best / v["min"]

    def med(parts: list[dict[str, float]]) -> dict[str, float]:
        return {k: statistics.median(p[k] for p in parts) for k in parts[0]}

    return {
        "image": {"shape": [ny, nx], "mpix": mpix, "file": image.name},
        "settings": {"tile": tile, "patch_requested": cli_value(patch),
                     "batch_requested": cli_value(batch_requested), "batch": batch,
                     "patch": list(bt.patch), "halo": job.geometry.halo,
                     "units": prep.plan.n_units, "patches": bt.n_patches,
                     "batches": len(bt.norm), "patch_mpix": bt.n_patches * bt.patch[0]
                     * bt.patch[1] / 1e6, "reps": reps},
        "threads": {"cores": cores, "bare_intra_op": cores, "workers": cp.workers,
                    "dask_threads": cp.threads, "engine_intra_op": cp.ort_threads},
        "normalisation": meta.normalisation.method.value,
        "reference": ref_key,
        "quiet": {"threshold_cores": meter.quiet_cores, "budget_s": meter.budget_s,
                  "waited_s": meter.waited_s},
        "results": res,
        "worker_breakdown_e2e": med(e2e_parts),
        "worker_breakdown_warm": med(warm_parts),
        "stage_breakdown": {"others_cores": min(breakdowns, key=lambda b: b[0])[1],
                            "stages": min(breakdowns, key=lambda b: b[0])[2]},
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }


# -- 2. memory ---------------------------------------------------------------------------




def bench_memory(model: str, sizes: list[int], *, tile: int, patch: int | None,
                 batch: int | None,
                 every_s: float, work: Path, keep_last: bool) -> tuple[dict[str, Any], Path | None]:
    out: dict[str, Any] = {"settings": {"tile": tile, "patch": cli_value(patch),
                                        "batch": cli_value(batch),
                                        "sample_ms": every_s * 1000, "model": model},
                           "images": {}}
    kept: Path | None = None
    for i, size in enumerate(sizes):
        img = work / f"mem_{size}.fits"
        files = write_image(img, size, seed=3)
        store = work / f"mem_{size}.zarr"
        cmd = [sys.executable, "-m", "cnnpipe", "run", str(img), "--model", model,
               "--out", str(store), "--overwrite", "--device", "cpu", "--tile", str(tile),
               "--patch", cli_value(patch), "--batch", cli_value(batch)]
        log(f"memory: cnnpipe run on {size}x{size} (sampling RSS every {every_s * 1000:.0f} ms)")
        try:
            res = peak_rss(cmd, every_s=every_s, log_path=work / f"mem_{size}.log")
            res["store_bytes"] = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
        except BaseException:
            rm(*files)
            raise
        finally:
            rm(store)
        res["image_bytes"] = img.stat().st_size
        res["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        res["command"] = "cnnpipe " + " ".join(cmd[3:])
        out["images"][str(size)] = res
        log(f"  peak {res['peak_bytes'] / 2**20:.0f} MiB in {res['wall_s']:.1f} s")
        if keep_last and i == len(sizes) - 1:
            kept = img
            rm(*files[1:])
        else:
            rm(*files)
    a, b = (out["images"][str(s)]["peak_bytes"] for s in (sizes[0], sizes[-1]))
    out["growth"] = b / a
    a, b = (out["images"][str(s)]["peak_not_file_backed_bytes"] for s in (sizes[0], sizes[-1]))
    out["growth_not_file_backed"] = b / a
    return out, kept


# -- 3. planning -------------------------------------------------------------------------


def _sparse_fits(path: Path, size: int) -> None:
    """A valid float32 FITS whose data is a file hole (no data blocks on disk)."""
    from astropy.io import fits

    hdr = fits.Header()
    hdr["SIMPLE"], hdr["BITPIX"], hdr["NAXIS"] = True, -32, 2
    hdr["NAXIS1"], hdr["NAXIS2"] = size, size
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    hdr["CRPIX1"] = hdr["CRPIX2"] = (size + 1) / 2
    hdr["CRVAL1"], hdr["CRVAL2"] = 150.1, 2.2
    hdr["CD1_1"], hdr["CD2_2"] = -0.2 / 3600, 0.2 / 3600
    head = hdr.tostring().encode("ascii")
    data = -(-size * size * 4 // 2880) * 2880
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + data)


def _cli_dry_run(image: Path, model: str, *, tile: int, patch: int | None, batch: int | None,
                 work: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "cnnpipe", "-q", "run", str(image), "--model", model,
           "--out", str(work / "dry.zarr"), "--dry-run", "--tile", str(tile),
           "--patch", cli_value(patch), "--batch", cli_value(batch)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
    wall = time.perf_counter() - t0
    m = re.search(r"^tasks: (\d+)", p.stdout, re.M)
    return {"tasks": int(m.group(1)) if m else None, "wall_s": wall, "stdout": p.stdout,
            "command": "cnnpipe " + " ".join(cmd[3:])}


def bench_plan(model: str, size: int, *, tile: int, patch: int | None, batch: int | None,
               big: Path | None,
               work: Path, sparse: bool) -> dict[str, Any]:
    from cnnpipe.modelmeta import read_model_meta
    from cnnpipe.pipeline.plan import make_plan

    meta = read_model_meta(model)
    times, units_s = [], []
    plan = make_plan([("img", (size, size), 1)], [meta], tile=tile, patch=patch, batch=batch)
    counts = (plan.n_tasks, plan.n_patches, plan.n_batches)
    for _ in range(5):
        t0 = time.perf_counter()
        plan = make_plan([("img", (size, size), 1)], [meta], tile=tile, patch=patch,
                         batch=batch)
        counts = (plan.n_tasks, plan.n_patches, plan.n_batches)
        plan.describe(model_bytes={meta.name: os.path.getsize(model)})
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sum(1 for _ in plan.images[0].units())
        units_s.append(time.perf_counter() - t0)
    g = plan.models[0]
    out: dict[str, Any] = {
        "make_plan": {"shape": [size, size], "tasks": counts[0], "patches": counts[1],
                      "batches": counts[2], "patch": list(g.patch), "batch": g.batch,
                      "halo": g.halo,
                      "seconds": stats(times), "iterate_units_s": stats(units_s)},
    }
    if big is not None:
        log(f"plan: CLI dry run on {big.name}")
        out["cli_big"] = _cli_dry_run(big, model, tile=tile, patch=patch, batch=batch, work=work)
        out["cli_big"]["file"] = big.name
    if sparse:
        sp = work / f"sparse_{size}.fits"
        try:
            _sparse_fits(sp, size)
            log(f"plan: CLI dry run on sparse {size}x{size} FITS "
                 f"({sp.stat().st_size / 1e9:.0f} GB long, "
                 f"{sp.stat().st_blocks * 512 / 1024:.0f} KiB on disk)")
            out["cli_sparse"] = _cli_dry_run(sp, model, tile=tile, patch=patch, batch=batch,
                                             work=work)
            out["cli_sparse"]["file_bytes"] = sp.stat().st_size
            out["cli_sparse"]["disk_bytes"] = sp.stat().st_blocks * 512
        finally:
            rm(sp)
    return out


# -- report ------------------------------------------------------------------------------




def report(data: dict[str, Any]) -> str:
    m, tp, mem, pl = data["machine"], data["throughput"], data["memory"], data["plan"]
    s, r = tp["settings"], tp["results"]
    cores = tp["threads"]["cores"]
    lines = [
        f"# cnnpipe issue 3 benchmark ({data['mode']})",
        "",
        f"Command: `{data['command']}`  ",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"Python {m['python']}, onnxruntime {m['versions']['onnxruntime']}, "
        f"dask/distributed {m['versions']['distributed']}, zarr {m['versions']['zarr']}; "
        f"load average at start {m['load_avg_at_start']}.  ",
        f"Model: {data['model_label']} (`{Path(data['model']).name}`), "
        f"normalisation `{tp['normalisation']}`.  ",
        f"Code: commit {data['code_at_start']['commit']}, engine sources "
        f"{data['code_at_start']['sources_sha256']}"
        + (f" ({len(data['code_at_start']['dirty_engine_files'])} uncommitted engine "
           "file(s))" if data["code_at_start"]["dirty_engine_files"] else "")
        + (". **The engine's sources changed during this run: rerun.**"
           if data["code_changed_during_run"] else ".") + "  ",
        f"Date: {data['date']}; total benchmark time {data['total_s']:.0f} s.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    for t in data["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {ok(t['met'])} |")
    h, w = tp["image"]["shape"]
    lines += [
        "",
        f"## 1. Throughput: {h}x{w} simulated sky image ({tp['image']['mpix']:.1f} Mpix)",
        "",
        f"Same patches on every row: {s['units']} work unit(s) of tile {s['tile']}, "
        f"{s['patches']} patches of {s['patch'][0]}x{s['patch'][1]} (halo {s['halo']}) in "
        f"{s['batches']} batches of <= {s['batch']} ({s['patch_mpix']:.1f} Mpix through the "
        f"network). Threads: bare onnxruntime 1 session x {tp['threads']['bare_intra_op']} "
        f"intra-op; cnnpipe {tp['threads']['workers']} worker x "
        f"{tp['threads']['dask_threads']} Dask thread x {tp['threads']['engine_intra_op']} "
        f"intra-op. Mpix/s = image pixels / wall seconds. Median of {s['reps']} interleaved "
        "runs, best run in brackets. \"vs bare ORT\" = reference seconds / row seconds, the "
        f"reference being the faster bare variant (`{tp['reference']}`), median vs median "
        "and best vs best. Other processes on the machine used "
        f"{tp['other_processes_cores']:.2f} cores on average during this section; before "
        f"each timing the benchmark waited for them to use < {tp['quiet']['threshold_cores']}"
        f" cores ({tp['quiet']['waited_s']:.0f} s of waiting, at most "
        f"{tp['quiet']['budget_s']:.0f} s); the last column is their mean use during the "
        "median and the best run.",
        "",
        "| what | includes | seconds | Mpix/s | vs bare ORT | other processes, cores |",
        "|---|---|---|---|---|---|",
    ]
    what = [
        ("bare", "bare onnxruntime", "`session.run` on pre-normalised batches only"),
        ("bare_nospin", "bare onnxruntime, no spinning",
         "as above with `allow_spinning=0` (the engine's session option)"),
        ("bare_streams", "bare onnxruntime, 2 streams x 1 thread",
         "two Python threads on a 1-intra-op-thread session, alternate batches (not the "
         "reference: shown as the ceiling of the engine's default 2 x 1 layout)"),
        ("bare_norm", "bare onnxruntime + normalise", "`normalise` + `session.run` per batch"),
        ("engine_inproc", "engine compute, in-process",
         "`infer_unit` (stack, normalise, run, activate, stitch) + `head.finish`; "
         "no Dask, no FITS read, no Zarr"),
        ("engine_inproc_cat", "engine compute + catalog, in-process",
         "as above + `head.catalog` (the unit's catalog fragment: connected components)"),
        ("warm", "`cnnpipe run`, running cluster",
         "prepare, store, submit, FITS read, compute, Zarr write, ledger; cluster already "
         "up, session cached"),
        ("e2e_minus_cluster", "`cnnpipe run` end to end - cluster start/stop",
         "end-to-end minus the separately measured start + stop"),
        ("e2e", "**`cnnpipe run` end to end**",
         "everything incl. embedded cluster start + stop and session creation"),
        ("e2e_alt", f"`cnnpipe run --threads {cores} --ort-threads 1` end to end",
         f"as above, {cores} units at a time with 1 intra-op thread each (same cores)"),
        ("start", "(embedded cluster start)", "LocalCluster up + all workers answering"),
        ("stop", "(embedded cluster stop)", "client + cluster close"),
        ("prepare", "(`prepare`: client-side checks + plan)",
         "model read, graph check, sha256, FITS open, plan"),
    ]
    for key, name, inc in what:
        if key not in r:
            continue
        v = r[key]
        part = key in ("start", "stop", "prepare")
        rate = "" if part else f"{v['mpix_s']:.2f} ({v['mpix_s_best']:.2f})"
        ratio = "" if part else f"{v['ratio_to_bare']:.2f} ({v['ratio_to_bare_best']:.2f})"
        ns = v.get("others_cores")
        busy = (f"{statistics.median(ns):.2f} ({v['others_cores_in_best']:.2f})"
                if ns and not part else "")
        lines.append(f"| {name} | {inc} | {v['median']:.2f} ({v['min']:.2f}) | {rate} | "
                     f"{ratio} | {busy} |")
    for label, key in (("end to end", "worker_breakdown_e2e"),
                       ("running cluster", "worker_breakdown_warm")):
        b = tp[key]
        lines.append("")
        lines.append(f"Worker-side sums ({label}, median): read {b['read_s']:.2f} s, "
                     "infer (session, normalise, run, stitch, finish, catalog) "
                     f"{b['infer_s']:.2f} s, write (Zarr chunks, catalog fragment, ledger) "
                     f"{b['write_s']:.2f} s over {b['units']:.0f} units.")
    sb = tp.get("stage_breakdown")
    if sb:
        lines += [
            "",
            "Where the engine's compute time goes (in-process, all units, the faster of two "
            f"passes; other processes used {sb['others_cores']:.2f} cores meanwhile). CPU = "
            "process CPU seconds, all threads; CPU / wall = cores kept busy:",
            "",
            "| stage | wall s | CPU s | CPU / wall |",
            "|---|---|---|---|",
        ]
        for name, (wall, cpu) in sb["stages"].items():
            lines.append(f"| {name} | {wall:.2f} | {cpu:.2f} | {cpu / max(wall, 1e-9):.2f} |")
    ms = mem["settings"]
    lines += [
        "",
        "## 2. Peak resident memory of `cnnpipe run`",
        "",
        f"RSS summed over the whole process tree (CLI client with scheduler and nannies, "
        f"every worker process), sampled every {ms['sample_ms']:.0f} ms; the peak of the "
        f"sum. Same model, tile {ms['tile']}, patch {ms['patch']}, batch {ms['batch']}; "
        "embedded cluster with default sizing, `--device cpu`. Other processes used "
        f"{mem['other_processes_cores']:.2f} cores on average during this section.",
        "",
        "| image | FITS size | peak RSS (sum) | client | workers | anon / file-backed at "
        "peak | peak of anon-only sum | processes | wall (Mpix/s, vs bare ORT) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, v in mem["images"].items():
        rate = int(size) ** 2 / 1e6 / v["wall_s"]
        client = sum(b for k, b in v["by_role"].items() if k.startswith("client"))
        workers = sum(b for k, b in v["by_role"].items() if not k.startswith("client"))
        sp = v["split_bytes"]
        lines.append(
            f"| {size}x{size} float32 | {v['image_bytes'] / 1e6:,.0f} MB | "
            f"**{mib(v['peak_bytes'])}** | {mib(client)} | {mib(workers)} | "
            f"{mib(sp['RssAnon'] + sp['RssShmem'])} / {mib(sp['RssFile'])} | "
            f"{mib(v['peak_not_file_backed_bytes'])} | "
            f"{v['max_processes']} | {v['wall_s']:.0f} s ({rate:.2f}, "
            f"{rate / r[tp['reference']]['mpix_s']:.2f}) |")
    lines.append("")
    lines.append("Wall = the whole `cnnpipe run` CLI process (Python start-up, cluster, "
                 "everything); \"vs bare ORT\" compares its Mpix/s with the bare onnxruntime "
                 "rate of section 1 (same model, patch and batch), a derived figure.")
    lines.append("")
    lines.append(f"Growth of the peak, largest / smallest image: {mem['growth']:.2f}x "
                 f"(anon-only: {mem['growth_not_file_backed']:.2f}x). File-backed RSS is "
                 "mostly pages of the input FITS file mapped by the worker (memmap).")
    mp = pl["make_plan"]
    lines += [
        "",
        "## 3. Planning (`--dry-run`)",
        "",
        "| case | how | tasks | patches | time |",
        "|---|---|---|---|---|",
        f"| {mp['shape'][0]}x{mp['shape'][1]} | `make_plan` (+ counts + `describe`) with the "
        f"model's geometry (patch {mp['patch'][0]}, halo {mp['halo']}), in-process; median "
        f"of 5 | {mp['tasks']:,} | {mp['patches']:,} in {mp['batches']:,} batches | "
        f"{mp['seconds']['median'] * 1e3:.2f} ms (iterating all units: "
        f"{mp['iterate_units_s']['median'] * 1e3:.2f} ms) |",
    ]
    for key, label in (("cli_big", "memory-test image"), ("cli_sparse", "sparse FITS")):
        if key not in pl:
            continue
        v = pl[key]
        pm = re.search(r"^patches: (.*)$", v["stdout"], re.M)
        im = re.search(r"^images: .*\((.*) Mpix\)", v["stdout"], re.M)
        extra = ""
        if key == "cli_sparse":
            extra = (f" (header + a file hole: {v['file_bytes'] / 1e9:.0f} GB long, "
                     f"{v['disk_bytes'] / 1024:.0f} KiB on disk)")
        size = im.group(1) + " Mpix" if im else ""
        lines.append(f"| {label} {size} | CLI `cnnpipe run --dry-run` in a subprocess{extra}, "
                     f"wall incl. Python start-up | {v['tasks']:,} | "
                     f"{pm.group(1) if pm else ''} | {v['wall_s']:.2f} s |")
    lines.append("")
    return "\n".join(lines)


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    r = data["throughput"]["results"]
    mem, pl = data["memory"], data["plan"]
    sizes = list(mem["images"])
    big = mem["images"][sizes[-1]]["peak_bytes"]
    return [
        {"target": f"`cnnpipe run` end to end / bare ORT >= {TARGET_RATIO}",
         "measured": f"{r['e2e']['ratio_to_bare']:.2f} (best runs: "
                     f"{r['e2e']['ratio_to_bare_best']:.2f})",
         "met": r["e2e"]["ratio_to_bare"] >= TARGET_RATIO},
        {"target": f"`cnnpipe run` on a running cluster / bare ORT >= {TARGET_RATIO}",
         "measured": f"{r['warm']['ratio_to_bare']:.2f} (best runs: "
                     f"{r['warm']['ratio_to_bare_best']:.2f})",
         "met": r["warm"]["ratio_to_bare"] >= TARGET_RATIO},
        {"target": f"peak RSS {sizes[-1]}² <= 2 GB",
         "measured": f"{big / 1e9:.2f} GB ({mib(big)})",
         "met": big <= TARGET_PEAK_BYTES},
        {"target": f"peak RSS {sizes[-1]}² <= {TARGET_PEAK_GROWTH}x {sizes[0]}²",
         "measured": f"{mem['growth']:.2f}x", "met": mem["growth"] <= TARGET_PEAK_GROWTH},
        {"target": f"tasks of a {pl['make_plan']['shape'][0]}² run < {TARGET_TASKS:,}",
         "measured": f"{pl['make_plan']['tasks']:,}",
         "met": pl["make_plan"]["tasks"] < TARGET_TASKS},
    ]


# -- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from cnnpipe.pipeline.config import RunConfig
    from cnnpipe.pipeline.malloc import tune_malloc

    tune_malloc()  # as the cnnpipe command does, before any thread starts

    d = RunConfig(inputs=("x",), models=("m",), out="o")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small sizes (1024² throughput, 1024²/2048² memory, tile 1024) "
                         "for a CI smoke run")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                    help="folder for issue3.md and issue3.json")
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "cnnpipe-bench",
                    help="scratch folder (images, stores, exported model)")
    ap.add_argument("--model", help="ONNX model package (default: bundled demo_segment, "
                    "else segment_unet exported with random weights)")
    ap.add_argument("--size", type=int, help="throughput image side [4096; quick 1024]")
    ap.add_argument("--mem-sizes", help="memory image sides, small,large [4000,16000; "
                    "quick 1024,2048]")
    ap.add_argument("--plan-size", type=int, default=100_000, help="planned image side")
    ap.add_argument("--tile", type=int, help=f"[{d.tile}; quick 1024]")
    ap.add_argument("--patch", type=auto_int, default=d.patch, help="[auto]")
    ap.add_argument("--batch", type=auto_int, default=d.batch, help="[auto]")
    ap.add_argument("--reps", type=int, help="repetitions of each timing [5; quick 1]")
    ap.add_argument("--sample-ms", type=float, default=50.0, help="RSS sampling period")
    ap.add_argument("--quiet-cores", type=float, default=0.3,
                    help="before each timing, wait until other processes use fewer cores")
    ap.add_argument("--quiet-budget", type=float,
                    help="total seconds the waiting for quiet may take [600; quick 0]")
    ap.add_argument("--from-json", type=Path,
                    help="only re-render the Markdown of an earlier run's JSON")
    ap.add_argument("--no-sparse", action="store_true",
                    help="skip the CLI dry run on a sparse --plan-size² FITS file")
    a = ap.parse_args(argv)
    if a.from_json:
        md = report(json.loads(a.from_json.read_text()))
        a.from_json.with_suffix(".md").write_text(md)
        print(md)
        return 0
    q = a.quick
    size = a.size or (1024 if q else 4096)
    mem_sizes = [int(x) for x in (a.mem_sizes or ("1024,2048" if q else "4000,16000"))
                 .split(",")]
    tile = a.tile or (1024 if q else d.tile)
    reps = a.reps or (1 if q else 5)
    t_all = time.perf_counter()
    import distributed  # noqa: F401  (configures its loggers on import; quiet them after)

    logging.basicConfig(level=logging.WARNING)
    for name in ("distributed", "distributed.scheduler", "distributed.nanny",
                 "distributed.core", "distributed.worker", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    work = a.workdir
    work.mkdir(parents=True, exist_ok=True)
    model, label = resolve_model(a.model, work)
    log(f"model: {model} ({label})")
    data: dict[str, Any] = {
        "mode": "quick" if q else "full",
        "command": "python -m benchmarks.run_issue3" + (" " + " ".join(
            sys.argv[1:] if argv is None else argv)).rstrip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "model": model,
        "model_label": label,
        "code_at_start": code_state(),
    }
    img = work / f"sky_{size}.fits"
    files = write_image(img, size, seed=1)
    try:
        mark = cpu_mark()
        meter = Meter(quiet_cores=a.quiet_cores,
                      budget_s=a.quiet_budget if a.quiet_budget is not None else (0 if q else 600))
        data["throughput"] = bench_throughput(model, img, tile=tile, patch=a.patch,
                                              batch=a.batch, reps=reps, work=work, meter=meter)
        data["throughput"]["other_processes_cores"] = others_cores(mark)
    finally:
        rm(*files)
    big: Path | None = None
    try:
        mark = cpu_mark()
        data["memory"], big = bench_memory(
            model, mem_sizes, tile=tile, patch=a.patch, batch=a.batch,
            every_s=a.sample_ms / 1000, work=work, keep_last=True)
        data["memory"]["other_processes_cores"] = others_cores(mark)
        data["plan"] = bench_plan(model, a.plan_size, tile=tile, patch=a.patch,
                                  batch=a.batch, big=big, work=work,
                                  sparse=not a.no_sparse)
    finally:
        if big is not None:
            rm(big)
        rm(work / "dry.zarr")
    data["code_at_end"] = code_state()
    data["code_changed_during_run"] = (
        data["code_at_end"]["sources_sha256"] != data["code_at_start"]["sources_sha256"])
    data["targets"] = targets(data)
    data["total_s"] = time.perf_counter() - t_all
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "issue3-quick" if q else "issue3"
    md = report(data)
    (a.out / f"{stem}.md").write_text(md)
    (a.out / f"{stem}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(md)
    log(f"wrote {a.out / stem}.md and .json in {data['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
