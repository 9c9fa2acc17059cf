"""Reference architectures (DESIGN §4), small enough to train on a laptop CPU.

Each constructor takes ``in_channels`` (the number of bands) and ``num_classes`` and ends
in its activation (softmax or sigmoid), so the exported graph outputs probabilities or a
heat map directly.  :data:`ARCH_SPECS` binds them to the torch-free table
:data:`cnnpipe.inspection.ARCHITECTURES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnpipe.errors import ConfigError
from cnnpipe.inspection import ARCHITECTURES, ArchInfo

__all__ = [
    "ARCH_SPECS",
    "ArchSpec",
    "GalaxyCNN",
    "LensResNet",
    "UNet",
    "crater_unet",
    "galaxy_cnn",
    "get_arch",
    "lens_resnet",
    "segment_unet",
]


def _conv_bn_relu(c_in: int, c_out: int, *, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class GalaxyCNN(nn.Module):
    """Galaxy-morphology classifier: ``depth`` conv-pool blocks, then a dense head.

    Block ``i``: 3x3 conv (``width * 2**i`` channels) - BatchNorm - ReLU - 2x2 max-pool.
    Head: flatten ``(width * 2**(depth-1), patch / 2**depth, patch / 2**depth)`` - dense
    (``hidden``) - ReLU - dropout - dense (``num_classes``) - softmax.  Input
    ``(n, in_channels, patch, patch)``, output ``(n, num_classes)`` probabilities.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 3,
        *,
        patch: int = 32,
        width: int = 16,
        depth: int = 3,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if depth < 1 or patch % 2**depth:
            msg = f"Expected galaxy_cnn patch divisible by 2**depth={2**depth}. Got {patch}."
            raise ConfigError(msg)
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            layers += [*_conv_bn_relu(c, width * 2**i), nn.MaxPool2d(2)]
            c = width * 2**i
        self.features = nn.Sequential(*layers)
        side = patch // 2**depth
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.25),
            nn.Linear(hidden, num_classes),
            nn.Softmax(dim=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(n, num_classes)`` class probabilities for ``(n, c, patch, patch)``."""
        out: torch.Tensor = self.head(self.features(x))
        return out


class _BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 convs with an identity/1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(c_in, c_out, stride=stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(body(x) + shortcut(x))``."""
        out: torch.Tensor = self.relu(self.body(x) + self.shortcut(x))
        return out


class LensResNet(nn.Module):
    """ResNet-style strong-lens finder (in the spirit of Lanusse et al. 2018, CMU DeepLens).

    Stem 3x3 conv (``width``), then ``stages`` stages of ``blocks`` basic residual blocks
    (stage ``i`` has ``width * 2**i`` channels, stride 2 from the second stage), global
    average pool, dense, softmax.  Input ``(n, in_channels, patch, patch)``, output
    ``(n, num_classes)`` probabilities.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 2,
        *,
        width: int = 16,
        stages: int = 3,
        blocks: int = 1,
    ) -> None:
        super().__init__()
        if stages < 1 or blocks < 1:
            msg = f"Expected lens_resnet stages >= 1 and blocks >= 1. Got {stages}, {blocks}."
            raise ConfigError(msg)
        layers: list[nn.Module] = list(_conv_bn_relu(in_channels, width))
        c = width
        for i in range(stages):
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(_BasicBlock(c, width * 2**i, stride))
                c = width * 2**i
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes), nn.Softmax(dim=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(n, num_classes)`` class probabilities."""
        out: torch.Tensor = self.head(self.features(x))
        return out


class _DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(*_conv_bn_relu(c_in, c_out), *_conv_bn_relu(c_out, c_out))


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with 'same' padding, as DeepMoon and Morpheus use.

    ``depth`` encoder levels (two 3x3 conv-BN-ReLU, 2x2 max-pool; level ``i`` has
    ``base * 2**i`` channels), a bottleneck, and ``depth`` decoder levels (2x2 transposed
    conv up, concatenation with the skip, two 3x3 convs), then a 1x1 conv to
    ``out_channels`` and ``activation`` ('sigmoid' or 'softmax' over channels).

    Input ``(n, in_channels, y, x)`` with ``y`` and ``x`` multiples of :attr:`multiple`
    ``= 2**depth``; output ``(n, out_channels, y, x)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        base: int = 8,
        depth: int = 3,
        activation: str = "sigmoid",
    ) -> None:
        super().__init__()
        if depth < 1 or base < 1:
            msg = f"Expected U-Net depth >= 1 and base >= 1. Got depth={depth}, base={base}."
            raise ConfigError(msg)
        if activation not in ("sigmoid", "softmax"):
            msg = f"Expected U-Net activation 'sigmoid' or 'softmax'. Got {activation!r}."
            raise ConfigError(msg)
        self.multiple = 2**depth
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths[:-1]:
            self.down.append(_DoubleConv(c, w))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _DoubleConv(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.dec.append(_DoubleConv(2 * widths[i], widths[i]))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.activation: nn.Module = (
            nn.Sigmoid() if activation == "sigmoid" else nn.Softmax(dim=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``(n, out_channels, y, x)`` heat map / class probabilities."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        out: torch.Tensor = self.activation(self.head(x))
        return out


def galaxy_cnn(
    in_channels: int,
    num_classes: int = 3,
    *,
    patch: int = 32,
    width: int = 16,
    depth: int = 3,
    hidden: int = 64,
) -> GalaxyCNN:
    """Build the galaxy-morphology CNN (see :class:`GalaxyCNN`)."""
    return GalaxyCNN(
        in_channels, num_classes, patch=patch, width=width, depth=depth, hidden=hidden
    )


def lens_resnet(
    in_channels: int,
    num_classes: int = 2,
    *,
    patch: int = 64,
    width: int = 16,
    stages: int = 3,
    blocks: int = 1,
) -> LensResNet:
    """Build the ResNet lens finder (see :class:`LensResNet`); ``patch`` is metadata only."""
    del patch  # global pooling: any size works, the metadata fixes the patch
    return LensResNet(in_channels, num_classes, width=width, stages=stages, blocks=blocks)


def crater_unet(
    in_channels: int, num_classes: int = 1, *, base: int = 8, depth: int = 3
) -> UNet:
    """Build the crater-rim U-Net: one sigmoid heat-map channel (see :class:`UNet`)."""
    if num_classes != 1:
        msg = f"Expected one output channel (class) for crater_unet. Got {num_classes}."
        raise ConfigError(msg)
    return UNet(in_channels, 1, base=base, depth=depth, activation="sigmoid")


def segment_unet(
    in_channels: int, num_classes: int = 5, *, base: int = 8, depth: int = 3
) -> UNet:
    """Build the multi-class segmentation U-Net: softmax over classes (see :class:`UNet`)."""
    return UNet(in_channels, num_classes, base=base, depth=depth, activation="softmax")


@dataclass(frozen=True)
class ArchSpec:
    """A built-in architecture: its torch-free description and its constructor.

    ``factory(in_channels, num_classes, **options)`` returns the ``nn.Module``;
    :meth:`multiple` and :meth:`patch` give the geometry for a set of options.
    """

    info: ArchInfo
    factory: Callable[..., nn.Module]

    @property
    def name(self) -> str:
        """Registry name."""
        return self.info.name

    def resolve_options(self, options: dict[str, Any] | None = None) -> dict[str, int]:
        """Return the defaults updated with ``options``, rejecting unknown keys."""
        opts = dict(self.info.options)
        for key, value in (options or {}).items():
            if key not in opts:
                msg = (
                    f"Unknown option {key!r} for architecture {self.name}. "
                    f"Expected one of {sorted(opts)}."
                )
                raise ConfigError(msg)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"Expected option {key} of {self.name} to be a positive int. Got {value!r}."
                raise ConfigError(msg)
            opts[key] = value
        return opts

    def multiple(self, options: dict[str, Any] | None = None) -> int:
        """Spatial sizes must be multiples of this (``2**depth`` for the U-Nets)."""
        opts = self.resolve_options(options)
        return 2 ** opts["depth"] if self.info.fully_convolutional else 1

    def patch(self, options: dict[str, Any] | None = None) -> int | None:
        """Fixed patch side for these options (None for fully convolutional models)."""
        if self.info.fully_convolutional:
            return None
        return self.resolve_options(options).get("patch")

    def build(
        self, in_channels: int, num_classes: int, options: dict[str, Any] | None = None
    ) -> nn.Module:
        """Construct the module (random init)."""
        return self.factory(in_channels, num_classes, **self.resolve_options(options))


_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "galaxy_cnn": galaxy_cnn,
    "lens_resnet": lens_resnet,
    "crater_unet": crater_unet,
    "segment_unet": segment_unet,
}

ARCH_SPECS: dict[str, ArchSpec] = {
    name: ArchSpec(info, _FACTORIES[name]) for name, info in ARCHITECTURES.items()
}


def get_arch(name: str) -> ArchSpec:
    """Return the built-in architecture ``name``.

    Raises
    ------
    ConfigError
        For an unknown name; the message lists the known ones.
    """
    try:
        return ARCH_SPECS[name]
    except KeyError:
        msg = (
            f"Unknown architecture {name!r}. Expected one of {', '.join(sorted(ARCH_SPECS))} "
            "or 'module:factory'."
        )
        raise ConfigError(msg) from None
