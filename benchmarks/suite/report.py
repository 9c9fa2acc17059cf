"""The suite's Markdown report: header, Targets table, one table (or a few) per section."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.suite import gpu, memio, precision, throughput, torchcmp
from benchmarks.suite.context import SECTIONS

__all__ = ["render", "targets"]

Section = dict[str, Any]

MARKDOWN: dict[str, Callable[[Section], list[str]]] = {
    "a": throughput.markdown_a, "b": torchcmp.markdown_bc, "c": torchcmp.markdown_bc,
    "d": memio.markdown_d, "e": memio.markdown_e, "f": precision.markdown_f,
    "g": throughput.markdown_g, "h": gpu.markdown_h,
}
TARGETS: dict[str, Callable[[Section], list[dict[str, Any]]]] = {
    "a": throughput.targets_a, "b": torchcmp.targets_b, "c": torchcmp.targets_c,
    "d": memio.targets_d, "e": memio.targets_e, "f": precision.targets_f,
    "g": throughput.targets_g, "h": gpu.targets_h,
}


def targets(sections: dict[str, Section]) -> list[dict[str, Any]]:
    """Every target row of the sections that ran (an error is a row of its own)."""
    rows: list[dict[str, Any]] = []
    for letter, res in sections.items():
        if "error" in res:
            rows.append({"section": letter, "target": SECTIONS[letter], "value": None,
                         "met": False, "measured": f"error: {res['error']}"})
        else:
            rows += TARGETS[letter](res)
    return rows


def _status(met: bool | None, measured: str) -> str:
    if met is None:
        return "not run" if measured.startswith("not run") else "info"
    return "met" if met else "**MISSED**"


def render(data: dict[str, Any]) -> str:
    m, code = data["machine"], data["code_at_start"]
    v = m["versions"]
    lines = [
        f"# cnnpipe benchmark suite ({data['mode']})",
        "",
    ]
    if data["mode"] == "quick":
        lines += ["**Quick mode: tiny images and 2 repetitions (1 in section a) for a CI "
                  "smoke run. These figures are not performance results.**", ""]
    dirty = code["dirty_engine_files"]
    lines += [
        f"Command: `{data['command']}`  ",
        f"Date: {data['date']}; the suite took {data['total_s']:.0f} s.  ",
        f"Machine: {m['cpu_model']} ({', '.join(m['cpu_flags']) or 'no AVX flags read'}), "
        f"{m['cores']} cores, {m['memory_gib']} GiB RAM; GPU: {m['gpu']}; {m['platform']}.  ",
        f"Versions: Python {m['python']}, " + ", ".join(f"{k} {x}" for k, x in v.items())
        + ".  ",
        f"Code: commit {code['commit']}" + (f" with {len(dirty)} uncommitted engine file(s)"
                                            if dirty else "")
        + f", engine sources {code['sources_sha256']}"
        + (" - **the engine's sources changed during the run: rerun.**"
           if data.get("code_changed_during_run") else ".") + "  ",
        "Allocator: " + ("cnnpipe's glibc malloc settings (one arena, no mmap, no trimming; "
                         "`cnnpipe.pipeline.malloc`) for both sides of every comparison"
                         if data.get("malloc_tuned") else
                         "glibc's defaults for both sides of every comparison "
                         "(`--malloc glibc`, or not a glibc system)") + ".  ",
        f"Noise: before each timing the suite waited until other processes used < "
        f"{data['settings']['quiet_cores']} cores (at most {data['settings']['quiet_budget']:.0f}"
        f" s in all; waited {data['quiet_waited_s']:.0f} s); load average at start "
        f"{m['load_avg_at_start']}, at end {data['load_avg_at_end']}.",
        "",
        "## Targets",
        "",
        "| | target | measured | |",
        "|---|---|---|---|",
    ]
    for t in data["targets"]:
        lines.append(f"| {t['section']} | {t['target']} | {t['measured']} | "
                     f"{_status(t['met'], t['measured'])} |")
    for letter, res in data["sections"].items():
        lines += ["", f"## {letter}) {SECTIONS[letter]}", ""]
        if "error" in res:
            lines.append(f"**Failed** after {res.get('seconds', 0):.0f} s: `{res['error']}` "
                         "(traceback in the JSON).")
            continue
        lines += MARKDOWN[letter](res)
        together = letter in "bc" and {"b", "c"} <= set(data["sections"])
        lines += ["", f"_Section time: {res['seconds']:.0f} s"
                  + (" (b and c ran together)._" if together else "._")]
    lines.append("")
    return "\n".join(lines)
