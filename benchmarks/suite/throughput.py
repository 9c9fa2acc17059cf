"""Sections a (cnnpipe run vs bare onnxruntime) and g (worker scaling, planning).

Both reuse the issue-3 benchmark: ``bench_throughput`` measures bare onnxruntime on the
exact batches the plan makes against ``cnnpipe run`` (in-process engine compute, on a
running cluster, end to end), ``bench_plan`` plans a 100000² image in-process and
through ``cnnpipe run --dry-run`` on a sparse FITS file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import Timings, log, ratio, rm, run_cnnpipe
from benchmarks.suite.context import Context

__all__ = ["TARGET_A", "markdown_a", "markdown_g", "run_a", "run_g", "targets_a", "targets_g"]

TARGET_A = 0.95
TARGET_TASKS = 100_000

_ROWS_A = (
    ("bare", "bare onnxruntime", "`session.run` on pre-normalised batches only"),
    ("bare_nospin", "bare onnxruntime, no spinning", "as above, `allow_spinning=0`"),
    ("engine_inproc", "engine compute, in-process",
     "`infer_unit` (stack, normalise, run, activate, stitch) + `head.finish`; no Dask, "
     "no FITS read, no Zarr"),
    ("warm", "`cnnpipe run`, running cluster",
     "FITS read, compute, catalog fragment, Zarr write, ledger; cluster up, session cached"),
    ("e2e", "**`cnnpipe run` end to end**",
     "everything, incl. embedded cluster start + stop and session creation"),
    ("e2e_alt", "`cnnpipe run --threads N --ort-threads 1`",
     "end to end, N units at a time with one intra-op thread each"),
)


def run_a(ctx: Context) -> dict[str, Any]:
    from benchmarks.run_issue3 import bench_throughput

    s, unet = ctx.settings, ctx.unet()
    image = ctx.sky(s.size)
    # the issue-3 benchmark times ten rows and two breakdowns per repetition
    tp = bench_throughput(str(unet.fp32), image, tile=s.tile, patch=s.patch, batch=s.batch,
                          reps=s.a_reps, work=ctx.work, meter=ctx.meter)
    return {"model": unet.fp32.name, "image": tp["image"], "settings": tp["settings"],
            "threads": tp["threads"], "reference": tp["reference"], "results": tp["results"],
            "worker_breakdown_e2e": tp["worker_breakdown_e2e"],
            "worker_breakdown_warm": tp["worker_breakdown_warm"],
            "stage_breakdown": tp["stage_breakdown"]}


def targets_a(r: dict[str, Any]) -> list[dict[str, Any]]:
    res = r["results"]
    e2e = res["e2e"]["ratio_to_bare"]
    return [{"section": "a", "target": f"`cnnpipe run` end to end / bare onnxruntime >= "
             f"{TARGET_A}", "value": e2e, "met": e2e >= TARGET_A,
             "measured": f"{e2e:.2f} (best runs {res['e2e']['ratio_to_bare_best']:.2f}; on a "
                         f"running cluster {res['warm']['ratio_to_bare']:.2f}; engine compute "
                         f"in-process {res['engine_inproc']['ratio_to_bare']:.2f})"}]


def markdown_a(r: dict[str, Any]) -> list[str]:
    st, th, res = r["settings"], r["threads"], r["results"]
    h, w = r["image"]["shape"]
    lines = [
        f"Image {h}x{w} simulated sky ({r['image']['mpix']:.1f} Mpix); {st['units']} work "
        f"unit(s) of tile {st['tile']}; {st['patches']} patches of {st['patch'][0]}x"
        f"{st['patch'][1]} (halo {st['halo']}) in {st['batches']} batches of <= "
        f"{st['batch']}, the same on every row. Threads: bare 1 session x "
        f"{th['bare_intra_op']} intra-op; cnnpipe {th['workers']} worker x "
        f"{th['dask_threads']} Dask thread x {th['engine_intra_op']} intra-op. Seconds: "
        f"median of {st['reps']} interleaved runs (best). Ratio = bare seconds "
        f"(`{r['reference']}`, the faster bare row) / row seconds.",
        "",
        "| what | includes | seconds | Mpix/s | / bare ORT |",
        "|---|---|---|---|---|",
    ]
    for key, name, inc in _ROWS_A:
        if key in res:
            v = res[key]
            lines.append(f"| {name} | {inc} | {v['median']:.2f} ({v['min']:.2f}) | "
                         f"{v['mpix_s']:.2f} | {v['ratio_to_bare']:.2f} "
                         f"({v['ratio_to_bare_best']:.2f}) |")
    for label, key in (("end to end", "worker_breakdown_e2e"),
                       ("running cluster", "worker_breakdown_warm")):
        b = r[key]
        lines += ["", f"Worker-side sums ({label}, median): read {b['read_s']:.2f} s, infer "
                  f"{b['infer_s']:.2f} s, write {b['write_s']:.2f} s over {b['units']:.0f} "
                  "units."]
    stages = r["stage_breakdown"]["stages"]
    lines += ["", "Engine compute by stage (in-process; CPU / wall = cores kept busy): "
              + "; ".join(f"{k} {w:.2f} s wall, {c / max(w, 1e-9):.2f}"
                          for k, (w, c) in stages.items()) + "."]
    return lines


# -- g ---------------------------------------------------------------------------------


def run_g(ctx: Context) -> dict[str, Any]:
    from benchmarks.run_issue3 import bench_plan
    from cnnpipe.pipeline.config import RunConfig

    s, unet = ctx.settings, ctx.unet()
    image = ctx.sky(s.size)
    n = ctx.cores
    cfgs = {
        "workers_1": ctx.run_config(image, unet.fp32, "scale_1.zarr", workers=1, threads=1,
                                    ort_threads=n),
        "workers_2": ctx.run_config(image, unet.fp32, "scale_2.zarr", workers=2, threads=1,
                                    ort_threads=max(1, n // 2)),
    }
    if not s.quick:
        log("g: untimed warm-up run")
        run_cnnpipe(cfgs["workers_1"])
    t = Timings(ctx.meter)
    parts: dict[str, list[dict[str, float]]] = {}
    for rep in range(s.reps):
        log(f"g: scaling rep {rep + 1}/{s.reps}")
        for key, cfg in cfgs.items():
            parts.setdefault(key, []).append(t.measure(key, lambda c=cfg: run_cnnpipe(c)))
    for cfg in cfgs.values():
        rm(Path(cfg.out))
    res = t.summary()
    mpix = s.size * s.size / 1e6
    for key, v in res.items():
        v["mpix_s"] = mpix / v["median"]
        v["threads"] = ctx.engine_threads(cfgs[key])
        v["worker_sums"] = {k: sorted(p[k] for p in parts[key])[len(parts[key]) // 2]
                            for k in parts[key][0]}
    log(f"g: planning a {s.plan_size}² image (in-process and --dry-run on a sparse FITS)")
    tile = RunConfig(inputs=("x",), models=("m",), out="o").tile  # the default work unit
    plan = bench_plan(str(unet.fp32), s.plan_size, tile=tile, patch=s.patch, batch=s.batch,
                      big=None, work=ctx.work, sparse=True)
    rm(ctx.work / "dry.zarr")
    return {"image": {"shape": [s.size, s.size], "mpix": mpix}, "tile": s.tile,
            "results": res, "speedup_2_vs_1": ratio(res, "workers_1", "workers_2"),
            "plan": plan, "plan_tile": tile}


def targets_g(r: dict[str, Any]) -> list[dict[str, Any]]:
    mp = r["plan"]["make_plan"]
    out = [{"section": "g", "target": f"tasks of a {mp['shape'][0]}² run < {TARGET_TASKS:,}",
            "value": mp["tasks"], "met": mp["tasks"] < TARGET_TASKS,
            "measured": f"{mp['tasks']:,} (planned in {mp['seconds']['median'] * 1e3:.1f} ms)"}]
    sp = r["speedup_2_vs_1"]["median"]
    out.append({"section": "g", "target": "2 vs 1 worker processes (no target; informative)",
                "value": sp, "met": None, "measured": f"{sp:.2f}x"})
    return out


def markdown_g(r: dict[str, Any]) -> list[str]:
    h, w = r["image"]["shape"]
    lines = [
        f"`cnnpipe run` end to end on the section-a image ({h}x{w}, tile {r['tile']}), same "
        "cores spent two ways. Seconds: median of interleaved runs (best).",
        "",
        "| setting | processes x Dask threads x intra-op | seconds | Mpix/s | worker sums: "
        "read / infer / write s |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("workers_1", "`--workers 1`"), ("workers_2", "`--workers 2`")):
        v = r["results"][key]
        th, ws = v["threads"], v["worker_sums"]
        lines.append(f"| {label} | {th['workers']} x {th['dask_threads']} x "
                     f"{th['ort_threads']} | {v['median']:.2f} ({v['min']:.2f}) | "
                     f"{v['mpix_s']:.2f} | {ws['read_s']:.2f} / {ws['infer_s']:.2f} / "
                     f"{ws['write_s']:.2f} |")
    sp = r["speedup_2_vs_1"]
    mp = r["plan"]["make_plan"]
    lines += [
        "",
        f"2 workers vs 1: {sp['median']:.2f}x (best runs {sp['best']:.2f}x).",
        "",
        "| planning | tasks | patches | batches | time |",
        "|---|---|---|---|---|",
        f"| `make_plan` {mp['shape'][0]}x{mp['shape'][1]}, tile {r['plan_tile']}, patch "
        f"{mp['patch'][0]} (halo {mp['halo']}), in-process, median of 5 | {mp['tasks']:,} | "
        f"{mp['patches']:,} | {mp['batches']:,} | {mp['seconds']['median'] * 1e3:.2f} ms |",
    ]
    cs = r["plan"].get("cli_sparse")
    if cs:
        lines.append(
            f"| `cnnpipe run --dry-run` on a sparse {mp['shape'][0]}² FITS file "
            f"({cs['file_bytes'] / 1e9:.0f} GB long, {cs['disk_bytes'] / 1024:.0f} KiB on "
            f"disk), subprocess incl. Python start-up | {cs['tasks']:,} | | | "
            f"{cs['wall_s']:.2f} s |")
    return lines
