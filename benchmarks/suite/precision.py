"""Section f: fp32 vs fp16 vs int8 packages of the same U-Net on this CPU.

The variants come from ``cnnpipe export --from-onnx`` of the fp32 package (fp16:
``onnxconverter-common``, float32 I/O; int8: static QDQ, uint8 activations and per-channel
int8 weights, MinMax-calibrated on a separate simulated image).  Speed: one bare
onnxruntime session per variant (CPU provider, intra-op threads = all cores, default
options) over exactly the batches the plan makes, interleaved.  Agreement: the engine's
stitched output of the whole image with each variant (``infer_unit``, as a worker
computes it) against fp32: class-mask (argmax) agreement over all pixels, and the max
abs difference of the probabilities.

Beside the target, an informative sweep over the U-Net's width: ``segment_unet`` with
``base`` 8 (the demo's), 16 and 32 channels, seeded random weights, fp32 against int8 on
the first batches of the same plan (speed only: random weights give no meaningful
masks).  It shows where int8 starts to pay on this CPU.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Timings, build_batches, engine_probs, log, ort_session, ratio
from benchmarks.suite.assets import export_variant, export_width
from benchmarks.suite.context import Context

__all__ = ["TARGET_AGREEMENT", "TARGET_INT8", "markdown_f", "run_f", "targets_f"]

TARGET_INT8 = 1.5
TARGET_AGREEMENT = 0.99
VARIANTS = ("fp32", "fp16", "int8")
#: ``segment_unet`` widths of the informative int8 sweep, and its batches per timing
WIDTHS = (8, 16, 32)
SWEEP_BATCHES = 4


def optimized_ops(path: Path, threads: int) -> dict[str, int]:
    """Op types of the graph onnxruntime actually runs on this CPU (after its fusions).

    Tells whether the int8 model runs integer kernels (``QLinearConv``, ``ConvInteger``,
    ...) or dequantises back to float convolutions.
    """
    import onnx
    import onnxruntime as ort

    out = path.with_name(path.stem + ".optimized.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3  # not the warning that the saved graph is CPU-specific
    ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    out.unlink(missing_ok=True)
    return dict(ops.most_common())


def run_f(ctx: Context) -> dict[str, Any]:
    from cnnpipe.modelmeta import read_model_meta
    from cnnpipe.pipeline.runner import prepare

    s, unet = ctx.settings, ctx.unet()
    image = ctx.sky(s.size)
    calib = ctx.sky(1024, seed=7)
    paths = {"fp32": unet.fp32}
    export_s = {"fp32": unet.export_s}
    for v in VARIANTS[1:]:
        log(f"f: cnnpipe export --from-onnx ... {v}")
        paths[v], export_s[v] = export_variant(unet.fp32, v, calib)
    prep = prepare(ctx.run_config(image, unet.fp32, "precision.zarr"))
    bt = build_batches(prep)
    meta = prep.jobs[0].meta
    i_name, o_name = meta.input.name, meta.output.name
    sessions = {v: ort_session(str(p), ctx.cores) for v, p in paths.items()}
    res = _interleaved(ctx, sessions, bt.norm, (i_name, o_name), "f")
    npix = bt.n_patches * bt.patch[0] * bt.patch[1] / 1e6
    for v in res.values():
        v["patch_mpix_s"] = npix / v["median"]

    log("f: stitched masks of every variant (engine, in-process)")
    probs = {v: engine_probs(prep, sess) for v, sess in sessions.items()}
    ref = probs["fp32"]
    ref_mask = np.argmax(ref, axis=0)
    variants: dict[str, Any] = {}
    for v in VARIANTS:
        pm = read_model_meta(paths[v]).provenance
        variants[v] = {
            "file": paths[v].name, "bytes": paths[v].stat().st_size,
            "export_s": export_s[v], "speedup_vs_fp32": ratio(res, "fp32", v),
            "mask_agreement": float(np.mean(np.argmax(probs[v], axis=0) == ref_mask)),
            "max_abs_vs_fp32": float(np.max(np.abs(probs[v] - ref))),
            "mean_abs_vs_fp32": float(np.mean(np.abs(probs[v] - ref))),
            "exporter_checks": pm.get("variant_agreement", {}),
            "optimized_ops": optimized_ops(paths[v], ctx.cores),
        }
    return {"image": {"shape": list(prep.sources[0].shape)}, "patches": bt.n_patches,
            "patch": list(bt.patch), "batches": len(bt.norm), "threads": ctx.cores,
            "calibration": calib.name, "results": res, "variants": variants,
            "widths": width_sweep(ctx, bt.norm[:SWEEP_BATCHES], (i_name, o_name), calib,
                                  unet.normalisation)}


def width_sweep(ctx: Context, batches: list[Any], names: tuple[str, str], calib: Path,
                normalisation: str) -> dict[str, Any]:
    """int8 vs fp32 seconds of ``segment_unet`` at each of :data:`WIDTHS` (speed only)."""
    folder = ctx.work / "widths"
    folder.mkdir(parents=True, exist_ok=True)
    sessions = {}
    for base in WIDTHS:
        for v in ("fp32", "int8"):
            log(f"f: width sweep: cnnpipe export segment_unet base={base} ({v})")
            path = export_width(folder, base, v, calibration=calib, normalisation=normalisation)
            sessions[f"base{base}_{v}"] = ort_session(str(path), ctx.cores)
    res = _interleaved(ctx, sessions, batches, names, "f: width sweep")
    return {"patches": sum(len(x) for x in batches), "patch": list(batches[0].shape[2:]),
            "results": res,
            "speedup": {str(b): ratio(res, f"base{b}_fp32", f"base{b}_int8") for b in WIDTHS}}


def _interleaved(ctx: Context, sessions: dict[str, Any], batches: list[Any],
                 names: tuple[str, str], label: str) -> dict[str, dict[str, Any]]:
    """Seconds of each session over ``batches``, ``reps`` interleaved repetitions."""
    i_name, o_name = names
    for sess in sessions.values():  # first-call allocations per input shape, untimed
        for x in {x.shape: x for x in batches}.values():
            sess.run([o_name], {i_name: x})

    def loop(sess: Any) -> None:
        for x in batches:
            sess.run([o_name], {i_name: x})

    t = Timings(ctx.meter)
    for rep in range(ctx.settings.reps):
        log(f"{label}: rep {rep + 1}/{ctx.settings.reps}")
        for key, sess in sessions.items():
            t.measure(key, lambda sess=sess: loop(sess))
    return t.summary()


def targets_f(r: dict[str, Any]) -> list[dict[str, Any]]:
    i8 = r["variants"]["int8"]
    sp, agree = i8["speedup_vs_fp32"]["median"], i8["mask_agreement"]
    return [
        {"section": "f", "target": f"int8 speed-up over fp32 >= {TARGET_INT8:g}x",
         "value": sp, "met": sp >= TARGET_INT8,
         "measured": f"{sp:.2f}x (best runs {i8['speedup_vs_fp32']['best']:.2f}x; fp16 "
                     f"{r['variants']['fp16']['speedup_vs_fp32']['median']:.2f}x)"},
        {"section": "f", "target": f"int8 mask pixels agreeing with fp32 >= "
         f"{TARGET_AGREEMENT:.0%}", "value": agree, "met": agree >= TARGET_AGREEMENT,
         "measured": f"{agree:.4%}"},
    ]


def markdown_f(r: dict[str, Any]) -> list[str]:
    h, w = r["image"]["shape"]
    lines = [
        f"Image {h}x{w}: {r['patches']} patches of {r['patch'][0]}x{r['patch'][1]} in "
        f"{r['batches']} batches; bare onnxruntime, CPU provider, {r['threads']} intra-op "
        f"threads. int8 calibrated on `{r['calibration']}` (another simulated sky). Seconds: "
        "median of interleaved runs (best). Agreement: the engine's stitched output of the "
        "whole image, each variant vs fp32.",
        "",
        "| variant | file size | seconds | patch Mpix/s | speed-up vs fp32 | mask agreement | "
        "max / mean abs prob. difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        x, t = r["variants"][v], r["results"][v]
        lines.append(
            f"| {v} | {x['bytes'] / 1e6:.2f} MB | {t['median']:.2f} ({t['min']:.2f}) | "
            f"{t['patch_mpix_s']:.2f} | {x['speedup_vs_fp32']['median']:.2f}x | "
            f"{x['mask_agreement']:.4%} | {x['max_abs_vs_fp32']:.2e} / "
            f"{x['mean_abs_vs_fp32']:.2e} |")
    lines.append("")
    for v in VARIANTS:
        ops = r["variants"][v]["optimized_ops"]
        lines.append(f"Ops onnxruntime runs for {v} (after its graph optimisations): "
                     + ", ".join(f"{k} {n}" for k, n in ops.items()) + ".  ")
    sw = r.get("widths")
    if sw:
        lines += [
            "",
            f"int8 by network width (informative): `segment_unet` with `base` channels at "
            f"the first level (the demo's is 8), seeded random weights (speed only), the "
            f"same {sw['patches']} patches of {sw['patch'][0]}x{sw['patch'][1]}, bare "
            "onnxruntime as above. Seconds: median of interleaved runs (best).",
            "",
            "| base | fp32 seconds | int8 seconds | int8 speed-up |",
            "|---|---|---|---|",
        ]
        for b in WIDTHS:
            f32, i8 = sw["results"][f"base{b}_fp32"], sw["results"][f"base{b}_int8"]
            sp = sw["speedup"][str(b)]
            lines.append(f"| {b} | {f32['median']:.2f} ({f32['min']:.2f}) | {i8['median']:.2f} "
                         f"({i8['min']:.2f}) | {sp['median']:.2f}x (best {sp['best']:.2f}x) |")
    return lines
