"""The model package metadata, schema ``cnnpipe.model/1`` (DESIGN §4).

An exported model is one ONNX file whose ``metadata_props`` hold the key ``cnnpipe``
with a JSON document described by :class:`ModelMeta`.  This module is pure: it parses,
validates and serialises the document; reading it from a file lives in
:func:`read_model_meta` (``onnx``, no torch, no onnxruntime).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from cnnpipe.errors import ModelError

__all__ = [
    "METADATA_KEY",
    "SCHEMA",
    "InputSpec",
    "ModelMeta",
    "NormMethod",
    "Normalisation",
    "OutputKind",
    "OutputSpec",
    "Task",
    "check_external_data",
    "file_sha256",
    "load_onnx",
    "model_meta",
    "model_sha256",
    "read_model_meta",
]

SCHEMA = "cnnpipe.model/1"
METADATA_KEY = "cnnpipe"


class Task(StrEnum):
    """What a model does, and so which task head post-processes its output."""

    CLASSIFY = "classify"
    CRATERS = "craters"
    SEGMENT = "segment"


class NormMethod(StrEnum):
    """How raw pixel values are turned into model input (see :mod:`cnnpipe.normalise`)."""

    NONE = "none"
    ASINH = "asinh"
    STANDARDISE = "standardise"
    FIXED = "fixed"
    MINMAX = "minmax"


class OutputKind(StrEnum):
    """What the output tensor holds.

    ``probabilities``: class probabilities ``(n, c)`` (classify) or maps ``(n, c, y, x)``
    (segment); ``logits``: the same before softmax; ``heatmap``: ``(n, 1, y, x)`` in [0, 1]
    (craters).
    """

    PROBABILITIES = "probabilities"
    LOGITS = "logits"
    HEATMAP = "heatmap"


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ModelError(msg)


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """The input tensor: name, layout, patch geometry and halo.

    Attributes
    ----------
    name : str
        ONNX input name.
    layout : str
        Always ``"NCHW"``.
    patch : tuple of int or None
        Fixed ``(height, width)`` the model takes, or None for a fully convolutional
        model that takes any size that is a multiple of ``multiple``.
    multiple : int
        Spatial sizes must be multiples of this (2**depth for a U-Net); also the grid
        patch origins are aligned to so that tiled output equals whole-image output.
    halo : int
        Pixels of context needed on each side of a patch for its centre to be exact
        (the receptive-field radius, rounded up to ``multiple``).
    """

    name: str = "input"
    layout: str = "NCHW"
    patch: tuple[int, int] | None = None
    multiple: int = 1
    halo: int = 0

    def __post_init__(self) -> None:
        _require(self.layout == "NCHW", f"Expected input layout 'NCHW'. Got {self.layout!r}.")
        _require(self.multiple >= 1, f"Expected input multiple >= 1. Got {self.multiple}.")
        _require(self.halo >= 0, f"Expected input halo >= 0. Got {self.halo}.")
        if self.patch is not None:
            _require(
                len(self.patch) == 2 and all(int(p) > 0 for p in self.patch),
                f"Expected input patch as two positive ints or null. Got {self.patch!r}.",
            )
            object.__setattr__(self, "patch", (int(self.patch[0]), int(self.patch[1])))

    @property
    def fully_convolutional(self) -> bool:
        """True when the model accepts any spatial size (a multiple of ``multiple``)."""
        return self.patch is None


@dataclass(frozen=True, kw_only=True)
class Normalisation:
    """Pixel normalisation: a method and its parameters.

    ``asinh``: ``asinh((x - median) / scale) `` with per-patch median unless ``params``
    holds ``offset``; ``standardise``: per patch and band ``(x - mean) / std``;
    ``fixed``: ``(x - mean[b]) / std[b]``; ``minmax``: per patch to [0, 1]; ``none``.
    """

    method: NormMethod = NormMethod.NONE
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", NormMethod(self.method))
        except ValueError:
            allowed = ", ".join(m.value for m in NormMethod)
            msg = f"Expected normalisation method one of {allowed}. Got {self.method!r}."
            raise ModelError(msg) from None
        if self.method is NormMethod.ASINH:
            scale = self.params.get("scale")
            _require(
                isinstance(scale, int | float) and scale > 0,
                f"Expected normalisation 'asinh' with params.scale > 0. Got {self.params!r}.",
            )
        if self.method is NormMethod.FIXED:
            mean, std = self.params.get("mean"), self.params.get("std")
            _require(
                isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std)
                and all(s > 0 for s in std),
                "Expected normalisation 'fixed' with params.mean and params.std lists of "
                f"equal length (std > 0). Got {self.params!r}.",
            )


@dataclass(frozen=True, kw_only=True)
class OutputSpec:
    """The output tensor: name, kind and class names (one per channel/class)."""

    name: str = "output"
    kind: OutputKind = OutputKind.PROBABILITIES
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", OutputKind(self.kind))
        except ValueError:
            allowed = ", ".join(k.value for k in OutputKind)
            msg = f"Expected output kind one of {allowed}. Got {self.kind!r}."
            raise ModelError(msg) from None
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))


@dataclass(frozen=True, kw_only=True)
class ModelMeta:
    """Everything the pipeline needs to run a model correctly (schema ``cnnpipe.model/1``).

    Construct with keyword arguments or :meth:`from_dict`; both validate.
    """

    name: str
    task: Task
    bands: tuple[str, ...]
    input: InputSpec
    output: OutputSpec
    normalisation: Normalisation = field(default_factory=Normalisation)
    version: str = "0.0.0"
    postprocess: dict[str, Any] = field(default_factory=dict)
    pixel_scale: float | None = None
    weights_sha256: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    licence: str = "unspecified"
    description: str = ""
    demo: bool = False
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        _require(self.schema == SCHEMA, f"Expected schema {SCHEMA!r}. Got {self.schema!r}.")
        _require(
            bool(self.name) and self.name.replace("-", "_").replace(".", "_").isidentifier(),
            "Expected a model name of letters, digits, '-', '_' or '.' (it names Zarr "
            f"groups). Got {self.name!r}.",
        )
        try:
            object.__setattr__(self, "task", Task(self.task))
        except ValueError:
            allowed = ", ".join(t.value for t in Task)
            msg = f"Expected task one of {allowed}. Got {self.task!r}."
            raise ModelError(msg) from None
        bands = tuple(str(b) for b in self.bands)
        _require(len(bands) >= 1, "Expected at least one band. Got none.")
        _require(
            len(set(bands)) == len(bands) and all(bands),
            f"Expected distinct, non-empty band names. Got {list(bands)}.",
        )
        object.__setattr__(self, "bands", bands)
        if self.pixel_scale is not None:
            _require(
                math.isfinite(self.pixel_scale) and self.pixel_scale > 0,
                f"Expected pixel_scale > 0 or null. Got {self.pixel_scale!r}.",
            )
        if self.task is Task.CLASSIFY:
            _require(
                self.input.patch is not None,
                "Expected a fixed input patch for a classify model. Got patch=null.",
            )
        if self.task is Task.CRATERS:
            _require(
                self.output.kind in (OutputKind.HEATMAP, OutputKind.LOGITS),
                f"Expected output kind 'heatmap' for a craters model. Got {self.output.kind}.",
            )
        if self.task in (Task.CLASSIFY, Task.SEGMENT):
            _require(
                len(self.output.classes) >= 2,
                f"Expected at least two class names for a {self.task} model. "
                f"Got {list(self.output.classes)}.",
            )
        if self.normalisation.method is NormMethod.FIXED:
            n = len(self.normalisation.params["mean"])
            _require(
                n == len(bands),
                f"Expected one normalisation mean/std per band ({len(bands)}). Got {n}.",
            )

    @property
    def n_bands(self) -> int:
        """Number of input channels."""
        return len(self.bands)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready document (enums as strings, tuples as lists)."""
        d = asdict(self)
        d["task"] = self.task.value
        d["bands"] = list(self.bands)
        d["input"]["patch"] = list(self.input.patch) if self.input.patch else None
        d["normalisation"]["method"] = self.normalisation.method.value
        d["output"]["kind"] = self.output.kind.value
        d["output"]["classes"] = list(self.output.classes)
        return d

    def to_json(self) -> str:
        """Serialise to the JSON string stored under ``metadata_props['cnnpipe']``."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        """Validate and build from a parsed document.

        Raises
        ------
        ModelError
            When a key is missing, unknown or has a value of the wrong kind.
        """
        if not isinstance(data, dict):
            msg = f"Expected the cnnpipe metadata to be a JSON object. Got {type(data).__name__}."
            raise ModelError(msg)
        missing = [k for k in ("name", "task", "bands", "input", "output") if k not in data]
        if missing:
            msg = f"Expected cnnpipe metadata keys {missing} too. Got keys {sorted(data)}."
            raise ModelError(msg)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            msg = f"Unknown cnnpipe metadata keys {unknown}. Expected a subset of {sorted(known)}."
            raise ModelError(msg)
        d = dict(data)
        try:
            d["input"] = InputSpec(**_tuple_patch(d["input"]))
            d["output"] = OutputSpec(**d["output"])
            d["normalisation"] = Normalisation(**d.get("normalisation", {}))
            return cls(**d)
        except TypeError as exc:
            msg = f"Invalid cnnpipe metadata: {exc}."
            raise ModelError(msg) from None

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        """Parse the JSON string stored in an ONNX file."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            msg = f"Expected the cnnpipe metadata to be JSON. Got a parse error: {exc}."
            raise ModelError(msg) from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> ModelMeta:
        """Return a validated copy with ``changes`` applied."""
        return replace(self, **changes)


def _tuple_patch(d: dict[str, Any]) -> dict[str, Any]:
    d = dict(d)
    if d.get("patch") is not None:
        d["patch"] = tuple(d["patch"])
    return d


def load_onnx(path: str | Path) -> Any:
    """Load an ONNX model's graph and metadata; external data is never loaded or followed.

    Every model cnnpipe reads passes through here, so a model whose tensors keep their
    data in files outside its own folder is refused before anything opens those files
    (:func:`check_external_data`).

    Raises
    ------
    ModelError
        The file is missing, not a readable ONNX model, or has external data that leaves
        its folder.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        msg = f"{path}: no such model file."
        raise ModelError(msg)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        msg = f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})."
        raise ModelError(msg) from None
    check_external_data(model, path)
    return model


def model_sha256(path: str | Path, *, model: Any = None) -> str:
    """Hex SHA-256 identifying a model's weights: its file, plus its external-data files.

    For a single-file model (every package ``cnnpipe export`` writes) this is the SHA-256
    of the file's bytes.  A model keeping tensors in external-data files inside its
    folder hashes ``sha256(file) + NUL + location + NUL + sha256(data file)`` for each
    data file in sorted order, so that replacing a data file changes the identity a
    store or a nightly ledger keeps (a resumed run never mixes weights).

    ``model``: the graph already read by :func:`load_onnx` from ``path`` (not read again).

    Raises
    ------
    ModelError
        As :func:`load_onnx`.
    """
    files = check_external_data(load_onnx(path) if model is None else model, path)
    main = file_sha256(path)
    if not files:
        return main
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    h = hashlib.sha256(main.encode())
    for f in files:
        h.update(b"\0" + os.path.relpath(f, folder).encode() + b"\0")
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
        for sparse in attr.sparse_tensors:
            yield from (sparse.values, sparse.indices)
        if attr.HasField("g"):
            yield from _tensors(attr.g)
        for sub in attr.graphs:
            yield from _tensors(sub)


def check_external_data(model: Any, path: str | Path) -> list[str]:
    """Refuse external-data locations that leave the model's folder (DESIGN §8).

    ONNX tensors may keep their bytes in another file named by a ``location`` relative
    to the model.  An untrusted model could name ``../../home/x/.ssh/id_rsa`` or an
    absolute path and have it read; cnnpipe (like onnx and onnxruntime >= 1.20) accepts
    only existing files inside the model's folder, symbolic links resolved.

    Parameters
    ----------
    model : onnx.ModelProto
        Loaded with ``load_external_data=False``.
    path : str or Path
        Where ``model`` was read from.

    Returns
    -------
    list of str
        The external-data files the model names (real paths, sorted, each once).

    Raises
    ------
    ModelError
        A location is absolute, leaves the folder, or names no file.
    """
    from onnx import TensorProto

    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    tensors = [*_tensors(model.graph)]
    for function in model.functions:
        for node in function.node:
            tensors += _node_tensors(node)
    files: set[str] = set()
    for tensor in tensors:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = os.path.realpath(os.path.join(folder, location))
        if not location or os.path.isabs(location) or location.startswith(("/", "\\")):
            why = "an absolute path" if location else "no location"
        elif os.path.commonpath([folder, target]) != folder:
            why = f"which resolves to {target}, outside the model's folder"
        elif not os.path.isfile(target):
            why = "no such file"
        else:
            files.add(target)
            continue
        msg = (
            f"{path}: expected external data in a file inside the model's folder {folder}. "
            f"Got tensor {tensor.name!r} at {location!r} ({why}); cnnpipe never reads "
            "external data outside a model's folder. Save the model as one file "
            "(onnx.save(model, path, save_as_external_data=False))."
        )
        raise ModelError(msg)
    return sorted(files)


def read_model_meta(path: str | Path) -> ModelMeta:
    """Read and validate the ``cnnpipe`` metadata of an ONNX model file.

    Only the graph header is needed; external data is never loaded (and never followed).

    Raises
    ------
    ModelError
        The file is missing, not ONNX, or has no/invalid cnnpipe metadata.
    """
    return model_meta(load_onnx(path), path)


def model_meta(model: Any, path: str | Path) -> ModelMeta:
    """The ``cnnpipe`` metadata of a graph read by :func:`load_onnx` from ``path``.

    Raises
    ------
    ModelError
        No or invalid cnnpipe metadata (the message names ``path``).
    """
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        msg = (
            f"{path}: no 'cnnpipe' metadata. Annotate it with "
            "`cnnpipe export --from-onnx MODEL.onnx ...`."
        )
        raise ModelError(msg)
    try:
        return ModelMeta.from_json(props[METADATA_KEY])
    except ModelError as exc:
        msg = f"{path}: {exc}"
        raise ModelError(msg) from None
