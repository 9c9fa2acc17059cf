"""Sections b (MONAI ``sliding_window_inference``) and c (a naive per-patch torch loop).

Both sides run in this process on the same weights (the torch module and the cnnpipe
package exported from it), the same image and the same number of threads
(``torch.set_num_threads`` = cnnpipe's processes x Dask threads x intra-op threads).
Every repetition runs, interleaved: ``cnnpipe run`` end to end (FITS in, Zarr store with
mask, float16 probabilities and catalog out), the engine's compute in-process (window
reads + ``infer_unit``, float32, no Dask, no Zarr), and the torch side(s) on the image
already in memory (normalise + inference; no FITS read, nothing written: this favours
torch).  Accuracy: each side's output against whole-image torch inference (one forward
pass over the entire image) in the interior, i.e. without a border of ``halo`` pixels
where whole-image 'same' padding and cnnpipe's mirrored edges legitimately differ.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Timings, engine_probs, log, ratio, rm, run_cnnpipe
from benchmarks.suite.context import Context

__all__ = ["TARGET_DIFF", "TARGET_SPEEDUP", "markdown_bc", "run_bc", "split_bc", "targets_b",
           "targets_c"]

TARGET_SPEEDUP = 4.0
TARGET_DIFF = 1e-5
OVERLAP = 0.25


def _agreement(out: np.ndarray, ref: np.ndarray, border: int) -> dict[str, float]:
    """Max / mean abs difference and argmax agreement, interior and whole image."""
    b = border
    inner = (slice(None), slice(b, ref.shape[1] - b), slice(b, ref.shape[2] - b))
    o, r = out.astype(np.float32), ref
    d_in = np.abs(o[inner] - r[inner])
    return {
        "interior_max_abs": float(np.nanmax(d_in)),
        "interior_mean_abs": float(np.nanmean(d_in)),
        "interior_argmax_agreement": float(np.mean(
            np.argmax(o[inner], axis=0) == np.argmax(r[inner], axis=0))),
        "image_max_abs": float(np.nanmax(np.abs(o - r))),
    }


def run_bc(ctx: Context, *, monai: bool, naive: bool) -> dict[str, Any]:
    import torch
    import zarr

    from cnnpipe.normalise import normalise
    from cnnpipe.pipeline.runner import prepare
    from cnnpipe.pipeline.worker import SessionSpec, get_session

    s, unet = ctx.settings, ctx.unet()
    image = ctx.sky(s.size)
    cfg = ctx.run_config(image, unet.fp32, "torchcmp.zarr")
    threads = ctx.engine_threads(cfg)
    torch.set_num_threads(threads["total"])
    prep = prepare(cfg)
    (source,), (job,) = prep.sources, prep.jobs
    meta, g = job.meta, job.geometry
    ny, nx = source.shape
    ch = list(prep.channels[source.key][0])
    pixels = source.read_window(0, ny, 0, nx)[ch]  # (c, y, x) float32, as the engine reads
    net = unet.module.eval()
    p = g.patch[0]
    m = meta.input.multiple

    log(f"b/c: whole-image torch reference ({ny}x{nx}, one forward pass)")
    t0 = time.perf_counter()
    with torch.inference_mode():
        ref = net(torch.from_numpy(normalise(pixels[None], meta.normalisation)))[0].numpy()
    ref_s = time.perf_counter() - t0

    def monai_run(pixels: np.ndarray = pixels) -> np.ndarray:
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            x = torch.from_numpy(normalise(pixels[None], meta.normalisation))
            out = sliding_window_inference(x, roi_size=(p, p), sw_batch_size=g.batch,
                                           predictor=net, overlap=OVERLAP, mode="gaussian")
        return np.asarray(out[0])

    def naive_run(pixels: np.ndarray = pixels) -> np.ndarray:
        # what a user without cnnpipe writes: non-overlapping patches, batch 1, no halo
        ny, nx = pixels.shape[1:]
        out = np.empty((len(meta.output.classes), ny, nx), np.float32)
        with torch.no_grad():
            for y0 in range(0, ny, p):
                for x0 in range(0, nx, p):
                    tile = pixels[:, y0:y0 + p, x0:x0 + p]
                    h, w = tile.shape[1:]
                    py, px = -h % m, -w % m  # the U-Net needs multiples of 2**depth
                    if py or px:
                        tile = np.pad(tile, ((0, 0), (0, py), (0, px)), mode="reflect")
                    x = torch.from_numpy(normalise(tile[None], meta.normalisation))
                    out[:, y0:y0 + h, x0:x0 + w] = net(x)[0, :, :h, :w].numpy()
        return out

    session = get_session(job.path, job.sha256,
                          SessionSpec(device="cpu", intra_op_threads=threads["total"]))
    eng = engine_probs(prep, session)  # also the engine's untimed warm-up
    outs: dict[str, np.ndarray] = {}
    sides = [("cnnpipe", lambda: run_cnnpipe(cfg)), ("engine", lambda: engine_probs(prep, session))]
    if monai:
        sides.append(("monai", monai_run))
    if naive:
        sides.append(("naive", naive_run))
    log("b/c: untimed warm-up (torch sides on a corner of the image; cnnpipe run)")
    corner = pixels[:, :min(ny, 2 * p), :min(nx, 2 * p)]
    if monai:
        monai_run(corner)
    if naive:
        naive_run(corner)
    if not s.quick:  # the same call as the timed one: quick mode saves its time
        run_cnnpipe(cfg)
    t = Timings(ctx.meter)
    for rep in range(s.reps):
        log(f"b/c: rep {rep + 1}/{s.reps}: " + ", ".join(k for k, _ in sides))
        for key, fn in sides:
            out = t.measure(key, fn)
            if key in ("monai", "naive"):
                outs[key] = out
    res = t.summary()
    mpix = ny * nx / 1e6
    for v in res.values():
        v["mpix_s"] = mpix / v["median"]

    prob = zarr.open_array(cfg.out, path=f"images/{source.key}/{job.name}/prob", mode="r")
    stored = np.asarray(prob[...])
    rm(Path(cfg.out))
    border = g.halo
    acc = {"cnnpipe engine float32": _agreement(eng, ref, border),
           "cnnpipe store float16": _agreement(stored, ref, border)}
    for key, label in (("monai", "MONAI sliding_window_inference"),
                       ("naive", "naive per-patch torch loop")):
        if key in outs:
            acc[label] = _agreement(outs[key], ref, border)
    out: dict[str, Any] = {
        "image": {"shape": [ny, nx], "mpix": mpix},
        "model": unet.fp32.name, "weights": unet.weights, "threads": threads,
        "torch_threads": torch.get_num_threads(), "patch": p, "halo": g.halo,
        "batch": g.batch, "overlap": OVERLAP, "interior_border": border,
        "reference_s": ref_s, "results": res, "accuracy": acc,
        "monai_patches": _monai_count(ny, p) * _monai_count(nx, p) if monai else None,
        "cnnpipe_patches": prep.plan.n_patches,
        "naive_patches": -(-ny // p) * -(-nx // p) if naive else None,
    }
    if monai:
        out["speedup_vs_monai"] = ratio(res, "monai", "cnnpipe")
        out["speedup_vs_monai_engine"] = ratio(res, "monai", "engine")
    if naive:
        out["speedup_vs_naive"] = ratio(res, "naive", "cnnpipe")
        out["speedup_vs_naive_engine"] = ratio(res, "naive", "engine")
    return out


def _monai_count(n: int, roi: int) -> int:
    """Windows along one axis of MONAI's ``dense_patch_slices`` for ``overlap``."""
    if n <= roi:
        return 1
    step = max(int(roi * (1 - OVERLAP)), 1)
    return -(-(n - roi) // step) + 1


def split_bc(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Section b's and c's figures of one combined run (the cnnpipe rows go to both)."""
    out = {}
    for sec, key, label in (("b", "monai", "MONAI"), ("c", "naive", "naive")):
        if key not in r["results"]:
            continue
        d = {k: v for k, v in r.items() if not k.startswith(("speedup_vs_", "monai_", "naive_"))}
        d["results"] = {k: v for k, v in r["results"].items() if k in ("cnnpipe", "engine", key)}
        d["accuracy"] = {k: v for k, v in r["accuracy"].items()
                         if k.startswith("cnnpipe") or k.startswith(label)}
        d["speedup"] = r[f"speedup_vs_{key}"]
        d["speedup_engine"] = r[f"speedup_vs_{key}_engine"]
        d[f"{key}_patches"] = r[f"{key}_patches"]
        out[sec] = d
    return out


def targets_b(r: dict[str, Any]) -> list[dict[str, Any]]:
    sp = r["speedup"]
    eng = r["accuracy"]["cnnpipe engine float32"]["interior_max_abs"]
    monai = next(v for k, v in r["accuracy"].items() if k.startswith("MONAI"))
    return [
        {"section": "b", "target": f"MONAI seconds / `cnnpipe run` seconds >= "
         f"{TARGET_SPEEDUP:g} (fp32)", "value": sp["median"],
         "met": sp["median"] >= TARGET_SPEEDUP,
         "measured": f"{sp['median']:.2f}x (best runs {sp['best']:.2f}x; vs the engine's "
                     f"in-process compute {r['speedup_engine']['median']:.2f}x)"},
        {"section": "b", "target": f"cnnpipe interior max abs difference from whole-image "
         f"inference <= {TARGET_DIFF:g}", "value": eng, "met": eng <= TARGET_DIFF,
         "measured": f"{eng:.2e} (engine float32; stored float16 "
                     f"{r['accuracy']['cnnpipe store float16']['interior_max_abs']:.2e}; "
                     f"MONAI {monai['interior_max_abs']:.2e})"},
    ]


def targets_c(r: dict[str, Any]) -> list[dict[str, Any]]:
    sp = r["speedup"]
    naive = next(v for k, v in r["accuracy"].items() if k.startswith("naive"))
    return [{"section": "c", "target": "naive torch loop seconds / `cnnpipe run` seconds "
             "(no target; informative)", "value": sp["median"], "met": None,
             "measured": f"{sp['median']:.2f}x (interior max abs difference of the naive "
                         f"loop: {naive['interior_max_abs']:.2e})"}]


def markdown_bc(r: dict[str, Any]) -> list[str]:
    res, th = r["results"], r["threads"]
    h, w = r["image"]["shape"]
    rows = [
        ("cnnpipe", "**`cnnpipe run` end to end**",
         f"FITS -> Zarr (mask, float16 probabilities, catalog); {r['cnnpipe_patches']} "
         f"patches of {r['patch']} with halo {r['halo']}, batch {r['batch']}; cluster start"),
        ("engine", "cnnpipe engine compute, in-process",
         "window reads + `infer_unit` (float32), no Dask, no Zarr"),
        ("monai", "MONAI `sliding_window_inference`",
         f"normalise + {r.get('monai_patches')} windows of {r['patch']}, overlap {r['overlap']}, "
         f"gaussian blending, `sw_batch_size` {r['batch']}; image in memory, nothing written"),
        ("naive", "naive torch loop",
         f"normalise + {r.get('naive_patches')} non-overlapping patches of {r['patch']}, batch 1, "
         "`torch.no_grad()`; image in memory, nothing written"),
    ]
    lines = [
        f"Image {h}x{w} ({r['image']['mpix']:.1f} Mpix); model `{r['model']}` with "
        f"{r['weights']}; torch eager fp32 with {r['torch_threads']} threads, cnnpipe "
        f"{th['workers']} worker x {th['dask_threads']} Dask thread x {th['ort_threads']} "
        f"intra-op. Seconds: median of interleaved runs (best). Whole-image torch inference "
        f"(the accuracy reference) took {r['reference_s']:.1f} s.",
        "",
        "| side | what runs | seconds | Mpix/s | side / `cnnpipe run` |",
        "|---|---|---|---|---|",
    ]
    base = res["cnnpipe"]["median"]
    for key, name, what in rows:
        if key in res:
            v = res[key]
            lines.append(f"| {name} | {what} | {v['median']:.2f} ({v['min']:.2f}) | "
                         f"{v['mpix_s']:.2f} | {v['median'] / base:.2f} |")
    lines += [
        "",
        f"Difference from whole-image torch inference, probabilities of all classes; "
        f"interior = the image without a {r['interior_border']}-pixel border (the model's "
        "halo, >= its receptive-field radius):",
        "",
        "| output | interior max abs | interior mean abs | interior argmax agreement | "
        "whole-image max abs |",
        "|---|---|---|---|---|",
    ]
    for label, a in r["accuracy"].items():
        lines.append(f"| {label} | {a['interior_max_abs']:.2e} | {a['interior_mean_abs']:.2e}"
                     f" | {a['interior_argmax_agreement']:.6f} | {a['image_max_abs']:.2e} |")
    return lines
