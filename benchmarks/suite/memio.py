"""Sections d (peak resident memory vs image size) and e (the I/O ceiling).

d reuses the issue-3 memory benchmark (``bench_memory``: ``cnnpipe run`` in a subprocess,
RSS of the whole process tree sampled, the peak of the sum) with a cheap model, so that
the pixel path (read windows, stitched units, Zarr chunks) is what uses memory.

e runs an identity model through ``cnnpipe run`` and, against it, the loop a user would
write to do the same I/O without cnnpipe: read each tile of the FITS image (astropy,
memmap), cast, and write the same Zarr arrays (same shape, chunks, dtypes, fill values
and codecs, copied from cnnpipe's store) with ``zarr`` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Timings, log, mib, ratio, rm, run_cnnpipe
from benchmarks.suite.assets import CHEAP_LEVELS, cheap_model, identity_segment_model
from benchmarks.suite.context import Context

__all__ = ["TARGET_GROWTH", "TARGET_IO", "markdown_d", "markdown_e", "run_d", "run_e",
           "targets_d", "targets_e"]

TARGET_GROWTH = 1.25
TARGET_IO = 0.5


def run_d(ctx: Context) -> dict[str, Any]:
    from benchmarks.run_issue3 import bench_memory

    s = ctx.settings
    model = cheap_model(ctx.work / "models" / "cheap.onnx")
    mem, _ = bench_memory(str(model), list(s.mem_sizes), tile=s.tile, patch=s.patch,
                          batch=s.batch, every_s=s.sample_ms / 1000, work=ctx.work,
                          keep_last=False)
    mem["model"] = (f"`level_model` from cnnpipe.testing.onnx_models (1x1 convolution + "
                    f"softmax, 3 classes split at {CHEAP_LEVELS[0]:g} and {CHEAP_LEVELS[1]:g} "
                    "counts, about 5 and 25 sky sigmas)")
    return mem


def targets_d(r: dict[str, Any]) -> list[dict[str, Any]]:
    sizes = list(r["images"])
    g = r["growth"]
    return [{"section": "d", "target": f"peak RSS {sizes[-1]}² / {sizes[0]}² <= "
             f"{TARGET_GROWTH}", "value": g, "met": g <= TARGET_GROWTH,
             "measured": f"{g:.2f}x ({mib(r['images'][sizes[0]]['peak_bytes'])} -> "
                         f"{mib(r['images'][sizes[-1]]['peak_bytes'])})"}]


def markdown_d(r: dict[str, Any]) -> list[str]:
    st = r["settings"]
    lines = [
        f"`cnnpipe run --device cpu --tile {st['tile']} --patch {st['patch']} --batch "
        f"{st['batch']}` in a subprocess (embedded cluster, default sizing) with the model "
        f"{r['model']}, on simulated sky images (float32, written in strips and deleted "
        f"after use). RSS of the whole process tree sampled every {st['sample_ms']:.0f} ms; "
        "the peak of the sum, and of its anonymous (not file-backed) part.",
        "",
        "| image | FITS size | peak RSS | anonymous at peak / file-backed | peak anonymous | "
        "processes | wall | Mpix/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, v in r["images"].items():
        sp = v["split_bytes"]
        lines.append(
            f"| {size}x{size} | {v['image_bytes'] / 1e6:,.0f} MB | **{mib(v['peak_bytes'])}** "
            f"| {mib(sp['RssAnon'] + sp['RssShmem'])} / {mib(sp['RssFile'])} | "
            f"{mib(v['peak_not_file_backed_bytes'])} | {v['max_processes']} | "
            f"{v['wall_s']:.0f} s | {int(size) ** 2 / 1e6 / v['wall_s']:.1f} |")
    lines += ["", f"Growth of the peak, largest / smallest: {r['growth']:.2f}x (anonymous "
              f"only: {r['growth_not_file_backed']:.2f}x)."]
    return lines


# -- e ---------------------------------------------------------------------------------


def _array_specs(store: str, group: str) -> dict[str, dict[str, Any]]:
    """Shape, chunks, dtype, fill value, dimension names and codecs of mask and prob."""
    import zarr

    out = {}
    for name in ("mask", "prob"):
        a = zarr.open_array(store, path=f"{group}/{name}", mode="r")
        out[name] = {"shape": a.shape, "chunks": a.chunks, "dtype": a.dtype,
                     "fill_value": a.fill_value, "compressors": a.compressors,
                     "filters": a.filters, "serializer": a.serializer,
                     "dimension_names": a.metadata.dimension_names}
    return out


def plain_loop(image: Path, out: Path, specs: dict[str, dict[str, Any]], tile: int) -> None:
    """Read every tile of ``image`` and write the identity model's arrays with zarr."""
    import zarr
    from astropy.io import fits

    root = zarr.open_group(out, mode="w")
    arrays = {name: root.create_array(name, config={"write_empty_chunks": False}, **spec)
              for name, spec in specs.items()}
    planes = specs["prob"]["shape"][0]
    with fits.open(image, memmap=True) as hdul:
        data = hdul[0].data
        ny, nx = data.shape
        for y0 in range(0, ny, tile):
            for x0 in range(0, nx, tile):
                px = np.asarray(data[y0:y0 + tile, x0:x0 + tile], dtype=np.float32)
                nodata = ~np.isfinite(px)
                mask = np.zeros(px.shape, np.uint8)
                mask[nodata] = 255
                prob = np.empty((planes, *px.shape), np.float16)
                with np.errstate(over="ignore"):  # stars above 65504: inf, as in the store
                    prob[:] = px
                prob[:, nodata] = np.nan
                arrays["mask"][y0:y0 + tile, x0:x0 + tile] = mask
                arrays["prob"][:, y0:y0 + tile, x0:x0 + tile] = prob


def _same(a: str, b: Path, group: str) -> bool:
    import zarr

    for name in ("mask", "prob"):
        x = zarr.open_array(a, path=f"{group}/{name}", mode="r")[...]
        y = zarr.open_array(str(b), path=name, mode="r")[...]
        if not np.array_equal(x, y, equal_nan=name == "prob"):
            return False
    return True


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_e(ctx: Context) -> dict[str, Any]:
    from cnnpipe.pipeline.runner import prepare

    s = ctx.settings
    image = ctx.sky(s.io_size, seed=5)
    model = identity_segment_model(ctx.work / "models" / "identity.onnx")
    cfg = ctx.run_config(image, model, "io_cnnpipe.zarr")
    plain_out = ctx.work / "io_plain.zarr"
    key = prepare(cfg).sources[0].key
    group = f"images/{key}/identity"
    log("e: untimed first runs of both sides (the arrays to copy, page cache, imports)")
    run_cnnpipe(cfg)
    specs = _array_specs(cfg.out, group)
    plain_loop(image, plain_out, specs, s.tile)
    t = Timings(ctx.meter)
    parts = []
    for rep in range(s.reps):
        log(f"e: rep {rep + 1}/{s.reps}")
        parts.append(t.measure("cnnpipe", lambda: run_cnnpipe(cfg)))
        t.measure("plain", lambda: plain_loop(image, plain_out, specs, s.tile))
    res = t.summary()
    identical = _same(cfg.out, plain_out, group)
    sizes = {"image": image.stat().st_size, "cnnpipe_store": _bytes(Path(cfg.out)),
             "plain_store": _bytes(plain_out)}
    rm(Path(cfg.out), plain_out)
    mpix = s.io_size**2 / 1e6
    for v in res.values():
        v["mpix_s"] = mpix / v["median"]
        v["read_mb_s"] = sizes["image"] / 1e6 / v["median"]
    return {"image": {"shape": [s.io_size, s.io_size], "mpix": mpix}, "tile": s.tile,
            "bytes": sizes, "results": res, "ratio": ratio(res, "plain", "cnnpipe"),
            "outputs_identical": identical,
            "worker_sums": {k: sorted(p[k] for p in parts)[len(parts) // 2] for k in parts[0]},
            "arrays": {n: {"chunks": list(v["chunks"]), "dtype": str(v["dtype"]),
                           "codecs": [repr(c) for c in (*v["filters"], v["serializer"],
                                                        *v["compressors"])]}
                       for n, v in specs.items()}}


def targets_e(r: dict[str, Any]) -> list[dict[str, Any]]:
    q = r["ratio"]["median"]
    return [{"section": "e", "target": f"plain numpy/zarr loop seconds / `cnnpipe run` "
             f"(identity model) seconds >= {TARGET_IO}", "value": q, "met": q >= TARGET_IO,
             "measured": f"{q:.2f} (best runs {r['ratio']['best']:.2f}; outputs identical: "
                         f"{'yes' if r['outputs_identical'] else 'NO'})"}]


def markdown_e(r: dict[str, Any]) -> list[str]:
    h, w = r["image"]["shape"]
    b, res = r["bytes"], r["results"]
    arrays = "; ".join(f"`{n}` {a['dtype']} chunks {a['chunks']} codecs "
                       f"{', '.join(a['codecs'])}" for n, a in r["arrays"].items())
    ws = r["worker_sums"]
    return [
        f"Image {h}x{w} float32 ({b['image'] / 1e6:,.0f} MB FITS), tile {r['tile']}. Both "
        f"sides write the same arrays: {arrays}. Outputs identical: "
        f"{'yes' if r['outputs_identical'] else 'NO'}. Seconds: median of interleaved runs "
        "(best).",
        "",
        "| side | what runs | seconds | Mpix/s | FITS MB/s | store |",
        "|---|---|---|---|---|---|",
        f"| **`cnnpipe run`, identity model** | end to end: cluster start, model checks, "
        f"FITS reads, identity inference, stitching, Zarr writes, empty catalog, ledger "
        f"(worker sums: read {ws['read_s']:.2f} s, infer {ws['infer_s']:.2f} s, write "
        f"{ws['write_s']:.2f} s) | {res['cnnpipe']['median']:.2f} "
        f"({res['cnnpipe']['min']:.2f}) | {res['cnnpipe']['mpix_s']:.1f} | "
        f"{res['cnnpipe']['read_mb_s']:.0f} | {b['cnnpipe_store'] / 1e6:,.0f} MB |",
        f"| plain loop | astropy memmap read per tile, float16 cast, `zarr` writes, one "
        f"thread | {res['plain']['median']:.2f} ({res['plain']['min']:.2f}) | "
        f"{res['plain']['mpix_s']:.1f} | {res['plain']['read_mb_s']:.0f} | "
        f"{b['plain_store'] / 1e6:,.0f} MB |",
        "",
        f"Plain / cnnpipe: {r['ratio']['median']:.2f} (best runs {r['ratio']['best']:.2f}).",
    ]
