"""The suite's models: one U-Net in torch and as cnnpipe packages, and two trivial models.

The U-Net is ``segment_unet`` (base 8, depth 3: the architecture of the bundled
``demo_segment``) carrying the bundled model's trained weights: its ONNX initializers are
loaded into the torch module (convolutions as they are; each BatchNorm, which the
exporter folded into the preceding convolution, becomes an identity carrying the folded
bias), so torch and onnxruntime compute the same function and the masks mean something.
Without a bundled ``demo_segment`` the weights are a seeded random init (weights' values
do not change the cost of a forward pass).  The fp32 package is made from the torch
module's checkpoint by ``cnnpipe export`` (the product's exporter: dynamo export, parity
check against torch, receptive-field halo); fp16 and int8 variants by
``cnnpipe export --from-onnx`` on that package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, log

__all__ = ["UNet", "cheap_model", "export_variant", "export_width", "identity_segment_model",
           "make_unet"]

NAME = "bench_segment"


@dataclass(frozen=True, kw_only=True)
class UNet:
    """The benchmark U-Net as a torch module (eval mode) and as a cnnpipe fp32 package."""

    module: Any
    checkpoint: Path
    fp32: Path
    weights: str
    normalisation: str
    export_s: float
    reused: bool


def _demo_weights(module: Any) -> tuple[dict[str, Any], Any] | None:
    """The bundled demo_segment's weights as a state_dict of ``module``, and its metadata."""
    import onnx
    import torch
    from onnx import numpy_helper

    from cnnpipe.modelmeta import read_model_meta
    from cnnpipe.models import demo_model_paths

    path = demo_model_paths().get("demo_segment")
    if path is None:
        return None
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    state = {k: v.clone() for k, v in module.state_dict().items()}
    mods = dict(module.named_modules())
    for name, arr in inits.items():
        t = torch.from_numpy(arr.copy())
        if name.endswith(".weight_bias"):  # a folded BatchNorm's bias: conv i -> BN i+1
            prefix, idx, _ = name.removesuffix("_bias").rsplit(".", 2)
            bn = f"{prefix}.{int(idx) + 1}"
            if bn not in mods or f"{bn}.bias" not in state:
                return None
            state[f"{bn}.bias"] = t
            state[f"{bn}.weight"] = torch.ones_like(state[f"{bn}.weight"])
            state[f"{bn}.running_mean"] = torch.zeros_like(state[f"{bn}.running_mean"])
            # 1 / sqrt(var + eps) == 1: the BatchNorm adds the bias and nothing else
            state[f"{bn}.running_var"] = torch.full_like(state[f"{bn}.running_var"],
                                                         1.0 - mods[bn].eps)
        elif name in state and tuple(state[name].shape) == tuple(t.shape):
            state[name] = t
        else:
            return None
    return state, read_model_meta(path)


def make_unet(folder: Path) -> UNet:
    """Build the torch U-Net, save its checkpoint, export it with ``cnnpipe export``.

    An fp32 package already in ``folder`` with the same weights (``weights_sha256``)
    and nothing left for today's graph rewrites is reused.
    """
    import onnx
    import torch

    from cnnpipe.export.architectures import segment_unet
    from cnnpipe.export.build import state_dict_sha256
    from cnnpipe.export.graphopt import optimise_graph
    from cnnpipe.modelmeta import read_model_meta
    from cnnpipe.testing.sky import SKY_CLASSES

    folder.mkdir(parents=True, exist_ok=True)
    module = segment_unet(1, len(SKY_CLASSES))
    found = _demo_weights(module)
    classes = list(SKY_CLASSES)
    norm = "asinh:scale=34.082,offset=100.277"
    if found is None:
        torch.manual_seed(0)
        module = segment_unet(1, len(SKY_CLASSES))
        weights = ("seeded random init (torch.manual_seed(0)): no bundled demo_segment whose "
                   "weights fit; values do not change the cost of a forward pass")
    else:
        state, meta = found
        module.load_state_dict(state)
        classes = list(meta.output.classes)
        n = meta.normalisation
        if n.method.value == "asinh":
            norm = "asinh:" + ",".join(f"{k}={v}" for k, v in n.params.items())
        weights = ("the bundled demo_segment's trained weights (demo model trained on "
                   "simulated sky), loaded into segment_unet")
    module.eval()
    ckpt = folder / "segment_unet.pt"
    torch.save(module.state_dict(), ckpt)
    fp32 = folder / f"{NAME}_fp32.onnx"
    sha = state_dict_sha256(module)
    # reuse a package of these weights only if today's exporter would write the same
    # graph (a package from before a graph rewrite existed is exported again)
    reused = (fp32.exists() and read_model_meta(fp32).weights_sha256 == sha
              and not optimise_graph(onnx.load(str(fp32)))[1])
    t0 = time.perf_counter()
    if not reused:
        log(f"exporting {fp32.name} with cnnpipe export ({weights.split(':')[0]}) ...")
        _cnnpipe(["export", "segment_unet", "--weights", str(ckpt), "--task", "segment",
                  "--bands", "r", "--classes", ",".join(classes), "--normalisation", norm,
                  "--name", NAME, "--out", str(fp32)], folder / "export_fp32.log")
    return UNet(module=module, checkpoint=ckpt, fp32=fp32, weights=weights,
                normalisation=norm, export_s=time.perf_counter() - t0, reused=reused)


def export_variant(fp32: Path, precision: str, calibration: Path) -> tuple[Path, float]:
    """``cnnpipe export --from-onnx`` of the fp32 package at ``fp16`` or ``int8``.

    int8: static QDQ, calibrated on ``calibration`` (a FITS image); both variants are
    checked against fp32 on real patches of it by the exporter.  Returns the path and
    the export's seconds.
    """
    from cnnpipe.modelmeta import read_model_meta

    meta = read_model_meta(fp32).to_dict()
    for key in ("provenance", "weights_sha256"):
        meta.pop(key, None)
    meta_json = fp32.with_name(f"{NAME}.meta.json")
    meta_json.write_text(json.dumps(meta))
    out = fp32.with_name(f"{NAME}_{precision}.onnx")
    cmd = ["export", "--from-onnx", str(fp32), "--metadata", str(meta_json), "--task",
           "segment", "--bands", ",".join(meta["bands"]), "--out", str(out),
           "--parity-fits", str(calibration)]
    cmd += (["--quantize", "int8", "--calibrate", str(calibration)] if precision == "int8"
            else ["--precision", precision])
    t0 = time.perf_counter()
    _cnnpipe(cmd, out.with_suffix(".log"))
    return out, time.perf_counter() - t0


def export_width(folder: Path, base: int, precision: str, *, calibration: Path,
                 normalisation: str) -> Path:
    """``segment_unet`` with ``base`` channels and seeded random weights, fp32 or int8.

    Only its speed means something: with random weights the exporter's int8 accuracy
    checks are opened (they still run and are logged).  Exported afresh every time.
    """
    out = folder / f"width{base}_{precision}.onnx"
    cmd = ["export", "segment_unet", "--arch-opt", f"base={base}", "--task", "segment",
           "--bands", "r", "--normalisation", normalisation, "--seed", "0", "--out", str(out)]
    if precision == "int8":
        cmd += ["--quantize", "int8", "--calibrate", str(calibration), "--min-agreement", "0",
                "--int8-tolerance", "1e9"]
    _cnnpipe(cmd, out.with_suffix(".log"))
    return out


def _cnnpipe(args: list[str], log_path: Path) -> None:
    with open(log_path, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "cnnpipe", *args], stdout=f,
                            stderr=subprocess.STDOUT, cwd=REPO).returncode
    if rc:
        msg = f"cnnpipe {' '.join(args)} exited {rc}; see {log_path}"
        raise RuntimeError(msg)


def identity_segment_model(path: Path) -> Path:
    """Output = input: the image in both planes of a two-class segment model, halo 0.

    No normalisation; its stored ``prob`` is the image cast to float16 (twice: a segment
    model needs two classes) and its mask all 0 (argmax of a tie is the first class, the
    background), so its catalog is empty: what remains of ``cnnpipe run`` is reading,
    stitching and writing.  (``cnnpipe.testing.onnx_models.identity_model`` is a crater
    model, whose head would search the image for rings.)
    """
    from onnx import TensorProto, helper

    from cnnpipe.modelmeta import ModelMeta
    from cnnpipe.testing.onnx_models import write_model

    graph = helper.make_graph(
        [helper.make_node("Concat", ["image", "image"], ["value"], axis=1)], "identity_segment",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 2, "H", "W"])],
    )
    meta = ModelMeta.from_dict({
        "name": "identity", "version": "0.0.1", "task": "segment", "bands": ["r"],
        "input": {"name": "image", "patch": None, "multiple": 1, "halo": 0},
        "output": {"name": "value", "kind": "probabilities",
                   "classes": ["background", "copy"]},
        "normalisation": {"method": "none"}, "licence": "BSD-3-Clause",
        "provenance": {"framework": "onnx.helper", "builder": "benchmarks.suite.assets"},
        "description": "Identity (output = input, twice) for the I/O-ceiling benchmark.",
    })
    write_model(graph, meta, path)
    return path


#: sky level and noise of the simulated images (``make_sky_catalog``): ~100 and ~11.4
CHEAP_LEVELS = (160.0, 400.0)


def cheap_model(path: Path) -> Path:
    """``level_model``: a 1x1 convolution + softmax; classes at 5 and 25 sigma above sky."""
    from cnnpipe.testing.onnx_models import level_model

    level_model(path, levels=CHEAP_LEVELS, name="cheap")
    return path
