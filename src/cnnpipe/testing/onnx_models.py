"""Tiny, seeded ONNX models with cnnpipe metadata, built with ``onnx.helper`` (no torch).

For tests, benchmarks and demos of the pipeline: each builder writes a single-file model
whose ``metadata_props['cnnpipe']`` holds a valid ``cnnpipe.model/1`` document and
returns its :class:`~cnnpipe.modelmeta.ModelMeta`.  Weights come from
``numpy.random.default_rng(seed)``.

=============  ========  =============================================  ======  ========
builder        task      graph                                          halo    multiple
=============  ========  =============================================  ======  ========
segment_model  segment   conv3x3-relu, [avgpool2-conv3x3-relu-up2 +     6 (5)   2
                         skip], conv3x3, softmax (a one-level U-Net)
craters_model  craters   conv3x3, sigmoid (heat map) or logits          1       1
classify_model classify  conv3x3-relu, global average pool, linear,     0       1
                         softmax; fixed patch
identity_model craters   output = input (a one-band heat map)           0       1
level_model    segment   per-pixel classes by value (1x1 conv, softmax) 0       1
=============  ========  =============================================  ======  ========

:func:`external_data_model` writes a ``craters_model`` whose weights live in another
file at a given (possibly hostile) external-data location, for the tests of
:func:`cnnpipe.modelmeta.check_external_data`.

The receptive-field radius of ``segment_model`` with ``pooled=True`` is 5 pixels (two
full-resolution 3x3 convolutions and one at half resolution, which reaches 4 pixels
after nearest upsampling); the metadata halo is 5 rounded up to the multiple, 6.
Normalisation is pixel-wise (asinh with a fixed offset) so that tiled output can equal
whole-image output exactly; per-patch statistics would make it depend on the tiling.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cnnpipe.modelmeta import METADATA_KEY, ModelMeta

__all__ = [
    "OPSET",
    "classify_model",
    "craters_model",
    "external_data_model",
    "identity_model",
    "level_model",
    "segment_model",
    "write_model",
]

OPSET = 17
_IR_VERSION = 8


def write_model(graph: onnx.GraphProto, meta: ModelMeta, path: str | os.PathLike[str]) -> str:
    """Check ``graph``, attach ``meta`` as ``metadata_props['cnnpipe']`` and save it.

    Returns the path written.
    """
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cnnpipe.testing"
    )
    model.ir_version = _IR_VERSION
    helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.checker.check_model(model, full_check=True)
    path = os.fspath(path)
    onnx.save(model, path)
    return path


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def _conv(rng: np.random.Generator, cin: int, cout: int, name: str,
          inits: list[onnx.TensorProto], x: str, y: str) -> onnx.NodeProto:
    w = rng.normal(0.0, 1.0 / np.sqrt(9 * cin), size=(cout, cin, 3, 3))
    b = rng.normal(0.0, 0.1, size=cout)
    inits += [_init(f"{name}.w", w), _init(f"{name}.b", b)]
    return helper.make_node(
        "Conv", [x, f"{name}.w", f"{name}.b"], [y], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
        name=name,
    )


def _meta(**kw: Any) -> ModelMeta:
    base: dict[str, Any] = {
        "version": "0.0.1",
        "licence": "BSD-3-Clause",
        "provenance": {"framework": "onnx.helper", "builder": "cnnpipe.testing.onnx_models"},
        "description": "Tiny random test model (no training), for pipeline tests.",
    }
    base.update(kw)
    return ModelMeta.from_dict(base)


def segment_model(
    path: str | os.PathLike[str],
    *,
    bands: Sequence[str] = ("r",),
    classes: Sequence[str] = ("background", "star", "galaxy"),
    pooled: bool = True,
    width: int = 4,
    seed: int = 0,
    name: str = "seg",
) -> ModelMeta:
    """A fully convolutional multi-class segmenter (softmax probabilities).

    ``pooled=True``: a one-level U-Net (receptive-field radius 5, halo 6, multiple 2);
    ``pooled=False``: three 3x3 convolutions (radius 3, halo 3, multiple 1).
    """
    rng = np.random.default_rng(seed)
    nb, nc = len(bands), len(classes)
    inits: list[onnx.TensorProto] = []
    nodes = [_conv(rng, nb, width, "enc", inits, "image", "enc"),
             helper.make_node("Relu", ["enc"], ["enc_r"])]
    if pooled:
        inits.append(_init("scales", np.array([1.0, 1.0, 2.0, 2.0])))
        nodes += [
            helper.make_node("AveragePool", ["enc_r"], ["down"], kernel_shape=[2, 2],
                             strides=[2, 2]),
            _conv(rng, width, width, "mid", inits, "down", "mid"),
            helper.make_node("Relu", ["mid"], ["mid_r"]),
            helper.make_node("Resize", ["mid_r", "", "scales"], ["up"], mode="nearest"),
            helper.make_node("Add", ["enc_r", "up"], ["feat"]),
        ]
        halo, multiple = 6, 2
    else:
        nodes += [_conv(rng, width, width, "mid", inits, "enc_r", "mid"),
                  helper.make_node("Relu", ["mid"], ["feat"])]
        halo, multiple = 3, 1
    nodes += [_conv(rng, width, nc, "head", inits, "feat", "logits"),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", nb, "H", "W"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", nc, "H", "W"])],
        inits,
    )
    meta = _meta(
        name=name, task="segment", bands=list(bands),
        input={"name": "image", "patch": None, "multiple": multiple, "halo": halo},
        output={"name": "probs", "kind": "probabilities", "classes": list(classes)},
        normalisation={"method": "asinh", "params": {"scale": 1.0, "offset": 0.0}},
    )
    write_model(graph, meta, path)
    return meta


def craters_model(
    path: str | os.PathLike[str],
    *,
    bands: Sequence[str] = ("r",),
    logits: bool = False,
    threshold: float = 0.5,
    r_max: float = 16.0,
    seed: int = 1,
    name: str = "craters",
) -> ModelMeta:
    """A rim heat-map model: one 3x3 convolution and a sigmoid (halo 1).

    ``logits=True`` leaves the sigmoid to the pipeline (output kind ``logits``).
    ``r_max`` (px, ``postprocess.r_max``) is the largest crater radius searched; it
    sets the context the crater head sees around each unit.
    """
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    out = "logits" if logits else "heat"
    nodes = [_conv(rng, len(bands), 1, "rim", inits, "image", "logits")]
    if not logits:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["heat"]))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", len(bands), "H", "W"])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 1, "H", "W"])],
        inits,
    )
    meta = _meta(
        name=name, task="craters", bands=list(bands),
        input={"name": "image", "patch": None, "multiple": 1, "halo": 1},
        output={"name": out, "kind": "logits" if logits else "heatmap", "classes": ["rim"]},
        normalisation={"method": "fixed", "params": {"mean": [0.0] * len(bands),
                                                     "std": [1.0] * len(bands)}},
        postprocess={"threshold": threshold, "r_max": r_max},
    )
    write_model(graph, meta, path)
    return meta


def classify_model(
    path: str | os.PathLike[str],
    *,
    bands: Sequence[str] = ("r",),
    classes: Sequence[str] = ("smooth", "featured"),
    patch: int = 16,
    seed: int = 2,
    name: str = "morph",
) -> ModelMeta:
    """A fixed-patch classifier: conv3x3-relu, global average pool, linear, softmax."""
    rng = np.random.default_rng(seed)
    nb, nc, width = len(bands), len(classes), 4
    inits: list[onnx.TensorProto] = []
    w = rng.normal(0.0, 1.0, size=(width, nc))
    inits += [_init("fc.w", w), _init("fc.b", rng.normal(0.0, 0.1, size=nc))]
    nodes = [
        _conv(rng, nb, width, "conv", inits, "image", "conv"),
        helper.make_node("Relu", ["conv"], ["conv_r"]),
        helper.make_node("GlobalAveragePool", ["conv_r"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", nb, patch, patch])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", nc])],
        inits,
    )
    meta = _meta(
        name=name, task="classify", bands=list(bands),
        input={"name": "image", "patch": [patch, patch], "multiple": 1, "halo": 0},
        output={"name": "probs", "kind": "probabilities", "classes": list(classes)},
        normalisation={"method": "asinh", "params": {"scale": 1.0, "offset": 0.0}},
    )
    write_model(graph, meta, path)
    return meta


def identity_model(
    path: str | os.PathLike[str], *, band: str = "r", name: str = "identity",
    r_max: float | None = None,
) -> ModelMeta:
    """Output = input, declared as a one-band heat map (no normalisation, halo 0).

    Its stored ``prob`` is the input image cast to float16: stitching must give the
    input back.  On an image that *is* a rim heat map it is a perfect crater model;
    ``r_max`` (px) sets ``postprocess.r_max`` (default: the pipeline's, 60 px).
    """
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["heat"])], name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("heat", TensorProto.FLOAT, ["N", 1, "H", "W"])],
    )
    meta = _meta(
        name=name, task="craters", bands=[band],
        input={"name": "image", "patch": None, "multiple": 1, "halo": 0},
        output={"name": "heat", "kind": "heatmap", "classes": ["value"]},
        normalisation={"method": "none"},
        postprocess={} if r_max is None else {"r_max": r_max},
    )
    write_model(graph, meta, path)
    return meta


def level_model(
    path: str | os.PathLike[str],
    *,
    levels: Sequence[float] = (1.0, 3.0),
    gain: float = 50.0,
    band: str = "r",
    name: str = "levels",
) -> ModelMeta:
    """A per-pixel segmenter: class ``k`` where ``levels[k-1] < value < levels[k]``.

    A 1x1 convolution with logits ``gain * (k * x - sum(levels[:k]))`` and a softmax
    (no normalisation, halo 0): its class mask is the input thresholded at ``levels``,
    independent of the tiling, so segment catalogs can be checked exactly against
    :func:`scipy.ndimage.label` of the thresholded image.  Classes ``background``,
    ``level1``, ... (``len(levels) + 1`` of them).
    """
    nc = len(levels) + 1
    w = np.array([gain * k for k in range(nc)]).reshape(nc, 1, 1, 1)
    b = np.array([-gain * float(sum(levels[:k])) for k in range(nc)])
    inits = [_init("lv.w", w), _init("lv.b", b)]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "lv.w", "lv.b"], ["logits"], kernel_shape=[1, 1]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", nc, "H", "W"])],
        inits,
    )
    meta = _meta(
        name=name, task="segment", bands=[band],
        input={"name": "image", "patch": None, "multiple": 1, "halo": 0},
        output={"name": "probs", "kind": "probabilities",
                "classes": ["background", *(f"level{k}" for k in range(1, nc))]},
        normalisation={"method": "none"},
    )
    write_model(graph, meta, path)
    return meta


def external_data_model(path: str | os.PathLike[str], *, location: str) -> ModelMeta:
    """A :func:`craters_model` whose convolution weights are external data at ``location``.

    ``location`` is stored as written (relative to the model's folder, ``../x.bin`` or an
    absolute path).  The weights are written there unless something (a file, a symbolic
    link) already is, so a test can point the location at a link of its own.
    """
    path = os.fspath(path)
    meta = craters_model(path, name="craters")
    model = onnx.load(path)
    tensor = model.graph.initializer[0]
    blob = numpy_helper.to_array(tensor).tobytes()
    target = os.path.join(os.path.dirname(os.path.abspath(path)), location)
    if not os.path.lexists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(blob)
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(blob)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)
    return meta
