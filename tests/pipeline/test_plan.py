"""Work-unit and patch geometry (cnnpipe.pipeline.plan): pure, property-tested."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnpipe.errors import ConfigError, ModelMismatchError
from cnnpipe.modelmeta import ModelMeta
from cnnpipe.pipeline.plan import (
    MAX_AUTO_BATCH,
    PIXELS_PER_CALL,
    ImagePlan,
    ModelGeometry,
    TilingMode,
    auto_batch,
    auto_patch,
    axis_units,
    conv_spans,
    make_plan,
    model_geometry,
    read_window,
    window_spans,
)


def _meta(task: str = "segment", *, patch: list[int] | None = None, multiple: int = 1,
          halo: int = 0, name: str = "m") -> ModelMeta:
    return ModelMeta.from_dict({
        "name": name, "task": task, "bands": ["r"],
        "input": {"name": "x", "patch": patch, "multiple": multiple, "halo": halo},
        "output": {"name": "y", "kind": "heatmap" if task == "craters" else "probabilities",
                   "classes": ["a", "b"]},
    })


@st.composite
def conv_cases(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    multiple = draw(st.sampled_from([1, 2, 4, 8, 16]))
    halo = draw(st.integers(0, 5)) * multiple
    patch = 2 * halo + multiple * draw(st.integers(1, 12))
    u0 = multiple * draw(st.integers(0, 50))
    length = draw(st.integers(1, 300))
    return u0, u0 + length, patch, halo, multiple


@settings(max_examples=300, deadline=None)
@given(conv_cases())
def test_conv_cores_cover_unit_exactly_once_with_halo_and_alignment(
    case: tuple[int, int, int, int, int],
) -> None:
    u0, u1, patch, halo, multiple = case
    spans = conv_spans(u0, u1, patch=patch, halo=halo, multiple=multiple)
    # contiguous, non-overlapping cores from u0 to u1
    assert spans[0].core0 == u0
    assert spans[-1].core1 == u1
    for a, b in itertools.pairwise(spans):
        assert a.core1 == b.core0
    for s in spans:
        assert s.core0 < s.core1
        assert s.start % multiple == 0, "patch origins on the multiple grid"
        assert s.core0 - s.start >= halo, "context before the core"
        assert s.start + patch - s.core1 >= halo, "context after the core"
    assert len(spans) == -(-(u1 - u0) // (patch - 2 * halo))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(1, 300), st.integers(1, 64))
def test_window_cores_cover_unit_exactly_once(u0: int, length: int, patch: int) -> None:
    u1 = u0 + length
    spans = window_spans(u0, u1, patch=patch)
    covered = np.zeros(u1 + patch, int)
    for s in spans:
        assert s.start % patch == 0
        assert s.start <= s.core0 < s.core1 <= s.start + patch
        covered[s.core0:s.core1] += 1
    assert (covered[u0:u1] == 1).all()
    assert covered.sum() == length


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.integers(7, 130))
def test_units_cover_image_exactly_once(ny: int, nx: int, tile: int) -> None:
    im = ImagePlan(key="k", shape=(ny, nx), tile=tile)
    count = np.zeros((ny, nx), int)
    for u in im.units():
        assert u.y0 == u.uy * tile
        assert u.x0 == u.ux * tile
        assert 0 < u.y1 - u.y0 <= tile
        assert 0 < u.x1 - u.x0 <= tile
        count[u.y0:u.y1, u.x0:u.x1] += 1
    assert (count == 1).all()
    assert im.n_units == len(list(im.units())) == np.prod(im.grid)
    assert sum(a[1] - a[0] for a in axis_units(ny, tile)) == ny


@settings(max_examples=60, deadline=None)
@given(
    st.integers(20, 200), st.integers(20, 200), st.sampled_from([16, 32, 48, 64]),
    st.sampled_from([1, 2, 4]), st.integers(0, 3), st.integers(0, 40),
)
def test_cores_tile_the_whole_image_and_count_matches(
    ny: int, nx: int, tile: int, multiple: int, halo_units: int, extra: int,
) -> None:
    meta = _meta(multiple=multiple, halo=halo_units * multiple)
    plan = make_plan([("k", (ny, nx), 1)], [meta], tile=tile,
                     patch=2 * halo_units * multiple + multiple + extra, batch=3)
    g = plan.models[0]
    im = plan.images[0]
    count = np.zeros((ny, nx), int)
    n = batches = 0
    for u in im.units():
        sy, sx = g.spans(0, u.y0, u.y1), g.spans(1, u.x0, u.x1)
        ry0, ry1, rx0, rx1 = read_window(u, [g])
        for a in sy:
            assert ry0 <= a.start
            assert a.start + g.patch[0] <= ry1
            for b in sx:
                assert rx0 <= b.start
                assert b.start + g.patch[1] <= rx1
                count[a.core0:a.core1, b.core0:b.core1] += 1
        n += len(sy) * len(sx)
        batches += -(-len(sy) * len(sx) // 3)
    assert (count == 1).all()
    assert plan.n_patches == n
    assert plan.n_batches == batches


def test_huge_plan_has_few_tasks_and_is_fast() -> None:
    metas = [_meta(multiple=16, halo=32, name="seg"), _meta("classify", patch=[64, 64],
                                                           name="cls")]
    t0 = time.perf_counter()
    plan = make_plan([("big", (100_000, 100_000), 3)], metas, tile=2048, patch=512, batch=8)
    n_tasks, n_patches = plan.n_tasks, plan.n_patches
    lines = plan.describe(threads_per_worker=2, model_bytes={"seg": 10_000_000})
    elapsed = time.perf_counter() - t0
    assert n_tasks == 49 * 49 < 100_000
    # seg: --patch 512 needs 5 cores per 2048 unit -> core 416, patch 480; the last unit
    # (1696 px) needs 5 too; cls: 64 px windows
    assert plan.models[0].patch == (480, 480)
    assert n_patches == (49 * 5) ** 2 + (100_000 // 64 + 1) ** 2
    assert elapsed < 1.0
    assert any("tasks: 2401" in line for line in lines)
    assert plan.memory_per_task({"seg": 10_000_000}) > 20_000_000
    # two lanes: a unit feeds them 3 batches ahead, each an input and an output
    seg, cls = plan.models
    batch_io = sum(g.batch * g.patch[0] * g.patch[1] * 4 * (3 + plan.classes[g.name])
                   for g in (seg, cls))
    assert plan.memory_per_task(lanes=2) - plan.memory_per_task() == 2 * batch_io
    assert plan.memory_per_task(lanes=1) == plan.memory_per_task()


def test_model_geometry_rounding_and_errors() -> None:
    g = model_geometry(_meta(multiple=16, halo=20), patch=200)
    assert g.halo == 32
    assert g.patch == (192, 192)
    assert g.core == (128, 128)
    assert g.mode is TilingMode.CONV
    # small images: the patch shrinks to what the largest unit plus halo needs
    g = model_geometry(_meta(multiple=16, halo=20), patch=512, max_extent=(50, 300))
    assert g.patch == (128, 368)
    # big tiles: as many patches as --patch needs, each as small as possible
    g = model_geometry(_meta(multiple=2, halo=6), patch=512, max_extent=(2048, 2048))
    assert g.patch == (422, 422)
    assert g.core == (410, 410)
    assert 5 * 410 >= 2048
    with pytest.raises(ConfigError, match=r"--patch >= 80 for model 'm'"):
        model_geometry(_meta(multiple=16, halo=32), patch=79)
    c = model_geometry(_meta("classify", patch=[24, 32]), patch=512)
    assert c.mode is TilingMode.WINDOW
    assert c.patch == (24, 32)
    assert c.halo == 0
    f = model_geometry(_meta(patch=[64, 64], halo=8, multiple=4), patch=512)
    assert f.patch == (64, 64)
    assert f.core == (48, 48)
    with pytest.raises(ModelMismatchError, match="leaves no core"):
        model_geometry(_meta(patch=[16, 16], halo=8), patch=512)


def _pushed(extent: tuple[int, int], patch: tuple[int, int], halo: int) -> int:
    """Pixels through the network to cover ``extent`` with ``patch`` (independently of
    auto_patch: counted from the patch size, not from a number of cores)."""
    ny = -(-extent[0] // (patch[0] - 2 * halo))
    nx = -(-extent[1] // (patch[1] - 2 * halo))
    return ny * nx * patch[0] * patch[1]


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 160), st.integers(1, 160), st.integers(0, 12),
       st.sampled_from([1, 2, 4, 8, 16]), st.integers(200, 20_000))
def test_auto_patch_pushes_the_fewest_pixels_within_the_budget(
    ey: int, ex: int, halo: int, multiple: int, budget: int
) -> None:
    py, px = auto_patch((ey, ex), halo=halo, multiple=multiple, budget=budget)
    side = multiple + 2 * halo
    sizes = {ey: range(side, _ceil(ey, multiple) + 2 * halo + 1, multiple),
             ex: range(side, _ceil(ex, multiple) + 2 * halo + 1, multiple)}
    every = [(a, b) for a in sizes[ey] for b in sizes[ex] if a * b <= budget]
    if not every:  # nothing fits: the smallest legal patch
        assert (py, px) == (side, side)
        return
    assert py * px <= budget
    assert (py - 2 * halo) % multiple == 0
    assert (px - 2 * halo) % multiple == 0
    assert _pushed((ey, ex), (py, px), halo) == min(_pushed((ey, ex), p, halo) for p in every)


def _ceil(a: int, m: int) -> int:
    return -(-a // m) * m


def test_auto_patch_and_batch_on_the_demo_unet_and_edge_cases() -> None:
    # the demo U-Net (halo 48, multiple 16) on 2048 units: 2 x 2 cores of 1024 (5.0 Mpix
    # pushed) instead of 5 x 5 patches of 512 (6.6 Mpix), one patch a call
    assert auto_patch((2048, 2048), halo=48, multiple=16) == (1120, 1120)
    assert _pushed((2048, 2048), (1120, 1120), 48) < _pushed((2048, 2048), (512, 512), 48)
    assert auto_batch((1120, 1120)) == 1
    assert auto_batch((512, 512)) == PIXELS_PER_CALL // 512**2 == 5
    assert auto_batch((16, 16)) == MAX_AUTO_BATCH
    assert auto_batch((4000, 4000)) == 1
    # no halo: every tiling pushes the same pixels; the fewest, then the squarest patches
    assert auto_patch((2048, 2048), halo=0, multiple=1) == (1024, 1024)
    # a halo too big for the budget: the smallest legal patch
    assert auto_patch((2048, 2048), halo=600, multiple=16, budget=10**6) == (1216, 1216)
    g = model_geometry(_meta(multiple=16, halo=48), patch=None, max_extent=(2048, 2048))
    assert (g.patch, g.core, g.batch) == ((1120, 1120), (1024, 1024), 1)
    g = model_geometry(_meta(multiple=16, halo=48), patch=None)  # no extent: a 2048 unit
    assert g.patch == (1120, 1120)
    # a small image is covered by one patch
    g = model_geometry(_meta(multiple=4, halo=8), patch=None, max_extent=(100, 60))
    assert (g.patch, g.batch) == ((116, 76), PIXELS_PER_CALL // (116 * 76))
    # explicit sizes win; auto never applies to a fixed patch
    assert model_geometry(_meta(multiple=16, halo=48), patch=512, batch=4).batch == 4
    f = model_geometry(_meta(patch=[96, 96], halo=8, multiple=4), patch=None)
    assert (f.patch, f.batch) == ((96, 96), PIXELS_PER_CALL // 96**2)
    with pytest.raises(ConfigError, match="--batch >= 1 or auto"):
        model_geometry(_meta(), patch=None, batch=0)


def test_models_of_one_plan_get_their_own_batches() -> None:
    seg, cls = _meta(multiple=16, halo=48, name="seg"), _meta("classify", patch=[64, 64],
                                                               name="cls")
    plan = make_plan([("k", (5000, 3000), 1)], [seg, cls], tile=2048)
    g_seg, g_cls = plan.models
    assert (g_seg.patch, g_seg.batch) == ((1120, 1120), 1)
    assert g_cls.batch == min(MAX_AUTO_BATCH, PIXELS_PER_CALL // 64**2) == 256
    calls = sum(-(-len(g.spans(0, u.y0, u.y1)) * len(g.spans(1, u.x0, u.x1)) // g.batch)
                for u in plan.images[0].units() for g in (g_seg, g_cls))
    assert plan.n_batches == calls
    lines = "\n".join(plan.describe())
    assert "model seg: conv patches 1120x1120, halo 48, core 1024x1024, context 1, batch 1 " \
        "(4 patches in the first unit)" in lines
    assert plan.unit_patches(g_cls) == (2048 // 64) ** 2
    assert f"model cls: window patches 64x64, halo 0, core 64x64, context 48, batch " \
        f"{g_cls.batch}" in lines


def test_tile_must_be_a_multiple_of_the_model_multiple() -> None:
    with pytest.raises(ConfigError, match=r"multiple of 16, .* Got --tile 1000; use --tile 1008"):
        make_plan([("k", (5000, 5000), 1)], [_meta(multiple=16)], tile=1000, patch=512,
                  batch=8)


def test_read_window_is_the_union_of_models() -> None:
    a = ModelGeometry(name="a", mode=TilingMode.CONV, patch=(40, 40), halo=4, multiple=1,
                      core=(32, 32))
    b = ModelGeometry(name="b", mode=TilingMode.CONV, patch=(40, 40), halo=12, multiple=4,
                      core=(16, 16))
    im = ImagePlan(key="k", shape=(100, 100), tile=64)
    u = im.unit(1, 0)
    win = read_window(u, [a, b])
    assert win[0] == 64 - 12
    assert win[2] == 0 - 12
    assert win[1] >= 100 + 12
    assert win[3] >= 64 + 12


def test_plan_module_is_pure() -> None:
    code = (
        "import sys, cnnpipe.pipeline.plan; "
        "bad = [m for m in ('astropy.io', 'zarr', 'dask', 'distributed', 'onnxruntime', "
        "'torch') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
