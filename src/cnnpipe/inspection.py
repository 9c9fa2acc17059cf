"""Read a model package without torch: metadata, I/O signature, execution providers.

Backs ``cnnpipe inspect`` and ``cnnpipe models``.  Also holds the torch-free table of the
built-in reference architectures (:data:`ARCHITECTURES`); :mod:`cnnpipe.export` binds a
PyTorch constructor to each entry.  Imports onnx and onnxruntime, never torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnpipe.errors import ModelError
from cnnpipe.modelmeta import (
    METADATA_KEY,
    ModelMeta,
    Normalisation,
    NormMethod,
    OutputKind,
    Task,
    load_onnx,
)

__all__ = [
    "ARCHITECTURES",
    "ArchInfo",
    "ModelInfo",
    "TensorSig",
    "available_providers",
    "demo_models",
    "inspect_model",
    "signature_problems",
]

DEMO_LINE = "demo model trained on simulated data"


@dataclass(frozen=True, kw_only=True)
class ArchInfo:
    """A built-in reference architecture, described without importing torch.

    Attributes
    ----------
    name : str
        Registry name (``cnnpipe export NAME``).
    task : Task
        The task head its output feeds.
    description : str
        One line for ``cnnpipe models``.
    classes : tuple of str
        Default class names, one per output channel/class.
    fully_convolutional : bool
        True when the model takes any spatial size that is a multiple of ``multiple``.
    patch : int or None
        Default fixed patch side in pixels (None for fully convolutional models).
    output_kind : OutputKind
        What the (activated) output holds.
    normalisation : Normalisation
        Default pixel normalisation written to the metadata.
    postprocess : dict
        Default post-processing parameters written to the metadata.
    options : dict of str to int
        Constructor keyword arguments (besides ``in_channels`` and ``num_classes``) and
        their defaults; ``cnnpipe export --arch-opt KEY=VALUE`` sets them.
    multiple_rule : str
        How the spatial ``multiple`` follows from the options (documentation only).
    """

    name: str
    task: Task
    description: str
    classes: tuple[str, ...]
    fully_convolutional: bool
    patch: int | None
    output_kind: OutputKind
    normalisation: Normalisation
    postprocess: dict[str, Any] = field(default_factory=dict)
    options: dict[str, int] = field(default_factory=dict)
    multiple_rule: str = "1"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {
            "name": self.name,
            "task": self.task.value,
            "description": self.description,
            "classes": list(self.classes),
            "fully_convolutional": self.fully_convolutional,
            "patch": self.patch,
            "multiple": self.multiple_rule,
            "output_kind": self.output_kind.value,
            "normalisation": {
                "method": self.normalisation.method.value,
                "params": dict(self.normalisation.params),
            },
            "postprocess": dict(self.postprocess),
            "options": dict(self.options),
        }


# Per-patch statistics (median, mean/std) would differ between overlapping tiles and make
# seams, so the dense (fully convolutional) models default to an asinh stretch with a fixed
# offset: tiled output then equals whole-image output.
_ASINH = Normalisation(method=NormMethod.ASINH, params={"scale": 1.0})
_ASINH_FIXED = Normalisation(method=NormMethod.ASINH, params={"scale": 1.0, "offset": 0.0})

ARCHITECTURES: dict[str, ArchInfo] = {
    a.name: a
    for a in (
        ArchInfo(
            name="galaxy_cnn",
            task=Task.CLASSIFY,
            description="Galaxy-morphology CNN: conv-BN-ReLU-maxpool blocks + dense, softmax.",
            classes=("star", "disk", "spheroid"),
            fully_convolutional=False,
            patch=32,
            output_kind=OutputKind.PROBABILITIES,
            normalisation=_ASINH,
            options={"patch": 32, "width": 16, "depth": 3, "hidden": 64},
        ),
        ArchInfo(
            name="lens_resnet",
            task=Task.CLASSIFY,
            description="ResNet-style strong-lens finder: residual stages, global pool, softmax.",
            classes=("non_lens", "lens"),
            fully_convolutional=False,
            patch=64,
            output_kind=OutputKind.PROBABILITIES,
            normalisation=_ASINH,
            options={"patch": 64, "width": 16, "stages": 3, "blocks": 1},
        ),
        ArchInfo(
            name="crater_unet",
            task=Task.CRATERS,
            description="U-Net crater-rim heat map (as DeepMoon), 1 channel, sigmoid.",
            classes=("rim",),
            fully_convolutional=True,
            patch=None,
            output_kind=OutputKind.HEATMAP,
            normalisation=_ASINH_FIXED,
            postprocess={"threshold": 0.5},
            options={"base": 8, "depth": 3},
            multiple_rule="2**depth",
        ),
        ArchInfo(
            name="segment_unet",
            task=Task.SEGMENT,
            description="U-Net pixel segmenter (as Morpheus), softmax over classes.",
            classes=("background", "star", "disk", "spheroid", "artefact"),
            fully_convolutional=True,
            patch=None,
            output_kind=OutputKind.PROBABILITIES,
            normalisation=_ASINH_FIXED,
            postprocess={"min_probability": 0.5},
            options={"base": 8, "depth": 3},
            multiple_rule="2**depth",
        ),
    )
}


@dataclass(frozen=True)
class TensorSig:
    """One graph input or output: name, element type and shape (ints or symbol names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What ``cnnpipe inspect`` shows about one ONNX file."""

    path: Path
    size_bytes: int
    meta: ModelMeta | None
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]
    opset: int | None
    providers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "metadata": self.meta.to_dict() if self.meta else None,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "opset": self.opset,
            "providers": list(self.providers),
            "demo": bool(self.meta and self.meta.demo),
        }


def available_providers() -> tuple[str, ...]:
    """Return the onnxruntime execution providers available in this environment."""
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


def _tensor_sigs(values: Any, skip: set[str]) -> tuple[TensorSig, ...]:
    import onnx

    sigs = []
    for v in values:
        if v.name in skip:
            continue
        tt = v.type.tensor_type
        try:
            dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, ValueError, TypeError):
            dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type else "?"
        shape: list[int | str] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            else:
                shape.append(d.dim_param or "?")
        sigs.append(TensorSig(v.name, dtype, tuple(shape)))
    return tuple(sigs)


def read_signature(model: Any) -> tuple[tuple[TensorSig, ...], tuple[TensorSig, ...]]:
    """Return the (inputs, outputs) signature of a loaded ``onnx.ModelProto``.

    Graph inputs that are initializers (old-style exports) are left out.
    """
    init = {i.name for i in model.graph.initializer}
    return _tensor_sigs(model.graph.input, init), _tensor_sigs(model.graph.output, set())


def inspect_model(path: str | Path) -> ModelInfo:
    """Read an ONNX model's metadata and I/O signature (external data is never loaded).

    A file without ``cnnpipe`` metadata gives ``meta=None``; invalid metadata raises.

    Raises
    ------
    ModelError
        The file is missing or not ONNX, or its cnnpipe metadata is invalid.
    """
    path = Path(path)
    model = load_onnx(path)
    props = {p.key: p.value for p in model.metadata_props}
    meta = None
    if METADATA_KEY in props:
        try:
            meta = ModelMeta.from_json(props[METADATA_KEY])
        except ModelError as exc:
            msg = f"{path}: {exc}"
            raise ModelError(msg) from None
    inputs, outputs = read_signature(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return ModelInfo(
        path=path,
        size_bytes=path.stat().st_size,
        meta=meta,
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        providers=available_providers(),
    )


def signature_problems(
    meta: ModelMeta, inputs: tuple[TensorSig, ...], outputs: tuple[TensorSig, ...]
) -> list[str]:
    """Return the ways the metadata contradicts the graph's I/O signature (empty if none).

    Checks the tensor names, the NCHW rank, the channel count against the bands, a fixed
    patch against static spatial dims, and the class count against the output channels.
    """
    problems: list[str] = []
    ins = {t.name: t for t in inputs}
    outs = {t.name: t for t in outputs}
    if meta.input.name not in ins:
        problems.append(
            f"metadata input {meta.input.name!r} is not a graph input {sorted(ins)}"
        )
    else:
        shape = ins[meta.input.name].shape
        if len(shape) != 4:
            problems.append(f"input {meta.input.name!r} has rank {len(shape)}, expected 4 (NCHW)")
        else:
            if isinstance(shape[1], int) and shape[1] != meta.n_bands:
                problems.append(
                    f"input has {shape[1]} channels but the metadata lists "
                    f"{meta.n_bands} bands {list(meta.bands)}"
                )
            if meta.input.patch is not None:
                spatial = shape[2:]
                if all(isinstance(d, int) for d in spatial) and tuple(spatial) != meta.input.patch:
                    problems.append(
                        f"input spatial shape {list(spatial)} differs from metadata patch "
                        f"{list(meta.input.patch)}"
                    )
    if meta.output.name not in outs:
        problems.append(
            f"metadata output {meta.output.name!r} is not a graph output {sorted(outs)}"
        )
    else:
        shape = outs[meta.output.name].shape
        n = len(meta.output.classes)
        if len(shape) >= 2 and isinstance(shape[1], int) and n and shape[1] != n:
            problems.append(
                f"output has {shape[1]} channels but the metadata lists {n} classes "
                f"{list(meta.output.classes)}"
            )
    return problems


def demo_models() -> list[dict[str, Any]]:
    """Describe the bundled demo models: name, path, and task/bands/description if readable."""
    from cnnpipe.modelmeta import read_model_meta
    from cnnpipe.models import demo_model_paths

    rows: list[dict[str, Any]] = []
    for name, path in demo_model_paths().items():
        row: dict[str, Any] = {"name": name, "path": str(path)}
        try:
            meta = read_model_meta(path)
        except ModelError as exc:
            row["error"] = str(exc)
        else:
            row.update(
                model=meta.name,
                task=meta.task.value,
                bands=list(meta.bands),
                description=meta.description,
                demo=meta.demo,
            )
        rows.append(row)
    return rows
