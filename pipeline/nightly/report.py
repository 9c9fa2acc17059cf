"""The night's report: JSON for machines, Markdown for people, quick-look PNGs.

``<reports>/<night>.json`` and ``<reports>/<night>.md`` are rewritten at the end of every
invocation for that night; quick-looks go to ``<reports>/<night>/``: a downsampled class
mask per image and segment/classify model, and the crater size-frequency plot with its
fitted isochron per image and craters model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnpipe.errors import CnnpipeError

__all__ = ["InputOutcome", "NightReport", "mask_preview", "quicklooks", "write_report"]

log = logging.getLogger("cnnpipe.nightly")

#: longest side of a mask quick-look, pixels
QUICKLOOK_PX = 768


@dataclass(kw_only=True)
class InputOutcome:
    """What happened to one input this night."""

    input: str
    status: str  # done | skipped | quarantined | failed
    sha256: str | None = None
    store: str | None = None
    seconds: float = 0.0
    units: int = 0
    #: pixels of the work units this input's run processed (0: skipped, failed)
    pixels: int = 0
    reason: str | None = None
    catalogs: dict[str, int] = field(default_factory=dict)
    quicklooks: list[str] = field(default_factory=list)
    craters: list[dict[str, Any]] = field(default_factory=list)
    #: when the invocation that produced this outcome started
    invocation: str = ""


@dataclass(kw_only=True)
class NightReport:
    """The whole night."""

    night: str
    config: dict[str, Any]
    started: str
    finished: str = ""
    cluster: str = ""
    exit_code: int = 0
    error: str | None = None
    outcomes: list[InputOutcome] = field(default_factory=list)
    #: inputs per status of this invocation alone (``counts`` is the night's)
    this_invocation: dict[str, int] = field(default_factory=dict)
    #: wall time of this invocation, from its start to its report
    seconds: float = 0.0

    def carry_over(self, folder: Path) -> None:
        """Keep what earlier invocations of this night did (the report is the night's).

        An input skipped now because an earlier invocation of the same night finished it
        shows that earlier outcome; an input quarantined earlier (and moved away since)
        stays listed.
        """
        try:
            old = json.loads((folder / f"{self.night}.json").read_text())
        except (OSError, ValueError):
            return
        earlier = {o.get("sha256"): o for o in old.get("inputs", [])
                   if o.get("status") in ("done", "quarantined") and o.get("sha256")}
        known = set(InputOutcome.__dataclass_fields__)
        out = []
        for o in self.outcomes:
            prev = earlier.pop(o.sha256, None) if o.status == "skipped" else None
            out.append(InputOutcome(**{k: v for k, v in prev.items() if k in known})
                       if prev else o)
        out += [InputOutcome(**{k: v for k, v in prev.items() if k in known})
                for prev in earlier.values()]
        self.outcomes = out

    def counts(self) -> dict[str, int]:
        """Inputs per status over the night."""
        return _counts(self.outcomes)

    def throughput(self) -> dict[str, float] | None:
        """Pixels this invocation processed over its wall time (cluster start, quick-looks and all).

        None before its wall time is known or when it processed nothing.
        """
        mine = [o for o in self.outcomes if o.invocation == self.started and o.pixels]
        if not (mine and self.seconds > 0):
            return None
        mpix = sum(o.pixels for o in mine) / 1e6
        return {"inputs": len(mine), "mpix": mpix, "seconds": self.seconds,
                "mpix_per_s": mpix / self.seconds}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "schema": "cnnpipe.nightly-report/1", "night": self.night,
            "started": self.started, "finished": self.finished, "cluster": self.cluster,
            "exit_code": self.exit_code, "error": self.error, "counts": self.counts(),
            "this_invocation": self.this_invocation, "throughput": self.throughput(),
            "config": self.config, "inputs": [asdict(o) for o in self.outcomes],
        }

    def markdown(self, *, relative_to: Path) -> str:
        """A human summary (links to quick-looks relative to the report folder)."""
        c = self.counts()
        code = self.exit_code or (3 if c["quarantined"] else 0)
        verdict = {0: "all inputs done", 1: "FAILED: a human is needed",
                   2: "configuration error: nothing was processed",
                   3: "done, with quarantined inputs: a human should look"}.get(
                       code, f"exit {code}")
        lines = [
            f"# cnnpipe nightly {self.night}: {verdict}", "",
            f"- started {self.started}, finished {self.finished}; cluster: {self.cluster}",
            f"- inputs {c['found']}: done {c['done']}, done on an earlier night "
            f"{c['skipped']}, quarantined {c['quarantined']}, failed {c['failed']}",
            f"- configuration: `{self.config.get('source')}`; exit code of the last "
            f"invocation {self.exit_code}",
        ]
        t = self.throughput()
        if t:
            lines.append(f"- this invocation: {t['mpix']:.1f} Mpix of {t['inputs']} input(s) in "
                         f"{t['seconds']:.1f} s, {t['mpix_per_s']:.2f} Mpix/s (wall time, "
                         "cluster start and quick-looks included)")
        if self.error:
            lines.append(f"- error: {self.error}")
        lines += ["", "| input | status | store | units | seconds | catalog rows | run | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for o in self.outcomes:
            rows = ", ".join(f"{m}: {n}" for m, n in o.catalogs.items())
            note = (o.reason or "").replace("|", "/")
            lines.append(
                f"| `{o.input}` | {o.status} | {f'`{o.store}`' if o.store else ''} | "
                f"{o.units or ''} | {o.seconds:.1f} | {rows} | {o.invocation} | {note} |"
            )
        for o in self.outcomes:
            if not (o.quicklooks or o.craters):
                continue
            lines += ["", f"## {Path(o.input).name}", ""]
            for c in o.craters:
                lines.append(
                    f"- {c['model']} on {c['image']} ({c['body']}): {c['n_craters']} craters, "
                    f"N(D>=1 km) = {c['density_1km']:.3e} km^-2, model age "
                    f"{c['age_gyr']:.3g} (+{c['age_err_plus_gyr']:.2g} / "
                    f"-{c['age_err_minus_gyr']:.2g}) Gyr"
                )
            for q in o.quicklooks:
                rel = os.path.relpath(q, relative_to)
                lines.append(f"![{Path(q).stem}]({rel})")
        return "\n".join(lines) + "\n"


def _counts(outcomes: list[InputOutcome]) -> dict[str, int]:
    out = {"found": len(outcomes)}
    for s in ("done", "skipped", "quarantined", "failed"):
        out[s] = sum(o.status == s for o in outcomes)
    return out


def write_report(report: NightReport, folder: Path) -> tuple[Path, Path]:
    """Write ``<night>.json`` and ``<night>.md`` atomically; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = (folder / f"{report.night}.json", folder / f"{report.night}.md")
    texts = (json.dumps(report.to_dict(), indent=1, default=str),
             report.markdown(relative_to=folder))
    for path, text in zip(paths, texts):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths


def mask_preview(arr: Any) -> tuple[npt.NDArray[np.float32], int]:
    """Every ``step``-th pixel of a stored class mask, at most ``QUICKLOOK_PX`` a side.

    One strided selection: zarr decodes each chunk once and keeps only the picked pixels
    (a few chunks in flight, whatever the image's size). Reading it a strided row at a
    time decoded a chunk row once per picked row: 0.45 s instead of 1.5 ms for a 2048²
    mask, most of a frame-sized input's quick-look.  No data (255) becomes NaN.
    """
    step = max(1, -(-max(arr.shape) // QUICKLOOK_PX))
    small = np.asarray(arr[::step, ::step]).astype(np.float32)
    small[small == 255] = np.nan
    return small, step


def _mask_png(store: str, key: str, model: str, classes: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import zarr
    from matplotlib.colors import ListedColormap

    arr = zarr.open_array(store, path=f"images/{key}/{model}/mask", mode="r")
    small, step = mask_preview(arr)
    n = max(len(classes), 2)
    tab10: Any = plt.get_cmap("tab10")
    cmap = ListedColormap(tab10.colors[:n]).with_extremes(bad="0.6")
    fig, ax = plt.subplots(figsize=(6, 6 * small.shape[0] / max(small.shape[1], 1) + 0.6))
    im = ax.imshow(small, cmap=cmap, vmin=-0.5, vmax=n - 0.5, interpolation="nearest",
                   origin="lower")
    cb = fig.colorbar(im, ax=ax, ticks=range(n), shrink=0.8)
    cb.ax.set_yticklabels(list(classes)[:n] or ["0", "1"])
    ax.set_title(f"{key} / {model} (1:{step}, grey: no data)", fontsize=9)
    ax.set_axis_off()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def quicklooks(store: str, folder: Path, *, prefix: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Quick-look PNGs of a complete store, and its crater statistics.

    A quick-look that cannot be made (too few craters for an age, no pixel scale) is
    logged and left out: the report is never the reason a night fails.
    """
    import zarr

    from cnnpipe.pipeline.craterstats import crater_stats
    from cnnpipe.plotting import plot_csfd

    folder.mkdir(parents=True, exist_ok=True)
    attrs: Any = zarr.open_group(store, mode="r").attrs["cnnpipe"]
    pngs: list[str] = []
    craters: list[dict[str, Any]] = []
    for model, info in attrs["models"].items():
        meta = info["metadata"]
        task = meta["task"]
        for key in attrs["inputs"]:
            try:
                if task == "craters":
                    for s in crater_stats(store, model, image=key):
                        png = folder / f"{prefix}-{key}-{model}-sfd.png"
                        plot_csfd(s.diameters_km, s.area_km2, body=s.body, fit=s.fit, path=png,
                                  title=f"{key} / {model} ({s.body})")
                        pngs.append(str(png))
                        craters.append({"model": model, **s.to_dict()})
                else:
                    png = folder / f"{prefix}-{key}-{model}-mask.png"
                    _mask_png(store, key, model, meta["output"]["classes"], png)
                    pngs.append(str(png))
            except (CnnpipeError, ValueError, OSError) as exc:
                log.warning("no quick-look of %s %s/%s: %s", store, key, model, exc)
    return pngs, craters
