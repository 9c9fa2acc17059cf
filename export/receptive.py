"""Receptive field of a fully convolutional model, and the halo that makes tiling exact.

The pipeline runs a fully convolutional model on patch origins aligned to the model's
``multiple`` and crops ``halo`` pixels from each side of the output.  The cropped output
equals the whole-image output exactly when every kept output pixel's receptive field lies
inside the patch; :func:`receptive_field` measures that extent empirically and
:func:`halo_for` rounds it up to the alignment grid.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from cnnpipe.errors import ExportError

__all__ = ["ReceptiveField", "halo_for", "receptive_field"]

_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardtanh, nn.Mish, nn.PReLU,
)


@dataclass(frozen=True)
class ReceptiveField:
    """Measured receptive-field extents in input pixels.

    Attributes
    ----------
    radius : int
        The largest of ``up``, ``down``, ``left``, ``right``.
    up, down, left, right : int
        How far inputs that influence an aligned ``multiple x multiple`` output block
        reach beyond that block on each side.
    multiple : int
        The alignment the block (and the patch origins) follow.
    """

    radius: int
    up: int
    down: int
    left: int
    right: int
    multiple: int

    @property
    def halo(self) -> int:
        """``radius`` rounded up to a multiple of ``multiple``."""
        return halo_for(self.radius, self.multiple)


def halo_for(radius: int, multiple: int) -> int:
    """Round a receptive-field radius up to the alignment grid: ``ceil(r / m) * m``."""
    return int(math.ceil(radius / multiple) * multiple)


def _linearised(module: nn.Module) -> nn.Module:
    """Return a float64 copy whose gradients reach every pixel of the receptive field.

    Max-pooling passes gradient only to the window's maximum and ReLU only where the input
    is positive, so a single gradient can miss parts of the field.  Swapping max-pool for
    average-pool with the same window and pointwise activations for identity keeps the
    geometry and makes every path carry gradient.
    """
    m = copy.deepcopy(module).double().eval()
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(
                    parent,
                    name,
                    nn.AvgPool2d(
                        child.kernel_size,
                        child.stride,
                        child.padding,  # type: ignore[arg-type]
                        ceil_mode=child.ceil_mode,
                        count_include_pad=False,
                    ),
                )
            elif isinstance(child, _ACTIVATIONS):
                setattr(parent, name, nn.Identity())
    return m


def _reinit(module: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.running_var is not None:
            sub.running_var.uniform_(0.5, 2.0)
            assert sub.running_mean is not None
            sub.running_mean.normal_()


def receptive_field(
    module: nn.Module,
    *,
    in_channels: int,
    multiple: int = 1,
    trials: int = 3,
    seed: int = 0,
    max_size: int = 2048,
) -> ReceptiveField:
    """Measure the receptive field of a fully convolutional ``module``.

    For each trial (the module's own weights first, then random re-initialisations), a
    random input ``(1, in_channels, s, s)`` goes through a float64 copy with max-pools
    replaced by average pools and activations by identity; the gradient of a randomly
    weighted sum of one aligned ``multiple x multiple`` output block (all channels) w.r.t.
    the input is non-zero exactly on the inputs that influence the block.  The extents
    of that support beyond the block, maximised over trials, are returned.  ``s`` starts
    at 64 (or ``4 * multiple``) and doubles while the support touches the input border.

    Measuring from an aligned block rather than one pixel covers every phase of the
    pooling grid: with patch origins on the grid, ``halo >= radius`` makes each kept
    output pixel's field fit in its patch.

    Raises
    ------
    ExportError
        The output's spatial size differs from the input's, or the field exceeds
        ``max_size`` (pass ``--halo`` explicitly then).
    """
    size = max(64, 4 * multiple)
    size = int(math.ceil(size / multiple) * multiple)
    base = _linearised(module)
    while True:
        up = down = left = right = 0
        touches = False
        for t in range(trials):
            m = base if t == 0 else copy.deepcopy(base)
            if t > 0:
                _reinit(m, seed + t)
            gen = torch.Generator().manual_seed(seed + 1000 * t)
            x = torch.randn(1, in_channels, size, size, generator=gen, dtype=torch.float64)
            x.requires_grad_(True)
            try:
                out = m(x)
            except Exception as exc:
                msg = (
                    "Expected a fully convolutional model that runs on a "
                    f"{size}x{size} input to measure its receptive field. Got "
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}; "
                    "declare the halo with --halo N."
                )
                raise ExportError(msg) from None
            if out.ndim != 4 or tuple(out.shape[-2:]) != (size, size):
                msg = (
                    "Expected a fully convolutional model whose output (n, c, y, x) has the "
                    f"input's spatial size {size}x{size}. Got output shape {tuple(out.shape)}; "
                    "give --patch for a fixed-size model or --halo N explicitly."
                )
                raise ExportError(msg)
            b0 = (size // 2) // multiple * multiple
            b1 = b0 + multiple
            block = out[:, :, b0:b1, b0:b1]
            weights = torch.rand(block.shape, generator=gen, dtype=torch.float64) + 0.5
            (block * weights).sum().backward()
            assert x.grad is not None
            support = x.grad.detach().abs().sum(dim=(0, 1)) > 0
            rows = torch.nonzero(support.any(dim=1)).flatten()
            cols = torch.nonzero(support.any(dim=0)).flatten()
            if rows.numel() == 0:
                continue
            r0, r1 = int(rows.min()), int(rows.max())
            c0, c1 = int(cols.min()), int(cols.max())
            touches |= r0 == 0 or c0 == 0 or r1 == size - 1 or c1 == size - 1
            up, down = max(up, b0 - r0), max(down, r1 - (b1 - 1))
            left, right = max(left, b0 - c0), max(right, c1 - (b1 - 1))
        if not touches:
            break
        size *= 2
        if size > max_size:
            msg = (
                f"The receptive field reaches beyond a {max_size // 2}-pixel input; "
                "pass --halo N explicitly."
            )
            raise ExportError(msg)
    radius = max(up, down, left, right, 0)
    return ReceptiveField(radius, up, down, left, right, multiple)
