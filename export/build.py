"""Build the module an export names: built-in architecture or ``module:factory``, weights.

Checkpoints load with ``torch.load(weights_only=True)``; mismatches are listed.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnpipe.errors import ConfigError, ExportError
from cnnpipe.export.architectures import get_arch
from cnnpipe.export.request import ExportRequest
from cnnpipe.modelmeta import OutputKind, Task

__all__ = ["build_module", "import_factory", "load_checkpoint", "state_dict_sha256"]

_log = logging.getLogger(__name__)


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 of the module's state_dict: each key, dtype, shape and bytes, in key order."""
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_checkpoint(module: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into ``module`` with ``torch.load(weights_only=True)``.

    Accepts a state_dict or a dict holding one under ``state_dict`` or
    ``model_state_dict``; a ``module.`` prefix (DataParallel) is stripped.

    Raises
    ------
    ExportError
        Unreadable checkpoint, or keys/shapes that do not fit the module (listed).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: no such checkpoint file."
        raise ExportError(msg)
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        msg = (
            f"{path}: cannot load the checkpoint with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Save model.state_dict() rather than the whole model."
        )
        raise ExportError(msg) from None
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        msg = f"{path}: expected a state_dict of tensors. Got {type(ckpt).__name__}."
        raise ExportError(msg)
    if ckpt and all(k.startswith("module.") for k in ckpt):
        ckpt = {k.removeprefix("module."): v for k, v in ckpt.items()}
    own = module.state_dict()
    missing = sorted(set(own) - set(ckpt))
    unexpected = sorted(set(ckpt) - set(own))
    shapes = [
        f"{k} {list(ckpt[k].shape)} vs model {list(own[k].shape)}"
        for k in sorted(set(own) & set(ckpt))
        if tuple(ckpt[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        ):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label} {items[:5]}{more}")
        msg = (
            f"{path}: the checkpoint does not fit the model: {'; '.join(parts)}. "
            "Check the architecture, its options (--arch-opt), --bands and --classes."
        )
        raise ExportError(msg)
    module.load_state_dict(ckpt, strict=True)


def import_factory(spec: str) -> Callable[..., Any]:
    """Import ``module:factory`` (a dotted module path and an attribute in it)."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        msg = f"Expected a factory as 'module:function'. Got {spec!r}."
        raise ConfigError(msg)
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:
        msg = (
            f"Cannot import module {mod_name!r} for factory {spec!r}: "
            f"{type(exc).__name__}: {exc}."
        )
        raise ConfigError(msg) from None
    obj: Any = mod
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            msg = f"Module {mod_name!r} has no attribute {attr!r} (factory {spec!r})."
            raise ConfigError(msg)
    if not callable(obj):
        msg = f"Expected {spec!r} to be callable. Got {type(obj).__name__}."
        raise ConfigError(msg)
    return obj  # type: ignore[no-any-return]


def _call_factory(
    factory: Callable[..., Any], spec: str, *, in_channels: int, num_classes: int | None,
    options: dict[str, int],
) -> nn.Module:
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = dict(options)
    if "in_channels" in params or var_kw:
        kwargs["in_channels"] = in_channels
    if num_classes is not None and ("num_classes" in params or var_kw):
        kwargs["num_classes"] = num_classes
    try:
        module = factory(**kwargs)
    except Exception as exc:
        msg = f"Factory {spec!r} failed with {sorted(kwargs)}: {type(exc).__name__}: {exc}."
        raise ExportError(msg) from None
    if not isinstance(module, nn.Module):
        msg = f"Expected factory {spec!r} to return a torch.nn.Module. Got {type(module).__name__}."
        raise ExportError(msg)
    return module


def build_module(request: ExportRequest) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Build the module a request names and its default metadata document.

    Returns
    -------
    (module in eval mode, default metadata document, architecture provenance)
    """
    src = request.source or ""
    nb = len(request.bands)
    if ":" not in src:
        spec = get_arch(src)
        info = spec.info
        if request.task is not None and request.task != info.task.value:
            msg = (
                f"Architecture {src} is a {info.task.value} model. Got --task {request.task}; "
                f"drop --task or use a {request.task} architecture."
            )
            raise ConfigError(msg)
        options = dict(request.options)
        if request.patch is not None and "patch" in info.options:
            options["patch"] = request.patch
        opts = spec.resolve_options(options)
        classes = request.classes or info.classes
        module = spec.build(nb, len(classes), opts)
        patch = spec.patch(opts)
        defaults: dict[str, Any] = {
            "name": src,
            "task": info.task.value,
            "bands": list(request.bands),
            "input": {"name": "input", "patch": [patch, patch] if patch else None,
                      "multiple": spec.multiple(opts), "halo": 0},
            "output": {"name": "output", "kind": info.output_kind.value,
                       "classes": list(info.classes)},
            "normalisation": {"method": info.normalisation.method.value,
                              "params": dict(info.normalisation.params)},
            "postprocess": dict(info.postprocess),
            "description": info.description,
        }
        arch = {"architecture": src, "options": opts}
    else:
        factory = import_factory(src)
        n_classes = len(request.classes) if request.classes else None
        module = _call_factory(
            factory, src, in_channels=nb, num_classes=n_classes, options=dict(request.options)
        )
        task = request.task
        if task is None:
            msg = f"Expected --task (classify, craters or segment) for factory {src!r}."
            raise ConfigError(msg)
        multiple = request.multiple or int(getattr(module, "multiple", 1))
        defaults = {
            "name": src.rpartition(":")[2].rpartition(".")[2],
            "task": task,
            "bands": list(request.bands),
            "input": {"name": "input", "patch": None, "multiple": multiple, "halo": 0},
            "output": {"name": "output", "classes": [],
                       "kind": OutputKind.HEATMAP.value if task == Task.CRATERS.value
                       else OutputKind.PROBABILITIES.value},
        }
        arch = {"architecture": src, "options": dict(request.options)}
    if request.weights is not None:
        load_checkpoint(module, request.weights)
    else:
        _log.warning("no --weights given: exporting randomly initialised weights")
    return module.eval(), defaults, arch
