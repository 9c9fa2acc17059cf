"""Receptive field, halo, and the property the pipeline relies on: tiled == whole image."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from cnnpipe.errors import ExportError  # noqa: E402
from cnnpipe.export.architectures import crater_unet, galaxy_cnn  # noqa: E402
from cnnpipe.export.receptive import halo_for, receptive_field  # noqa: E402
from cnnpipe.normalise import normalise  # noqa: E402


def test_halo_rounds_up_to_multiple() -> None:
    assert halo_for(22, 4) == 24
    assert halo_for(24, 4) == 24
    assert halo_for(0, 8) == 0
    assert halo_for(1, 8) == 8


@settings(max_examples=12, deadline=None)
@given(
    kernels=st.lists(st.sampled_from([1, 3, 5]), min_size=1, max_size=4),
    dilation=st.integers(1, 3),
)
def test_conv_stack_radius_is_analytic(kernels: list[int], dilation: int) -> None:
    """A stack of stride-1 'same' convs reaches sum((k - 1) / 2 * d) pixels."""
    layers: list[nn.Module] = []
    for k in kernels:
        pad = (k - 1) // 2 * dilation
        layers += [nn.Conv2d(2, 2, k, padding=pad, dilation=dilation), nn.ReLU()]
    rf = receptive_field(nn.Sequential(*layers), in_channels=2, multiple=1, trials=1)
    expected = sum((k - 1) // 2 * dilation for k in kernels)
    assert rf.radius == expected
    assert (rf.up, rf.down, rf.left, rf.right) == (expected,) * 4


@pytest.mark.parametrize(("depth", "radius"), [(1, 8), (2, 22), (3, 46)])
def test_unet_radius(depth: int, radius: int) -> None:
    # encoder+decoder 3x3 convs reach 4 * (2**depth - 1) + 2**(depth + 1) pixels; the
    # 2x2 pooling grid adds 2 more for depth >= 2 (measured from an aligned block).
    rf = receptive_field(crater_unet(1, base=2, depth=depth), in_channels=1, multiple=2**depth)
    assert rf.radius == radius
    assert rf.halo == halo_for(radius, 2**depth)


def test_trained_weights_do_not_hide_the_field() -> None:
    """Zero weights on the model's own copy must not shrink the measured field."""
    m = crater_unet(1, base=2, depth=2)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    assert receptive_field(m, in_channels=1, multiple=4).radius == 22


def test_radius_is_the_true_support_of_the_real_network() -> None:
    """Without linearisation, the trained-path gradient reaches exactly ``radius``.

    So the measurement is tight: one grid step less halo would drop inputs that
    influence kept output pixels.
    """
    torch.manual_seed(0)
    m = crater_unet(2, base=4, depth=2).eval().double()
    rf = receptive_field(m, in_channels=2, multiple=4)
    x = torch.randn(1, 2, 128, 128, dtype=torch.float64, requires_grad=True)
    m(x)[:, :, 64:68, 64:68].sum().backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3)) > 0).flatten()
    assert (64 - int(rows.min()), int(rows.max()) - 67) == (rf.radius, rf.radius) == (22, 22)
    assert rf.halo - 4 < rf.radius


def test_receptive_field_rejects_fixed_size_models() -> None:
    with pytest.raises(ExportError, match="fully convolutional"):
        receptive_field(galaxy_cnn(1, 3, patch=16, width=2, depth=2), in_channels=1)


def _tiled(sess: ort.InferenceSession, img: np.ndarray, *, core: int, halo: int) -> np.ndarray:
    """Run patches of core + 2 * halo on a zero-padded image; keep each core."""
    c, h, w = img.shape
    padded = np.pad(img, ((0, 0), (halo, halo), (halo, halo)))
    origins = [(y, x) for y in range(0, h, core) for x in range(0, w, core)]
    batch = np.stack(
        [padded[:, y : y + core + 2 * halo, x : x + core + 2 * halo] for y, x in origins]
    )
    out = sess.run(None, {"input": batch})[0]
    result = np.zeros((out.shape[1], h, w), np.float32)
    for (y, x), o in zip(origins, out):
        result[:, y : y + core, x : x + core] = o[:, halo : halo + core, halo : halo + core]
    return result


@pytest.mark.parametrize("arch", ["crater_unet", "segment_unet"])
def test_tiles_equal_whole_image_in_the_interior(exported: dict, arch: str) -> None:
    report = exported[arch]
    meta = report.meta
    halo, m = meta.input.halo, meta.input.multiple
    assert halo == 24
    assert m == 4
    rng = np.random.default_rng(1)
    raw = 100 + 10 * rng.standard_normal((1, 2, 256, 256)).astype(np.float32)
    raw[0, :, 100:110, 50:60] += 500
    img = normalise(raw, meta.normalisation)[0]
    sess = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    whole = sess.run(None, {"input": img[None]})[0][0]
    inner = (slice(None), slice(halo, 256 - halo), slice(halo, 256 - halo))

    tiled = _tiled(sess, img, core=64, halo=halo)
    assert np.abs(tiled[inner] - whole[inner]).max() < 1e-4
