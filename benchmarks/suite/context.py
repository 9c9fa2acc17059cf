"""What every section of the suite shares: settings per mode, scratch files, the timer."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from benchmarks.common import Meter, rm, write_image

__all__ = ["SECTIONS", "Context", "Settings"]

#: Section letters and titles, in run order.
SECTIONS: dict[str, str] = {
    "a": "cnnpipe run vs bare onnxruntime on the same patches",
    "b": "vs MONAI sliding_window_inference (torch eager)",
    "c": "vs a naive per-patch torch loop",
    "d": "peak resident memory vs image size",
    "e": "I/O ceiling: identity model vs a plain numpy/zarr loop",
    "f": "precision on this CPU: fp32 vs fp16 vs int8",
    "g": "scaling: 1 vs 2 worker processes; planning a 100000² image",
    "h": "GPU: CUDA and TensorRT vs a bare session with IOBinding",
}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Sizes and repetitions of one suite run (``full`` or ``quick``)."""

    quick: bool = False
    #: image side of sections a, b, c, f, g (simulated sky, float32)
    size: int = 4096
    tile: int = 2048
    #: None: cnnpipe's ``auto`` (its default), for both sides of every comparison
    patch: int | None = None
    batch: int | None = None
    #: patches per call on a GPU (both sides of section h): with ``gpu_tile`` 4096 and the
    #: auto patch (1120² for the suite U-Net) a unit holds 4 x 4 patches, so 16 is one
    #: call a unit, 20 Mpix, and no padded patches (a GPU batch has one fixed shape)
    gpu_batch: int = 16
    #: work unit of section h (a unit's last batch is padded to ``gpu_batch`` on a GPU)
    gpu_tile: int = 4096
    #: image side of section h (a GPU needs a larger image than a CPU to be timed)
    gpu_size: int = 16384
    reps: int = 3
    #: repetitions of section a (its ratio moved by 0.05 between 3-repetition runs)
    a_reps: int = 5
    #: image sides of section d
    mem_sizes: tuple[int, ...] = (4096, 8192, 16384, 32768)
    #: image side of section e
    io_size: int = 8192
    #: image side planned in section g
    plan_size: int = 100_000
    sample_ms: float = 50.0
    quiet_cores: float = 0.3
    quiet_budget: float = 600.0

    @classmethod
    def for_mode(cls, *, quick: bool, **given: Any) -> Settings:
        """Defaults of the mode, overridden by the ``given`` values that are not None."""
        base = cls(
            quick=True, size=1024, tile=512, gpu_batch=1, gpu_tile=512, gpu_size=1024, reps=2,
            a_reps=1, mem_sizes=(1024, 2048),
            io_size=2048, quiet_budget=0.0,
        ) if quick else cls()
        known = {f.name for f in fields(cls)}
        return replace(base, **{k: v for k, v in given.items() if v is not None and k in known})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Context:
    """Settings, scratch folder, the shared :class:`Meter`, and lazily made assets."""

    settings: Settings
    work: Path
    meter: Meter
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    cache: dict[str, Any] = field(default_factory=dict)
    scratch: list[Path] = field(default_factory=list)

    def sky(self, size: int, *, seed: int = 1) -> Path:
        """A simulated one-band sky image (no chip gaps), written once per run."""
        key = f"sky_{size}_{seed}"
        path = self.work / f"{key}.fits"
        if key not in self.cache:
            self.scratch += write_image(path, size, seed=seed)
            self.cache[key] = path
        return path

    def unet(self) -> Any:
        """The benchmark U-Net: torch module and its cnnpipe fp32 package (same weights)."""
        if "unet" not in self.cache:
            from benchmarks.suite.assets import make_unet

            self.cache["unet"] = make_unet(self.work / "models")
        return self.cache["unet"]

    def run_config(self, image: Path, model: str | Path, out: str, **kw: Any) -> Any:
        """A ``RunConfig`` with this suite's tile, patch, batch, CPU, overwrite."""
        from cnnpipe.pipeline.config import RunConfig

        s = self.settings
        base: dict[str, Any] = {"tile": s.tile, "patch": s.patch, "batch": s.batch,
                                "device": "cpu", "mode": "overwrite"}
        base.update(kw)
        return RunConfig(inputs=(str(image),), models=(str(model),),
                         out=str(self.work / out), **base)

    def engine_threads(self, cfg: Any) -> dict[str, int]:
        """Processes, Dask threads and intra-op threads of cnnpipe's embedded cluster."""
        from cnnpipe.pipeline.execute import cluster_plan

        cp = cluster_plan(cfg)
        return {"workers": cp.workers, "dask_threads": cp.threads,
                "ort_threads": cp.ort_threads,
                "total": cp.workers * cp.threads * cp.ort_threads}

    def cleanup(self) -> None:
        rm(*self.scratch)
        self.scratch.clear()
