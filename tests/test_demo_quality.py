"""Quality of the bundled demo models on fresh simulations (seeds < 1000: never trained on).

The issue-4 targets that the demo models meet are held here; the full table (including
the targets not met yet) comes from ``python -m benchmarks.demo_quality``.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from cnnpipe.modelmeta import read_model_meta
from cnnpipe.models import demo_model_paths
from cnnpipe.normalise import normalise
from cnnpipe.pipeline.craterfind import find_craters
from cnnpipe.pipeline.cratermatch import match_craters
from cnnpipe.testing.craters import make_crater_catalog, render_crater_window


def _session(name: str) -> tuple[ort.InferenceSession, object]:
    path = demo_model_paths()[name]
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), read_model_meta(
        path)


@pytest.mark.parametrize("seed", [21, 22])
def test_demo_crater_model_recall_and_precision_for_d_ge_10px(seed: int) -> None:
    sess, meta = _session("demo_craters")
    cat = make_crater_catalog(768, seed=seed)
    img, _ = render_crater_window(cat, 0, 0, cat.shape)
    heat = sess.run(None, {sess.get_inputs()[0].name: normalise(img[None, None],
                                                                 meta.normalisation)})[0][0, 0]
    found = find_craters(heat)
    # truth: 2r >= 10 px with more than half the rim visible and inside the image
    phi = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
    px = cat.x[:, None] + cat.radius[:, None] * np.cos(phi)
    py = cat.y[:, None] + cat.radius[:, None] * np.sin(phi)
    inside = ((px > -0.5) & (px < 767.5) & (py > -0.5) & (py < 767.5)).mean(1)
    select = (cat.rim_visible * inside > 0.5) & (2 * cat.radius >= 10)
    m = match_craters(found.xyr, np.stack([cat.x, cat.y, cat.radius], axis=1),
                      pos_frac=0.5, rad_frac=0.3, truth_select=select,
                      pred_select=2 * found.radius >= 10)
    assert m.n_truth > 40
    assert m.recall >= 0.85
    assert m.precision >= 0.85


def test_demo_galaxy_model_accuracy_on_well_measured_objects() -> None:
    # Target met for objects with S/N >= 20 (most simulated galaxies are faint and barely
    # resolved; over all objects the accuracy is far lower, see README "Demo models").
    from cnnpipe.export.demo import DemoSettings, galaxy_cutouts

    sess, meta = _session("demo_galaxy")
    raw, lab, _ = galaxy_cutouts(DemoSettings(scene_size=1024), seeds=[31, 32, 33],
                                 min_snr=20)
    pred = sess.run(None, {sess.get_inputs()[0].name: normalise(raw, meta.normalisation)})[0]
    assert len(lab) > 100
    assert np.mean(pred.argmax(1) == lab) >= 0.9


def test_demo_segment_model_keeps_its_measured_iou() -> None:
    # Not the issue-4 target (IoU >= 0.8 per class, not met: README "Demo models" says
    # why): a regression guard at the level the bundled segmenter reached on seeds 1-6
    # (0.640 / 0.632 / 0.611 / 0.959), so a retrained or broken model cannot slip back to
    # the previous one's 0.55 / 0.46 / 0.36 / 0.88 unnoticed.
    from benchmarks.demo_quality import segment_iou

    iou = segment_iou(list(range(1, 7)), 1024)
    assert iou["star"] >= 0.6, iou
    assert iou["disk"] >= 0.6, iou
    assert iou["spheroid"] >= 0.55, iou
    assert iou["artefact"] >= 0.93, iou
