"""Section h: CUDA and TensorRT providers, bare session with IOBinding vs ``cnnpipe run``.

Runs only where ``onnxruntime.get_available_providers()`` lists
``CUDAExecutionProvider``; elsewhere the section records why it did not run.

The bare side is the fastest way onnxruntime offers to push the same batches through
the same package: every batch (the plan's patches, padded to one fixed shape as the
engine does on a GPU) is uploaded to the device once, before timing, as an ``OrtValue``;
the timed loop binds it and a preallocated device output with IOBinding and calls
``run_with_iobinding``: no host copies at all.  The cnnpipe side is ``cnnpipe run
--device gpu`` (``--tensorrt`` for TensorRT) end to end and on an already running
one-GPU cluster.  GPU busy fraction: ``utilization.gpu`` (the share of time a kernel was
running) sampled every 100 ms by ``nvidia-smi`` (or pynvml) while a run is going.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Timings, build_batches, log, ratio, rm, run_cnnpipe
from benchmarks.suite.context import Context

__all__ = ["TARGET_BUSY", "TARGET_RATIO", "BusySampler", "markdown_h", "run_h", "targets_h"]

TARGET_RATIO = 0.85
TARGET_BUSY = 0.90
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


class BusySampler:
    """Samples GPU 0's ``utilization.gpu`` (%) every ``every_ms`` while in a ``with``.

    Each sample carries its wall-clock time (nvidia-smi's own ``timestamp``, so pipe
    buffering cannot shift it); :meth:`fraction` averages the samples inside a window.
    ``nvidia-smi -lms`` runs for the whole ``with`` block (its start-up stays out of the
    timed runs); pynvml where nvidia-smi is missing.
    """

    def __init__(self, every_ms: int = 100) -> None:
        self.every_ms = every_ms
        self.samples: list[tuple[float, float]] = []  # (time.time(), percent)
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self.tool = "nvidia-smi" if shutil.which("nvidia-smi") else (
            "pynvml" if _pynvml() is not None else "none")

    def __enter__(self) -> BusySampler:
        self.samples = []
        self._stop.clear()
        if self.tool == "nvidia-smi":
            cmd = ["nvidia-smi", "-i", "0", "--query-gpu=timestamp,utilization.gpu",
                   "--format=csv,noheader,nounits", f"-lms={self.every_ms}"]
            if shutil.which("stdbuf"):
                cmd = ["stdbuf", "-oL", *cmd]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        elif self.tool == "pynvml":
            self._thread = threading.Thread(target=self._poll_nvml, daemon=True)
        if self._thread is not None:
            self._thread.start()
        return self

    def _read_smi(self) -> None:
        from datetime import datetime

        stdout = self._proc.stdout if self._proc is not None else None
        for line in stdout or ():
            stamp, _, value = line.rpartition(",")
            try:  # e.g. "2026/11/21 17:39:42.123, 87" (local time)
                t = datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
                self.samples.append((t, float(value)))
            except ValueError:
                continue

    def _poll_nvml(self) -> None:
        nv = _pynvml()
        try:
            nv.nvmlInit()
            handle = nv.nvmlDeviceGetHandleByIndex(0)
            while not self._stop.wait(self.every_ms / 1000):
                gpu = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
                self.samples.append((time.time(), gpu))
        except nv.NVMLError as exc:  # no samples: the report says "no sampler"
            log(f"h: pynvml sampling stopped: {exc}")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def fraction(self, t0: float = -math.inf, t1: float = math.inf) -> float | None:
        """Mean utilisation / 100 of the samples taken between ``t0`` and ``t1``."""
        vals = [v for t, v in self.samples if t0 <= t <= t1]
        return float(np.mean(vals)) / 100 if vals else None


def _pynvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def gpu_name() -> str:
    if not shutil.which("nvidia-smi"):
        return "unknown (no nvidia-smi)"
    p = subprocess.run(["nvidia-smi", "-i", "0", "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader"], capture_output=True, text=True)
    return p.stdout.strip() or "unknown"


def _fixed(x: np.ndarray, n: int) -> np.ndarray:
    """Pad a short batch with zeros to ``n`` patches (one input shape per run)."""
    if len(x) == n:
        return x
    return np.concatenate([x, np.zeros((n - len(x), *x.shape[1:]), np.float32)])


def bare_iobinding(path: str, providers: list[Any], batches: list[np.ndarray], *, in_name: str,
                   out_name: str, device: str = "cuda") -> tuple[Any, Any]:
    """A session and a loop over pre-uploaded device batches with IOBinding.

    ``device`` 'cuda' for the GPU; 'cpu' runs the same code on the CPU provider (used to
    test this benchmark on machines without a GPU).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, sess_options=so, providers=providers)
    if device == "cuda" and CUDA not in sess.get_providers():
        msg = f"CUDA is not active in the bare session (providers {sess.get_providers()})"
        raise RuntimeError(msg)
    inputs = [ort.OrtValue.ortvalue_from_numpy(x, device, 0) for x in batches]
    shape = sess.run([out_name], {in_name: batches[0]})[0].shape  # every batch: one shape
    out = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, device, 0)
    io = sess.io_binding()
    io.bind_ortvalue_output(out_name, out)

    def loop() -> None:
        for v in inputs:
            io.bind_ortvalue_input(in_name, v)
            sess.run_with_iobinding(io)
        io.synchronize_outputs()

    return sess, loop


def run_h(ctx: Context, *, on_cpu: bool = False) -> dict[str, Any]:
    import onnxruntime as ort

    from cnnpipe.pipeline.runner import prepare
    from cnnpipe.pipeline.worker import providers_for

    avail = list(ort.get_available_providers())
    if CUDA not in avail and not on_cpu:
        return {"run": False, "reason": "not run: no CUDA provider on this machine "
                f"(onnxruntime {ort.__version__} providers: {', '.join(avail)})"}
    from distributed import LocalCluster

    s, unet = ctx.settings, ctx.unet()
    image = ctx.sky(s.gpu_size)
    device, dev_arg = ("cpu", "cpu") if on_cpu else ("cuda", "gpu")
    cfg = ctx.run_config(image, unet.fp32, "gpu.zarr", device=dev_arg, batch=s.gpu_batch,
                         tile=s.gpu_tile)
    prep = prepare(cfg)
    bt = build_batches(prep)
    meta = prep.jobs[0].meta
    batches = [_fixed(x, s.gpu_batch) for x in bt.norm]
    sides: dict[str, tuple[Any, Any]] = {}  # key -> (bare loop, cnnpipe config)
    name, opts = providers_for("gpu", False, avail)[0]
    cuda = (name, dict(opts))  # cnnpipe's CUDA options (exhaustive cuDNN search)
    provs: list[Any] = (["CPUExecutionProvider"] if on_cpu
                        else [cuda, "CPUExecutionProvider"])
    _, loop = bare_iobinding(str(unet.fp32), provs, batches, in_name=meta.input.name,
                             out_name=meta.output.name, device=device)
    sides["cuda"] = (loop, cfg)
    trt_info: dict[str, Any] = {"available": TENSORRT in avail}
    if TENSORRT in avail and not on_cpu:
        cn = dict(providers_for("gpu", True, avail)[0][1])
        trt_info["cnnpipe_options"] = cn
        trt_info["cnnpipe_fp16"] = cn.get("trt_fp16_enable", "False") in ("True", "1", True)
        fp16 = {**cn, "trt_fp16_enable": "True",
                "trt_engine_cache_path": str(ctx.work / "trt-cache-fp16")}
        for key, trt in (("trt_cnnpipe_options", cn), ("trt_fp16", fp16)):
            _, lp = bare_iobinding(str(unet.fp32), [(TENSORRT, trt), *provs], batches,
                                   in_name=meta.input.name, out_name=meta.output.name)
            # fp16 is a bare row only, compared with the same `cnnpipe run --tensorrt`
            sides[key] = (lp, replace(cfg, tensorrt=True) if key == "trt_cnnpipe_options"
                          else None)
    sampler = BusySampler()
    busy: dict[str, list[float]] = {}
    t = Timings(ctx.meter)

    def sampled(key: str, fn: Any) -> None:
        window: list[float] = []

        def run() -> None:  # the window leaves out the Meter's wait for quiet
            window.append(time.time())
            fn()
            window.append(time.time())

        t.measure(key, run)
        f = sampler.fraction(*window)
        if f is not None:
            busy.setdefault(key, []).append(f)

    resources = None if on_cpu else {"GPU": 1}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, resources=resources,
                      dashboard_address=None, silence_logs=40) as cluster:
        log("h: untimed warm-up (cuDNN algorithm search, TensorRT engine builds)")
        warm = {}
        for key, (loop, c) in sides.items():
            loop()
            if c is None:
                continue
            warm[key] = replace(c, scheduler=cluster.scheduler_address,
                                out=str(ctx.work / f"gpu_warm_{key}.zarr"))
            run_cnnpipe(warm[key])  # the running cluster's sessions: needed in every mode
            if not s.quick:
                run_cnnpipe(c)
        with sampler:
            for rep in range(s.reps):
                log(f"h: rep {rep + 1}/{s.reps}")
                for key, (loop, c) in sides.items():
                    sampled(f"{key}:bare", loop)
                    if c is not None:
                        sampled(f"{key}:warm", lambda w=warm[key]: run_cnnpipe(w))
                        sampled(f"{key}:e2e", lambda c=c: run_cnnpipe(c))
    for key, (_, c) in sides.items():
        if c is not None:
            rm(ctx.work / f"gpu_warm_{key}.zarr", Path(c.out))
    res = t.summary()
    mpix = s.gpu_size**2 / 1e6
    for key, v in res.items():
        v["mpix_s"] = mpix / v["median"]
        v["busy"] = float(np.median(busy[key])) if busy.get(key) else None
    # bare / cnnpipe; TensorRT fp16 (bare only) against `cnnpipe run --tensorrt`
    ratios = {f"{k}:{row}": ratio(res, f"{k}:bare",
                                  f"{k if c is not None else 'trt_cnnpipe_options'}:{row}")
              for k, (_, c) in sides.items() for row in ("warm", "e2e")}
    return {"run": True, "on_cpu_test": on_cpu,
            "device": "CPU provider (test of the benchmark code)" if on_cpu else gpu_name(),
            "providers": avail, "onnxruntime": ort.__version__, "sampler": sampler.tool,
            "image": {"shape": [s.gpu_size, s.gpu_size], "mpix": mpix}, "batch": s.gpu_batch,
            "tile": s.gpu_tile, "patch": list(bt.patch),
            "patches": bt.n_patches, "batches": len(batches), "tensorrt": trt_info,
            "results": res, "ratios": ratios, "cuda_visible": os.environ.get(
                "CUDA_VISIBLE_DEVICES")}


def targets_h(r: dict[str, Any]) -> list[dict[str, Any]]:
    if not r.get("run") or r.get("on_cpu_test"):
        why = r.get("reason", "not run: section h ran on the CPU provider (a test of the "
                    "benchmark code, not GPU figures)")
        return [{"section": "h", "target": f"`cnnpipe run --device gpu` / bare CUDA session "
                 f"(IOBinding) >= {TARGET_RATIO}; GPU busy >= {TARGET_BUSY:.0%}",
                 "value": None, "met": None, "measured": why}]
    out = []
    for key, label in (("cuda", "CUDA"), ("trt_cnnpipe_options", "TensorRT"),
                       ("trt_fp16", "TensorRT fp16")):
        if f"{key}:e2e" not in r["ratios"]:
            continue
        q, w = r["ratios"][f"{key}:e2e"]["median"], r["ratios"][f"{key}:warm"]["median"]
        cnn = "trt_cnnpipe_options" if key == "trt_fp16" else key
        busy = r["results"][f"{cnn}:e2e"]["busy"]
        out.append({"section": "h", "target": f"{label}: `cnnpipe run --device gpu` end to "
                    f"end / bare session (IOBinding) >= {TARGET_RATIO}", "value": q,
                    "met": q >= TARGET_RATIO,
                    "measured": f"{q:.2f} (running cluster {w:.2f}) on {r['device']}"})
        if key != "trt_fp16":  # its cnnpipe run is TensorRT's
            out.append({"section": "h", "target": f"{label}: GPU busy during `cnnpipe run` "
                        f">= {TARGET_BUSY:.0%}", "value": busy,
                        "met": None if busy is None else busy >= TARGET_BUSY,
                        "measured": "no sampler" if busy is None else f"{busy:.0%}"})
    return out


def markdown_h(r: dict[str, Any]) -> list[str]:
    if not r.get("run"):
        return [r["reason"] + "."]
    h, w = r["image"]["shape"]
    lines = [
        f"Device: {r['device']}; onnxruntime {r['onnxruntime']} ({', '.join(r['providers'])})."
        f" Image {h}x{w}, tile {r.get('tile', '?')}: {r['patches']} patches of "
        f"{'x'.join(map(str, r.get('patch', ['?'])))} in {r['batches']} batches of "
        f"{r['batch']} (fixed shape). Busy = mean `utilization.gpu` sampled by "
        f"{r['sampler']} every 100 ms during the run (median over runs).",
    ]
    if r["on_cpu_test"]:
        lines.append("**Test run on the CPU provider: these are not GPU figures.**")
    ti = r["tensorrt"]
    if ti.get("available") and not r["on_cpu_test"]:
        lines.append(f"cnnpipe's TensorRT options: {ti['cnnpipe_options']} (fp16 "
                     f"{'on' if ti['cnnpipe_fp16'] else 'off'}); the `TensorRT fp16` row is "
                     "a bare session with `trt_fp16_enable` added, its ratio against the "
                     "same `cnnpipe run --tensorrt`.")
    lines += ["", "| provider | side | seconds | Mpix/s | / bare | GPU busy |",
              "|---|---|---|---|---|---|"]
    names = {"cuda": "CPU provider (test)" if r["on_cpu_test"] else "CUDA",
             "trt_cnnpipe_options": "TensorRT", "trt_fp16": "TensorRT fp16"}
    sides = {"bare": "bare session, IOBinding, pre-uploaded", "warm":
             "`cnnpipe run`, running cluster", "e2e": "**`cnnpipe run` end to end**"}
    for key, name in names.items():
        for row, label in sides.items():
            v = r["results"].get(f"{key}:{row}")
            if v is None:
                continue
            q = "1.00" if row == "bare" else f"{r['ratios'][f'{key}:{row}']['median']:.2f}"
            if key == "trt_fp16":  # bare only: its ratios are against cnnpipe's TensorRT
                q = (f"cnnpipe --tensorrt: end to end {r['ratios'][f'{key}:e2e']['median']:.2f}"
                     f", running cluster {r['ratios'][f'{key}:warm']['median']:.2f}")
            busy = "" if v["busy"] is None else f"{v['busy']:.0%}"
            lines.append(f"| {name} | {label} | {v['median']:.2f} ({v['min']:.2f}) | "
                         f"{v['mpix_s']:.1f} | {q} | {busy} |")
    return lines
