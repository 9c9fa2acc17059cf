"""Helpers shared by the benchmarks (``run_issue3`` and the suite, ``python -m benchmarks``).

Machine and code description, CPU-noise accounting on a shared machine (:class:`Meter`),
simulated images, the engine's exact patches (:func:`build_batches`), and the peak
resident memory of a process tree (:func:`peak_rss`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil  # a dependency of distributed

REPO = Path(__file__).resolve().parent.parent


# -- description and noise -------------------------------------------------------------


def tool_parser(doc: str | None, *, size: int) -> argparse.ArgumentParser:
    """The options every single-purpose tool shares (lanes, pairs, unit_cost).

    ``--model`` (the bundled demo_segment), ``--size`` of its simulated sky and
    ``--out`` (the folder of its JSON).
    """
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "src/cnnpipe/models/demo_segment.onnx"))
    ap.add_argument("--size", type=int, default=size)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return ap


def auto_int(text: str) -> int | None:
    """argparse type of ``--patch`` / ``--batch``: ``auto`` (None) or a positive integer."""
    if text.strip().lower() == "auto":
        return None
    value = int(text)
    if value < 1:
        msg = f"expected 'auto' or an integer >= 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def cli_value(value: int | None) -> str:
    """``--patch`` / ``--batch`` value for a ``cnnpipe run`` command line."""
    return "auto" if value is None else str(value)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def version(mod: str) -> str:
    try:
        return str(__import__(mod).__version__)
    except Exception:
        return "n/a"


def code_state() -> dict[str, Any]:
    """The commit and a digest of the engine's source files (edits during a run show)."""
    import hashlib

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "n/a"

    h = hashlib.sha256()
    for folder in ("pipeline", "src/cnnpipe"):
        for f in sorted((REPO / folder).rglob("*.py")):
            h.update(f.relative_to(REPO).as_posix().encode())
            h.update(f.read_bytes())
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty_engine_files": git("status", "--porcelain", "--", "pipeline",
                                      "src/cnnpipe").splitlines(),
            "sources_sha256": h.hexdigest()[:16]}


def machine(extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """CPU model, cores, memory, platform and package versions (plus ``extra`` modules)."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {m: version(m) for m in (
            "cnnpipe", "onnxruntime", "numpy", "dask", "distributed", "zarr", "astropy",
            *extra)},
        "cpu_flags": cpu_flags(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def cpu_flags() -> list[str]:
    """The SIMD features that decide onnxruntime's kernels (AVX-512, VNNI, AMX)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return []
    return [w for w in wanted if w in flags]


def cpu_mark() -> tuple[float, float, float]:
    """(wall, busy CPU seconds of the machine, CPU seconds of this benchmark's processes).

    Ours: this process, its reaped children, and every live descendant (a running Dask
    worker, a ``cnnpipe run`` subprocess and its workers).
    """
    c = psutil.cpu_times()
    busy = c.user + c.system + sum(getattr(c, k, 0.0) for k in ("nice", "irq", "softirq"))
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    for p in psutil.Process().children(recursive=True):
        try:
            ct = p.cpu_times()
        except psutil.Error:
            continue
        own += ct.user + ct.system + ct.children_user + ct.children_system
    return time.monotonic(), busy, own


def others_cores(mark: tuple[float, float, float]) -> float:
    """Mean number of cores that processes outside this benchmark used since ``mark``."""
    now = cpu_mark()
    return max(0.0, ((now[1] - mark[1]) - (now[2] - mark[2])) / max(now[0] - mark[0], 1e-9))


def stats(xs: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def rm(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def write_image(path: Path, size: int, *, seed: int) -> list[Path]:
    """A simulated one-band sky image (no chip gaps: every unit has data); its files."""
    from cnnpipe.testing.sky import make_sky_catalog, write_sky

    t0 = time.perf_counter()
    files = write_sky(make_sky_catalog(size, seed=seed, gaps=False), path, overwrite=True)
    log(f"wrote {path.name} ({size}x{size}) in {time.perf_counter() - t0:.1f} s")
    return [*files.images, files.mask, files.truth]


def resolve_model(given: str | None, work: Path) -> tuple[str, str]:
    """The benchmark model: --model, else bundled demo_segment, else an exported U-Net."""
    if given:
        return str(Path(given).resolve()), f"given ({given})"
    from cnnpipe.models import demo_model_paths

    bundled = demo_model_paths().get("demo_segment")
    if bundled is not None:
        return str(bundled), "bundled demo_segment"
    out = work / "segment_unet.onnx"
    if not out.exists() and importlib.util.find_spec("torch") is not None:
        log("no bundled demo_segment: exporting segment_unet (random weights) once ...")
        subprocess.run(
            [sys.executable, "-m", "cnnpipe", "-q", "export", "segment_unet", "--bands", "r",
             "--out", str(out), "--normalisation", "asinh:scale=30,offset=100"],
            check=True, cwd=work,
        )
    if out.exists():
        return str(out), ("segment_unet exported with random weights (same architecture "
                          "and cost as demo_segment)")
    from cnnpipe.testing.onnx_models import segment_model

    tiny = work / "tiny_segment.onnx"
    segment_model(tiny)
    return str(tiny), "tiny testing segment_model (no torch, no bundled model): NOT the U-Net"


# -- the engine's patches, sessions, timing -----------------------------------------


@dataclass
class Batches:
    """The exact batches the engine runs for one image and model, built outside timing."""

    raw: list[np.ndarray] = field(default_factory=list)  # (n, c, py, px) float32
    norm: list[np.ndarray] = field(default_factory=list)
    # (unit, inference region, read-window pixels, read-window origin)
    units: list[tuple[Any, Any, np.ndarray, tuple[int, int]]] = field(default_factory=list)
    n_patches: int = 0
    patch: tuple[int, int] = (0, 0)


def _region(g: Any, unit: Any, shape: tuple[int, int]) -> Any:
    """The engine's inference region of a unit (the unit itself in older engines)."""
    from cnnpipe.pipeline import plan

    fn = getattr(plan, "infer_region", None)
    return unit if fn is None else fn(g, unit, shape)


def _read_window(unit: Any, g: Any, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    from cnnpipe.pipeline.plan import read_window

    try:
        return read_window(unit, [g], shape=shape)
    except TypeError:  # an engine whose read_window takes no shape
        return read_window(unit, [g])


def batch_size(prep: Any) -> int:
    """Patches per call of the run's one model (engines before ``--batch auto``: config)."""
    return int(getattr(prep.jobs[0].geometry, "batch", None) or prep.config.batch)


def build_batches(prep: Any) -> Batches:
    """Reproduce the engine's patches: plan units, read windows, spans, batches, normalise."""
    from cnnpipe.normalise import normalise

    (source,), (job,) = prep.sources, prep.jobs
    ch = list(prep.channels[source.key][0])
    g, meta, batch = job.geometry, job.meta, batch_size(prep)
    out = Batches(patch=g.patch)
    for unit in prep.plan.images[0].units():
        ry0, ry1, rx0, rx1 = _read_window(unit, g, source.shape)
        pixels = source.read_window(ry0, ry1, rx0, rx1)[ch]
        region = _region(g, unit, source.shape)
        out.units.append((unit, region, pixels, (ry0, rx0)))
        py, px = g.patch
        patches = [(a, b) for a in g.spans(0, region.y0, region.y1)
                   for b in g.spans(1, region.x0, region.x1)]
        for i in range(0, len(patches), batch):
            x = np.stack([pixels[:, a.start - ry0:a.start - ry0 + py,
                                 b.start - rx0:b.start - rx0 + px]
                          for a, b in patches[i:i + batch]])
            out.raw.append(x)
            out.norm.append(normalise(x, meta.normalisation))
        out.n_patches += len(patches)
    if out.n_patches != prep.plan.n_patches:
        msg = f"rebuilt {out.n_patches} patches, the plan says {prep.plan.n_patches}"
        raise RuntimeError(msg)
    return out


def ort_session(path: str, threads: int, *, spinning: bool | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Meter:
    """Times measurements on a shared machine: waits for quiet first, records the noise.

    Before each measurement it waits (at most ``budget_s`` over the whole benchmark)
    until other processes use less than ``quiet_cores`` cores over one second, and it
    records how many cores they used during the measurement itself.
    """

    def __init__(self, *, quiet_cores: float, budget_s: float) -> None:
        self.quiet_cores = quiet_cores
        self.budget_s = budget_s
        self.waited_s = 0.0

    def wait_quiet(self) -> None:
        while self.waited_s < self.budget_s:
            mark = cpu_mark()
            time.sleep(1.0)
            if others_cores(mark) < self.quiet_cores:
                return
            self.waited_s += 1.0

    def measure(self, fn: Callable[[], Any]) -> tuple[float, float, Any]:
        """``(seconds, other processes' mean cores during it, fn's result)``."""
        self.wait_quiet()
        mark = cpu_mark()
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        return dt, others_cores(mark), out


class Stages:
    """Wall and process-CPU seconds (all threads, onnxruntime's included) per stage."""

    def __init__(self) -> None:
        self.t: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            acc = self.t.setdefault(name, [0.0, 0.0])
            acc[0] += time.perf_counter() - w
            acc[1] += time.process_time() - c


class Collector:
    """A cnnpipe Reporter that keeps every UnitResult (worker-side timings)."""

    def __init__(self) -> None:
        self.results: list[Any] = []
        self.t_first: float | None = None

    def start(self, *, total: int, skipped: int) -> None:
        self.t_start = time.perf_counter()

    def advance(self, result: Any) -> None:
        if self.t_first is None:
            self.t_first = time.perf_counter()
        self.results.append(result)

    def close(self) -> None:
        pass

    def breakdown(self) -> dict[str, float]:
        return {
            "read_s": sum(r.read_s for r in self.results),
            "infer_s": sum(r.infer_s for r in self.results),
            "write_s": sum(r.write_s for r in self.results),
            "units": len(self.results),
        }



class Timings:
    """Interleaved repetitions of several timed rows, each measured through a :class:`Meter`."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.rows: dict[str, list[float]] = {}
        self.noise: dict[str, list[float]] = {}

    def measure(self, key: str, fn: Callable[[], Any]) -> Any:
        """Time ``fn`` as one run of row ``key``; return its result."""
        dt, others, out = self.meter.measure(fn)
        self.rows.setdefault(key, []).append(dt)
        self.noise.setdefault(key, []).append(others)
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per row: median, min, max, runs, and other processes' cores per run."""
        out = {}
        for key, xs in self.rows.items():
            v = stats(xs)
            v["others_cores"] = self.noise[key]
            v["others_cores_in_best"] = self.noise[key][xs.index(v["min"])]
            out[key] = v
        return out


def ratio(res: dict[str, dict[str, Any]], num: str, den: str) -> dict[str, float]:
    """``num`` seconds / ``den`` seconds, median over median and best over best."""
    return {"median": res[num]["median"] / res[den]["median"],
            "best": res[num]["min"] / res[den]["min"]}


def quiet_logging() -> None:
    """Only warnings from Dask (it configures its loggers on import)."""
    import logging

    import distributed  # noqa: F401

    logging.basicConfig(level=logging.WARNING)
    for name in ("distributed", "distributed.scheduler", "distributed.nanny",
                 "distributed.core", "distributed.worker", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_cnnpipe(cfg: Any) -> dict[str, float]:
    """``cnnpipe run`` in this process (``run(RunConfig)``); worker-side timing sums.

    The in-process worker's session cache is cleared first: every run creates its
    onnxruntime session, as a new ``cnnpipe run`` process does.
    """
    from cnnpipe.pipeline.runner import run
    from cnnpipe.pipeline.worker import clear_sessions

    clear_sessions()
    col = Collector()
    summary = run(cfg, reporter=col)
    if summary.status != "complete":
        msg = f"cnnpipe run did not complete: {summary}"
        raise RuntimeError(msg)
    return col.breakdown()


def engine_probs(prep: Any, session: Any) -> np.ndarray:
    """The engine's stitched float32 output of the whole image, computed in this process.

    Per work unit exactly what a worker does before storing: read the unit's window
    from the FITS file, ``infer_unit`` (normalise, fixed-shape batches, ``session.run``,
    activate, halo-cropped stitching) over its inference region; no Dask, no Zarr, no
    float16 cast.  Returns ``(channels, y, x)`` float32 (one image, one model).
    """
    from cnnpipe.pipeline.heads import head_for
    from cnnpipe.pipeline.worker import infer_unit

    (source,), (job,) = prep.sources, prep.jobs
    ch = list(prep.channels[source.key][0])
    g, meta, batch = job.geometry, job.meta, batch_size(prep)
    in_name, out_name = meta.input.name, meta.output.name
    static = session.get_inputs()[0].shape[0]
    fixed = isinstance(static, int)
    if fixed:
        batch = static

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([out_name], {in_name: x})[0])

    out = np.full((head_for(meta).channels, *source.shape), np.nan, np.float32)
    for unit in prep.plan.images[0].units():
        ry0, ry1, rx0, rx1 = _read_window(unit, g, source.shape)
        pixels = source.read_window(ry0, ry1, rx0, rx1)[ch]
        region = _region(g, unit, source.shape)
        acc, _ = infer_unit(pixels, (ry0, rx0), region, meta, g, run, batch=batch,
                            fixed_batch=fixed)
        out[:, unit.y0:unit.y1, unit.x0:unit.x1] = acc[
            :, unit.y0 - region.y0:unit.y1 - region.y0, unit.x0 - region.x0:unit.x1 - region.x0]
    return out

# -- peak resident memory of a process tree -------------------------------------------


def status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def role_of(p: psutil.Process, root: int) -> str:
    if p.pid == root:
        return "client (+scheduler, nanny)"
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "other"
    if "resource_tracker" in cmd:
        return "resource tracker"
    if "multiprocessing" in cmd or "spawn" in cmd:
        return "worker"
    return "other"


def peak_rss(cmd: list[str], *, every_s: float, log_path: Path) -> dict[str, Any]:
    """Run ``cmd``; sample the summed RSS of its process tree every ``every_s``.

    RSS per process is ``RssAnon + RssFile + RssShmem`` from ``/proc/PID/status`` (the
    same as psutil's ``rss``), kept split so that file-backed pages (a memmapped FITS
    file) can be told apart from allocated memory.  ``series`` holds, per second, the
    largest sample: ``[t_s, total, client, workers, file_backed]`` in MiB.
    """
    roles: dict[int, str] = {}
    best: dict[str, Any] = {"total": 0}
    peak_anon = 0
    series: dict[int, list[float]] = {}
    n = n_procs = 0
    with open(log_path, "w") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            t = time.perf_counter() - t0
            total = client = file_b = 0
            per = []
            for p in procs:
                st = status_kib(p.pid)
                if not st:
                    continue
                if p.pid not in roles:
                    roles[p.pid] = role_of(p, proc.pid)
                rss = 1024 * sum(st.values())
                total += rss
                file_b += 1024 * st.get("RssFile", 0)
                client += rss if p.pid == proc.pid else 0
                per.append((roles[p.pid], rss, st))
            n += 1
            n_procs = max(n_procs, len(per))
            if total > best["total"]:
                best = {"total": total, "t_s": t, "per": per}
            peak_anon = max(peak_anon, total - file_b)
            row = [round(t, 2), total / 2**20, client / 2**20, (total - client) / 2**20,
                   file_b / 2**20]
            if int(t) not in series or series[int(t)][1] < row[1]:
                series[int(t)] = [round(v, 1) for v in row]
            time.sleep(every_s)
        rc = proc.wait()
        wall = time.perf_counter() - t0
    if rc:
        msg = f"{' '.join(cmd)} exited {rc}; see {log_path}"
        raise RuntimeError(msg)
    by_role: dict[str, int] = {}
    split = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0}
    for role, rss, st in best.get("per", []):
        by_role[role] = by_role.get(role, 0) + rss
        for k, v in st.items():
            split[k] += v * 1024
    return {"peak_bytes": best["total"], "peak_at_s": best.get("t_s"), "by_role": by_role,
            "peak_not_file_backed_bytes": peak_anon,
            "split_bytes": split, "samples": n, "max_processes": n_procs, "wall_s": wall,
            "series_mib": [series[k] for k in sorted(series)]}


# -- report helpers ------------------------------------------------------------------


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def ok(flag: bool) -> str:
    return "**met**" if flag else "**MISSED**"
