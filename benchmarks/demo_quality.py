"""Quality of the bundled demo models on fresh simulations (seeds never used in training).

``python -m benchmarks.demo_quality [--seeds 1 2 3] [--size 1024]`` prints a Markdown
table: galaxy morphology accuracy at the true positions (by signal-to-noise), pixel IoU
of each segmentation class against the truth mask, and crater recall / precision
(craters with 2r >= 10 px and more than half their rim visible; a match is a centre
within 0.5 r and a radius within 30 %).  Whole images go through onnxruntime directly
(the U-Nets are fully convolutional with pixel-wise normalisation, so this equals the
tiled run in the interior).
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort

from cnnpipe.modelmeta import ModelMeta, read_model_meta
from cnnpipe.models import demo_model_paths
from cnnpipe.normalise import normalise
from cnnpipe.pipeline.craterfind import find_craters
from cnnpipe.pipeline.cratermatch import match_craters
from cnnpipe.testing.craters import make_crater_catalog, render_crater_window
from cnnpipe.testing.sky import SKY_CLASSES, make_sky_catalog, render_sky_window


def _session(name: str) -> tuple[ort.InferenceSession, ModelMeta]:
    path = demo_model_paths()[name]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess, read_model_meta(path)


def galaxy(seeds: list[int], size: int) -> list[tuple[str, str]]:
    """Accuracy of demo_galaxy on cutouts at the true positions, by S/N."""
    from cnnpipe.export.demo import DemoSettings, galaxy_cutouts

    sess, meta = _session("demo_galaxy")
    rows = []
    for snr in (0, 10, 20, 40):
        raw, lab, _ = galaxy_cutouts(DemoSettings(scene_size=size), seeds=seeds, min_snr=snr)
        x = normalise(raw, meta.normalisation)
        pred = sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1)
        gal = lab > 0
        acc, acc_gal = np.mean(pred == lab), np.mean(pred[gal] == lab[gal])
        rows.append((f"galaxy: accuracy, S/N >= {snr} ({len(lab)} objects)",
                     f"{acc:.3f} (galaxies only {acc_gal:.3f})"))
    return rows


def segment_iou(seeds: list[int], size: int) -> dict[str, float]:
    """Pixel IoU per class of demo_segment against the truth mask, over ``seeds``."""
    sess, meta = _session("demo_segment")
    inter = np.zeros(len(SKY_CLASSES))
    union = np.zeros(len(SKY_CLASSES))
    for seed in seeds:
        cat = make_sky_catalog(size, seed=seed, bands=("r",))
        img, mask = render_sky_window(cat, 0, 0, cat.shape)
        x = normalise(img[None, None], meta.normalisation)
        pred = sess.run(None, {sess.get_inputs()[0].name: x})[0][0].argmax(0)
        valid = mask != 255
        for k in range(len(SKY_CLASSES)):
            inter[k] += np.sum((pred == k) & (mask == k) & valid)
            union[k] += np.sum(((pred == k) | (mask == k)) & valid)
    return {name: float(inter[k] / union[k]) for k, name in enumerate(SKY_CLASSES)}


def segment(seeds: list[int], size: int) -> list[tuple[str, str]]:
    """Pixel IoU per class of demo_segment against the truth mask (table rows)."""
    return [(f"segment: IoU {name}", f"{v:.3f}") for name, v in segment_iou(seeds, size).items()]


def craters(seeds: list[int], size: int) -> list[tuple[str, str]]:
    """Recall and precision of demo_craters + find_craters (D >= 10 px)."""
    sess, meta = _session("demo_craters")
    tp_r = n_t = tp_p = n_p = 0
    for seed in seeds:
        cat = make_crater_catalog(size, seed=seed)
        img, _ = render_crater_window(cat, 0, 0, cat.shape)
        x = normalise(img[None, None], meta.normalisation)
        heat = sess.run(None, {sess.get_inputs()[0].name: x})[0][0, 0]
        found = find_craters(heat)
        phi = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
        px = cat.x[:, None] + cat.radius[:, None] * np.cos(phi)
        py = cat.y[:, None] + cat.radius[:, None] * np.sin(phi)
        inside = ((px > -0.5) & (px < size - 0.5) & (py > -0.5) & (py < size - 0.5)).mean(1)
        truth_sel = (cat.rim_visible * inside > 0.5) & (2 * cat.radius >= 10)
        truth = np.stack([cat.x, cat.y, cat.radius], axis=1)
        m = match_craters(found.xyr, truth, truth_select=truth_sel,
                          pred_select=2 * found.radius >= 10)
        tp_r += round(m.recall * m.n_truth)
        n_t += m.n_truth
        tp_p += round(m.precision * m.n_pred)
        n_p += m.n_pred
    return [(f"craters: recall, D >= 10 px ({n_t} craters)", f"{tp_r / n_t:.3f}"),
            (f"craters: precision, D >= 10 px ({n_p} detections)", f"{tp_p / n_p:.3f}")]


def main() -> None:
    """Print the quality table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    rows = galaxy(args.seeds, args.size) + segment(args.seeds, args.size)
    rows += craters(args.seeds, args.size)
    print(f"| measure (seeds {' '.join(map(str, args.seeds))}, {args.size}² images) | value |")
    print("|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
