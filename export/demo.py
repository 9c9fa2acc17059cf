"""Train and export the bundled demo models on cnnpipe's own simulations.

``python -m cnnpipe.export.demo [--out DIR] [--steps-scale F] [--seed S]`` trains

- ``demo_galaxy``: :func:`~cnnpipe.export.architectures.galaxy_cnn` on cutouts at the
  true positions of simulated stars, disks (Sersic n~1) and spheroids (n~4);
- ``demo_craters``: :func:`~cnnpipe.export.architectures.crater_unet` on simulated
  crater fields, target = the truth rim mask (a DeepMoon-style ring heat map);
- ``demo_segment``: :func:`~cnnpipe.export.architectures.segment_unet` on simulated sky
  patches, target = the truth class mask (background / star / disk / spheroid / artefact);

on 2 CPU cores in a few minutes each (the segmenter: about 20), and exports them with
:func:`export_model` (parity checked) as single-file ONNX packages whose metadata says
``demo: true``.  The scenes use seeds from ``seed`` upwards; tests and the demo use
seeds below 1000, never these.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cnnpipe.export.architectures import crater_unet, galaxy_cnn, segment_unet
from cnnpipe.export.exporter import export_model
from cnnpipe.modelmeta import (
    InputSpec,
    ModelMeta,
    Normalisation,
    NormMethod,
    OutputKind,
    OutputSpec,
    Task,
)
from cnnpipe.normalise import normalise
from cnnpipe.testing.craters import make_crater_catalog, render_crater_window
from cnnpipe.testing.sky import (
    MORPH_CLASSES,
    SKY_CLASSES,
    SkyCatalog,
    make_sky_catalog,
    render_sky_window,
)

__all__ = ["DemoSettings", "main", "train_all"]

log = logging.getLogger(__name__)

#: First scene seed used for training (evaluation and tests use seeds < 1000).
TRAIN_SEED = 10_000
GALAXY_PATCH = 32
#: Objects fainter than this (see :func:`object_snr`) are not used to train morphology.
GALAXY_MIN_SNR = 10.0
NO_DATA = 255


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """Sizes and step counts of the demo training (``steps_scale`` scales every count)."""

    seed: int = TRAIN_SEED
    steps_scale: float = 1.0
    scene_size: int = 1024
    #: 64 scenes hold 91 galaxies brighter than 3e4 adu, 27 of them spheroids (6 held 9
    #: and 2): the segmenter must see enough bright, large spheroids not to call them disks.
    n_sky_scenes: int = 64
    n_galaxy_scenes: int = 40
    n_crater_scenes: int = 6
    classify_steps: int = 12000
    segment_steps: int = 12000
    crater_steps: int = 1000
    unet_patch: int = 96
    batch: int = 16

    def steps(self, n: int) -> int:
        """Scaled step count (at least 10)."""
        return max(10, round(n * self.steps_scale))


def _sky_stats(images: list[npt.NDArray[np.float32]]) -> tuple[float, float]:
    """Sky noise sigma (1.4826 x median absolute deviation) and sky level (median)."""
    pix = np.concatenate([im[np.isfinite(im)].ravel()[::7] for im in images])
    median = float(np.median(pix))
    return float(1.4826 * np.median(np.abs(pix - median))), median


def _augment(x: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Random flip and quarter turn of the last two axes (the sky has no preferred axis)."""
    k = int(rng.integers(4))
    x = np.rot90(x, k, axes=(-2, -1))
    if rng.random() < 0.5:
        x = x[..., ::-1]
    return np.ascontiguousarray(x)


def _train(
    model: nn.Module,
    sample: Callable[[np.random.Generator], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int,
    seed: int,
    lr: float = 3e-3,
    name: str,
) -> None:
    """Adam with a cosine learning-rate decay over ``steps`` mini-batches."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    t0 = time.perf_counter()
    running = 0.0
    for step in range(1, steps + 1):
        x, y = sample(rng)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        running = 0.95 * running + 0.05 * float(loss) if step > 1 else float(loss)
        if step % 100 == 0 or step == steps:
            log.info("%s: step %d/%d loss %.4f (%.0f s)", name, step, steps, running,
                     time.perf_counter() - t0)
    model.eval()


# -- galaxy morphology classifier -------------------------------------------------------


def object_snr(cat: SkyCatalog) -> npt.NDArray[np.float64]:
    """Approximate signal-to-noise of each object in the first band.

    ``flux / (sigma_sky * sqrt(A))`` with ``A = pi (2 max(r_eff, FWHM / 2))**2`` the
    area holding most of the light and ``sigma_sky`` the per-pixel sky + read noise (adu).
    """
    sigma = np.sqrt(cat.sky_level[0] / cat.gain + cat.read_noise**2)
    radius = 2.0 * np.maximum(np.nan_to_num(cat.r_eff), cat.psf_fwhm / 2)
    return np.asarray(cat.flux[:, 0] / (sigma * np.sqrt(np.pi) * radius), dtype=np.float64)


def galaxy_cutouts(
    settings: DemoSettings, *, seeds: list[int], min_snr: float = 0.0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], float]:
    """Raw cutouts ``(n, 1, p, p)`` at the true positions and labels (index in MORPH_CLASSES).

    Only objects whose centre lies at least half a patch inside the image, on finite
    pixels, with :func:`object_snr` >= ``min_snr`` are kept.  Returns the cutouts, labels
    and the measured sky-noise sigma.
    """
    half = GALAXY_PATCH // 2
    cut, lab, imgs = [], [], []
    for seed in seeds:
        cat = make_sky_catalog(settings.scene_size, seed=seed, bands=("r",))
        image, _ = render_sky_window(cat, 0, 0, cat.shape)
        imgs.append(image)
        iy = np.round(cat.y).astype(int)
        ix = np.round(cat.x).astype(int)
        ny, nx = cat.shape
        ok = (iy >= half) & (iy < ny - half) & (ix >= half) & (ix < nx - half)
        ok &= object_snr(cat) >= min_snr
        for j in np.flatnonzero(ok):
            c = image[iy[j] - half : iy[j] + half, ix[j] - half : ix[j] + half]
            if not np.isfinite(c[half - 2 : half + 2, half - 2 : half + 2]).all():
                continue
            cut.append(c)
            lab.append(int(cat.kind[j]) - 1)  # class_id 1..3 -> 0..2
    return (
        np.stack(cut)[:, None].astype(np.float32),
        np.asarray(lab, dtype=np.int64),
        _sky_stats(imgs)[0],
    )


def train_galaxy(settings: DemoSettings) -> tuple[nn.Module, ModelMeta, npt.NDArray[np.float32]]:
    """Train the galaxy-morphology classifier; return it, its metadata and real patches."""
    seeds = [settings.seed + i for i in range(settings.n_galaxy_scenes)]
    # Morphology of objects near the noise is a coin toss; train on what can be seen.
    raw, labels, sigma = galaxy_cutouts(settings, seeds=seeds, min_snr=GALAXY_MIN_SNR)
    norm = Normalisation(method=NormMethod.ASINH, params={"scale": round(3 * sigma, 3)})
    x_all = normalise(raw, norm)
    counts = np.bincount(labels, minlength=len(MORPH_CLASSES))
    log.info("demo_galaxy: %d cutouts, per class %s", len(labels), counts.tolist())
    weight = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)
    model = galaxy_cnn(1, len(MORPH_CLASSES), patch=GALAXY_PATCH)

    def sample(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = rng.integers(len(labels), size=settings.batch * 2)
        xb = np.stack([_augment(x_all[i], rng) for i in idx])
        return torch.from_numpy(xb), torch.from_numpy(labels[idx])

    def loss(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.nll_loss(torch.log(p.clamp_min(1e-7)), y, weight=weight)

    _train(model, sample, loss, steps=settings.steps(settings.classify_steps),
           seed=settings.seed, name="demo_galaxy")
    meta = ModelMeta(
        name="demo_galaxy",
        task=Task.CLASSIFY,
        bands=("r",),
        input=InputSpec(name="input", patch=(GALAXY_PATCH, GALAXY_PATCH)),
        output=OutputSpec(name="output", kind=OutputKind.PROBABILITIES, classes=MORPH_CLASSES),
        normalisation=norm,
        postprocess={"min_probability": 0.5},
        pixel_scale=0.2,
        description="Galaxy morphology (star / Sersic disk / spheroid) on r-band cutouts. "
        "Demo model trained on cnnpipe's simulated sky, not for science.",
        demo=True,
        licence="BSD-3-Clause",
    )
    return model, meta, raw[:16]


# -- pixel segmenter ---------------------------------------------------------------------


def _scenes_sky(
    settings: DemoSettings, seeds: list[int]
) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]]:
    out = []
    for seed in seeds:
        cat = make_sky_catalog(settings.scene_size, seed=seed, bands=("r",))
        out.append(render_sky_window(cat, 0, 0, cat.shape))
    return out


def _random_crops(
    scenes: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]],
    rng: np.random.Generator,
    *,
    n: int,
    patch: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    xs, ys = [], []
    for _ in range(n):
        image, mask = scenes[int(rng.integers(len(scenes)))]
        y0 = int(rng.integers(image.shape[0] - patch + 1))
        x0 = int(rng.integers(image.shape[1] - patch + 1))
        pair = np.stack([image[y0 : y0 + patch, x0 : x0 + patch],
                         mask[y0 : y0 + patch, x0 : x0 + patch].astype(np.float32)])
        pair = _augment(pair, rng)
        xs.append(pair[0])
        ys.append(pair[1].astype(np.uint8))
    return np.stack(xs)[:, None], np.stack(ys)


def _undo_class_weights(head: nn.Conv2d, weight: torch.Tensor) -> None:
    """Fold the Bayes prior shift that undoes a class-weighted loss into the last conv.

    Minimising cross-entropy weighted by ``w_k`` makes the network estimate
    ``q_k ∝ w_k p_k`` rather than the posterior ``p_k``: with ``w`` ~ 11 for the rare
    object classes every faint halo became an object (IoU 0.56 / 0.48 / 0.28 for star /
    disk / spheroid, versus 0.62 / 0.58 / 0.36 after the shift).  The weights keep the
    rare classes learning early on; ``p_k ∝ q_k / w_k`` is ``softmax(z_k - log w_k)`` for
    the logits ``z``, i.e. a change of the 1x1 head's bias, so the exported graph keeps
    its architecture (and initializer names) and outputs calibrated probabilities.
    """
    bias = head.bias
    if bias is None:
        msg = "Expected the segmenter's last convolution to have a bias."
        raise ValueError(msg)
    with torch.no_grad():
        bias -= torch.log(weight).to(bias)


def train_segment(settings: DemoSettings) -> tuple[nn.Module, ModelMeta, npt.NDArray[np.float32]]:
    """Train the multi-class segmenter; return it, its metadata and real patches."""
    seeds = [settings.seed + 100 + i for i in range(settings.n_sky_scenes)]
    scenes = _scenes_sky(settings, seeds)
    sigma, sky = _sky_stats([s[0] for s in scenes])
    # Pixel-wise (fixed offset): per-patch statistics would make tiles disagree at seams.
    norm = Normalisation(method=NormMethod.ASINH, params={"scale": round(3 * sigma, 3),
                                                 "offset": round(sky, 3)})
    freq = np.bincount(np.concatenate([m[m != NO_DATA].ravel() for _, m in scenes]),
                       minlength=len(SKY_CLASSES)).astype(float)
    weight = torch.tensor((freq.sum() / (len(freq) * np.maximum(freq, 1))) ** 0.5,
                          dtype=torch.float32)
    log.info("demo_segment: class pixel counts %s", freq.astype(int).tolist())
    model = segment_unet(1, len(SKY_CLASSES))

    def sample(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _random_crops(scenes, rng, n=settings.batch, patch=settings.unet_patch)
        return torch.from_numpy(normalise(x, norm)), torch.from_numpy(y.astype(np.int64))

    def loss(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.nll_loss(torch.log(p.clamp_min(1e-7)), y, weight=weight,
                                      ignore_index=NO_DATA)

    _train(model, sample, loss, steps=settings.steps(settings.segment_steps),
           seed=settings.seed + 1, name="demo_segment")
    _undo_class_weights(model.head, weight)
    meta = ModelMeta(
        name="demo_segment",
        task=Task.SEGMENT,
        bands=("r",),
        input=InputSpec(name="input", patch=None, multiple=8),
        output=OutputSpec(name="output", kind=OutputKind.PROBABILITIES, classes=SKY_CLASSES),
        normalisation=norm,
        pixel_scale=0.2,
        description="Pixel segmentation (background / star / disk / spheroid / artefact) of "
        "r-band images. Demo model trained on cnnpipe's simulated sky, not for science.",
        demo=True,
        licence="BSD-3-Clause",
    )
    rng = np.random.default_rng(settings.seed)
    real, _ = _random_crops(scenes, rng, n=4, patch=128)
    return model, meta, real


# -- crater rim detector -----------------------------------------------------------------


def train_craters(settings: DemoSettings) -> tuple[nn.Module, ModelMeta, npt.NDArray[np.float32]]:
    """Train the crater-rim U-Net; return it, its metadata and real patches."""
    scenes = []
    for i in range(settings.n_crater_scenes):
        cat = make_crater_catalog(settings.scene_size, seed=settings.seed + 200 + i)
        scenes.append(render_crater_window(cat, 0, 0, cat.shape))
    pix = np.concatenate([im.ravel()[::7] for im, _ in scenes])
    # Pixel-wise (fixed mean/std of the training fields): no seams between tiles.
    norm = Normalisation(method=NormMethod.FIXED, params={"mean": [round(float(pix.mean()), 5)],
                                                 "std": [round(float(pix.std()), 5)]})
    rim_frac = float(np.mean([np.mean(m == 1) for _, m in scenes]))
    pos_weight = min(20.0, 0.5 / max(rim_frac, 1e-3))
    log.info("demo_craters: rim pixel fraction %.3f, positive weight %.1f", rim_frac, pos_weight)
    model = crater_unet(1)

    def sample(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _random_crops(scenes, rng, n=settings.batch, patch=settings.unet_patch)
        target = (y == 1).astype(np.float32)[:, None]
        return torch.from_numpy(normalise(x, norm)), torch.from_numpy(target)

    def loss(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        w = 1.0 + (pos_weight - 1.0) * t
        return nn.functional.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), t, weight=w)

    _train(model, sample, loss, steps=settings.steps(settings.crater_steps),
           seed=settings.seed + 2, name="demo_craters")
    meta = ModelMeta(
        name="demo_craters",
        task=Task.CRATERS,
        bands=("relief",),
        input=InputSpec(name="input", patch=None, multiple=8),
        output=OutputSpec(name="output", kind=OutputKind.HEATMAP, classes=("rim",)),
        normalisation=norm,
        postprocess={"threshold": 0.5},
        description="Crater rim heat map (DeepMoon-style) on shaded-relief images. Demo "
        "model trained on cnnpipe's simulated crater fields, not for science.",
        demo=True,
        licence="BSD-3-Clause",
    )
    rng = np.random.default_rng(settings.seed)
    real, _ = _random_crops(scenes, rng, n=4, patch=128)
    return model, meta, real


TRAINERS = {"demo_galaxy": train_galaxy, "demo_segment": train_segment,
            "demo_craters": train_craters}


def train_all(
    out: Path, settings: DemoSettings, *, only: list[str] | None = None
) -> dict[str, Path]:
    """Train and export the demo models into ``out``; return ``{name: path}``."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, trainer in TRAINERS.items():
        if only and name not in only:
            continue
        model, meta, real = trainer(settings)
        path = out / f"{name}.onnx"
        # 1e-3: random inputs far outside the training range amplify float32 rounding in the
        # trained networks; the real-patch parity is printed beside it.
        report = export_model(model, meta=meta, out=path, real_patches=real, tolerance=1e-3,
                              log=log.info)
        for line in report.lines():
            log.info("%s: %s", name, line)
        written[name] = path
    return written


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m cnnpipe.export.demo``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1]
                        / "src" / "cnnpipe" / "models",
                        help="output folder (default: the package data folder in the repo)")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every step count (e.g. 0.05 for a smoke run)")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--only", action="append", choices=sorted(TRAINERS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = DemoSettings(seed=args.seed, steps_scale=args.steps_scale)
    for name, path in train_all(args.out, settings, only=args.only).items():
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
