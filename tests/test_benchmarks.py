"""The benchmark suite (``python -m benchmarks``): its quick mode runs and reports everything.

The smoke runs take one to two minutes on 2 cores (marked ``slow``); the sampler and
report checks are fast.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SECTIONS = "abcdefgh"


def _suite(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--workdir",
           str(tmp_path / "work"), *args]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    stem = "suite-quick" + (f"-{args[args.index('--only') + 1].replace(',', '')}"
                            if "--only" in args else "")
    return (json.loads((out / f"{stem}.json").read_text()),
            (out / f"{stem}.md").read_text())


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


@pytest.mark.slow
def test_quick_suite_reports_every_section(tmp_path: Path) -> None:
    import onnxruntime as ort

    data, md = _suite(tmp_path)
    assert data["mode"] == "quick"
    assert list(data["sections"]) == list(SECTIONS)
    for letter, sec in data["sections"].items():
        assert "error" not in sec, (letter, sec.get("error"))
    for key in ("cpu_model", "cores", "memory_gib", "versions"):
        assert data["machine"][key]
    assert data["command"].startswith("python -m benchmarks --quick")
    assert data["code_at_start"]["commit"]

    s = data["sections"]
    # every timed row of every section holds positive seconds
    for letter in "abcefg":
        for row, v in s[letter]["results"].items():
            assert _finite(v["median"]), (letter, row)
            assert v["median"] > 0, (letter, row)
    assert s["a"]["results"]["e2e"]["ratio_to_bare"] > 0
    # tiled inference equals whole-image inference in the interior; MONAI's blend does not
    acc = s["b"]["accuracy"]
    assert acc["cnnpipe engine float32"]["interior_max_abs"] < 1e-4
    assert acc["cnnpipe store float16"]["interior_max_abs"] < 2e-3
    assert acc["MONAI sliding_window_inference"]["interior_max_abs"] > 1e-3
    assert s["b"]["speedup"]["median"] > 0
    assert s["c"]["speedup"]["median"] > 0
    # memory: one peak per image size, and their ratio
    assert [int(k) for k in s["d"]["images"]] == [1024, 2048]
    assert all(v["peak_bytes"] > 50 * 2**20 for v in s["d"]["images"].values())
    assert _finite(s["d"]["growth"])
    # the plain loop writes exactly what cnnpipe writes
    assert s["e"]["outputs_identical"] is True
    v = s["f"]["variants"]
    assert v["fp32"]["mask_agreement"] == 1.0
    assert 0.9 < v["int8"]["mask_agreement"] <= 1.0
    assert any(op.startswith("QLinear") or op.endswith("Integer")
               for op in v["int8"]["optimized_ops"])
    assert s["g"]["plan"]["make_plan"]["tasks"] == 49 * 49  # 100000² in 2048² units
    assert s["g"]["plan"]["cli_sparse"]["tasks"] == 49 * 49
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert s["h"]["run"] is True
    else:
        assert s["h"]["run"] is False
        assert s["h"]["reason"].startswith("not run: no CUDA provider on this machine")

    rows = data["targets"]
    assert {r["section"] for r in rows} == set(SECTIONS)
    for r in rows:
        if r["met"] is not None:
            assert _finite(r["value"]), r
    assert "## Targets" in md
    assert "| | target | measured | |" in md
    for letter in SECTIONS:
        assert f"\n## {letter}) " in md
    assert "Quick mode" in md


@pytest.mark.slow
def test_gpu_section_code_runs_on_the_cpu_provider(tmp_path: Path) -> None:
    data, md = _suite(tmp_path, "--only", "h", "--h-on-cpu", "--reps", "1")
    h = data["sections"]["h"]
    assert h["run"] is True
    assert h["on_cpu_test"] is True
    for row in ("cuda:bare", "cuda:warm", "cuda:e2e"):
        assert h["results"][row]["median"] > 0
    (t,) = data["targets"]
    assert t["met"] is None
    assert t["measured"].startswith("not run")
    assert "not GPU figures" in md


@pytest.fixture
def suite_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))


@pytest.mark.usefixtures("suite_on_path")
def test_busy_sampler_reads_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.suite.gpu import BusySampler

    fake = tmp_path / "nvidia-smi"  # prints "timestamp, utilization.gpu" lines as -lms does
    fake.write_text('#!/bin/sh\nwhile true; do for v in 80 100; do\n'
                    '  echo "$(date +"%Y/%m/%d %H:%M:%S.%3N"), $v"; sleep 0.02; done; done\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    sampler = BusySampler()
    assert sampler.tool == "nvidia-smi"
    with sampler:
        time.sleep(0.2)
        t0 = time.time()
        time.sleep(0.4)
        t1 = time.time()
        time.sleep(0.1)
    inside = [v for t, v in sampler.samples if t0 <= t <= t1]
    assert len(inside) >= 4
    assert set(inside) == {80.0, 100.0}
    assert sampler.fraction(t0, t1) == pytest.approx(0.9, abs=0.06)
    assert sampler.fraction(t1 + 60, t1 + 61) is None
    assert all(t0 - 1 < t < t1 + 1 for t, _ in sampler.samples)


@pytest.mark.usefixtures("suite_on_path")
def test_targets_and_settings() -> None:
    from benchmarks.suite.context import Settings
    from benchmarks.suite.report import targets

    quick = Settings.for_mode(quick=True, reps=3)
    assert (quick.size, quick.reps, quick.mem_sizes) == (1024, 3, (1024, 2048))
    assert quick.a_reps == 1
    full = Settings.for_mode(quick=False)
    assert full.mem_sizes == (4096, 8192, 16384, 32768)
    assert full.size == 4096
    assert (full.reps, full.a_reps) == (3, 5)
    assert (full.patch, full.batch) == (None, None)  # cnnpipe's auto, on both sides
    assert Settings.for_mode(quick=False, a_reps=7).a_reps == 7
    rows = targets({"e": {"error": "RuntimeError: boom"},
                    "h": {"run": False, "reason": "not run: no CUDA provider on this machine"},
                    "d": {"images": {"1024": {"peak_bytes": 100 * 2**20},
                                     "2048": {"peak_bytes": 130 * 2**20}}, "growth": 1.3}})
    assert [(r["section"], r["met"]) for r in rows] == [("e", False), ("h", None), ("d", False)]
    assert rows[0]["measured"] == "error: RuntimeError: boom"


@pytest.mark.usefixtures("suite_on_path")
def test_gpu_report_with_tensorrt_rows() -> None:
    from benchmarks.common import ratio
    from benchmarks.suite.gpu import markdown_h, targets_h

    def row(sec: float, busy: float | None) -> dict[str, Any]:
        return {"median": sec, "min": sec, "mpix_s": 268 / sec, "busy": busy}

    res = {"cuda:bare": row(2.0, 0.99), "cuda:warm": row(2.5, 0.8), "cuda:e2e": row(4.0, 0.5),
           "trt_cnnpipe_options:bare": row(1.0, 0.99),
           "trt_cnnpipe_options:warm": row(1.1, 0.95),
           "trt_cnnpipe_options:e2e": row(1.25, 0.93), "trt_fp16:bare": row(0.5, 0.98)}
    ratios = {"cuda:warm": ratio(res, "cuda:bare", "cuda:warm"),
              "cuda:e2e": ratio(res, "cuda:bare", "cuda:e2e"),
              "trt_cnnpipe_options:warm": ratio(res, "trt_cnnpipe_options:bare",
                                                "trt_cnnpipe_options:warm"),
              "trt_cnnpipe_options:e2e": ratio(res, "trt_cnnpipe_options:bare",
                                               "trt_cnnpipe_options:e2e"),
              "trt_fp16:warm": ratio(res, "trt_fp16:bare", "trt_cnnpipe_options:warm"),
              "trt_fp16:e2e": ratio(res, "trt_fp16:bare", "trt_cnnpipe_options:e2e")}
    r = {"run": True, "on_cpu_test": False, "device": "NVIDIA H100, 580.1, 81559 MiB",
         "providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
         "onnxruntime": "1.31.1", "sampler": "nvidia-smi",
         "image": {"shape": [16384, 16384], "mpix": 268.4}, "batch": 32, "patches": 1600,
         "batches": 50, "results": res, "ratios": ratios,
         "tensorrt": {"available": True, "cnnpipe_options": {"trt_engine_cache_enable": "True"},
                      "cnnpipe_fp16": False}}
    rows = {(t["target"].split(":")[0], "busy" if "busy" in t["target"] else "ratio"): t
            for t in targets_h(r)}
    assert rows[("CUDA", "ratio")]["value"] == pytest.approx(0.5)
    assert rows[("CUDA", "ratio")]["met"] is False
    assert rows[("TensorRT", "ratio")]["value"] == pytest.approx(0.8)
    assert rows[("TensorRT", "busy")]["value"] == pytest.approx(0.93)
    assert rows[("TensorRT", "busy")]["met"] is True
    assert rows[("TensorRT fp16", "ratio")]["value"] == pytest.approx(0.4)
    assert ("TensorRT fp16", "busy") not in rows
    md = "\n".join(markdown_h(r))
    assert "| TensorRT fp16 | bare session, IOBinding, pre-uploaded | 0.50 (0.50) |" in md
    assert "cnnpipe --tensorrt: end to end 0.40, running cluster 0.45" in md
    assert "| CUDA | **`cnnpipe run` end to end** | 4.00 (4.00) | 67.0 | 0.50 | 50% |" in md


@pytest.mark.parametrize(("tool", "args"), [
    ("lanes", ["--size", "1024", "--reps", "1"]),
    ("unit_cost", ["--size", "1024", "--tile", "512", "--reps", "1"]),
    ("pairs", ["--size", "1024", "--pairs", "2"]),
])
def test_single_purpose_tools_run_and_write_their_json(tmp_path: Path, tool: str,
                                                 args: list[str]) -> None:
    p = subprocess.run([sys.executable, "-m", f"benchmarks.{tool}", *args, "--out",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    result = json.loads((tmp_path / f"{tool}.json").read_text())
    assert result["command"].startswith(f"python -m benchmarks.{tool} --size 1024")
    if tool == "lanes":
        assert set(result["seconds"]) == {"lanes", "no lanes"}
        assert [len(v) for v in result["seconds"].values()] == [1, 1]
        assert min(min(v) for v in result["seconds"].values()) > 0
    elif tool == "pairs":
        assert [len(v) for v in result["seconds"].values()] == [2, 2]
        assert result["ratios"] == [b / c for b, c in zip(result["seconds"]["bare"],
                                                           result["seconds"]["cnnpipe"])]
        assert result["min_ratio"] <= result["median_ratio"] <= result["max_ratio"]
        assert result["patches"] > 0
    else:
        assert result["units"] == 4
        assert result["other_wall_s_per_unit"] > 0
