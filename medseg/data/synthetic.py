"""Built-in BraTS-like data: a seeded head phantom with gliomas, written in the MSD Task01 layout.

Each case is a skull-stripped brain (as in BraTS and MSD Task01) generated in world millimetres,
so anatomy does not depend on the voxel grid. Per case the generator draws:

* a head/brain shape (ellipsoid with low-frequency deformation), cortical grey-matter ribbon with
  sulcal CSF, white matter, deep grey nuclei and lateral ventricles;
* zero, one or two tumours at irregular locations: edema (label 1) spreading mostly through white
  matter, a core with necrotic / non-enhancing tissue (label 2) and a patchy enhancing rim
  (label 3, bright on T1gd); some tumours are non-enhancing (no label 3), some are small;
* tumour mimics that are *not* labelled: small FLAIR-bright white-matter lesions and enhancing
  vessels / choroid plexus on T1gd;
* four contrasts (FLAIR, T1, T1gd, T2) with tissue texture, partial-volume blur, a smooth
  multiplicative bias field, Rician noise and a per-case, per-channel intensity scale;
* a voxel grid: orientation (RAS, LAS, LPS or PSR axis order), spacing with jitter and sometimes
  thicker slices, written as int16 NIfTI with a real affine.

Axis order of returned arrays: image ``(X, Y, Z, C)`` (channel last, as MSD stores it), label
``(X, Y, Z)``; spacing in millimetres.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medseg.utils.files import atomic_path, write_json
from medseg.utils.parallel import parallel_map

log = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("FLAIR", "T1w", "t1gd", "T2w")

# Relative intensity of each tissue per channel (FLAIR, T1, T1gd, T2).
_TISSUES: dict[str, tuple[float, float, float, float]] = {
    "csf": (0.12, 0.28, 0.30, 1.00),
    "gm": (0.60, 0.55, 0.57, 0.62),
    "wm": (0.48, 0.78, 0.79, 0.45),
    "deep_gm": (0.56, 0.62, 0.63, 0.56),
    "edema": (0.88, 0.47, 0.50, 0.86),
    "necrosis": (0.45, 0.30, 0.33, 0.95),
    "nonenh": (0.80, 0.42, 0.45, 0.80),
    "enhancing": (0.75, 0.52, 1.10, 0.72),
    "wm_lesion": (0.85, 0.66, 0.66, 0.70),
    "vessel": (0.45, 0.55, 1.05, 0.35),
}

_ORIENTATIONS: dict[str, np.ndarray] = {
    # rows: world axis (RAS+), columns: voxel axis; entries are unit directions.
    "RAS": np.eye(3),
    "LAS": np.diag([-1.0, 1.0, 1.0]),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    "PSR": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
}


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the built-in data generator.

    Args:
        n: number of cases in total (training plus test).
        n_test: how many of them go to ``imagesTs``/``labelsTs``.
        spacing: nominal voxel spacing in mm; each case jitters it by up to ±10 %.
        fov_mm: field of view (x, y, z) in mm around the head centre.
        tumour_free_fraction: share of cases without tumour.
        vary_grid: draw orientation and anisotropic spacing per case (else RAS, nominal spacing).
        seed: master seed; case ``i`` uses ``seed * 100003 + i``.
    """

    n: int = 24
    n_test: int = 6
    spacing: float = 1.5
    fov_mm: tuple[float, float, float] = (150.0, 180.0, 140.0)
    tumour_free_fraction: float = 0.15
    vary_grid: bool = True
    seed: int = 0


@dataclass
class SynthCase:
    """One generated case: image ``(X, Y, Z, C)`` float32, label ``(X, Y, Z)`` uint8, affine 4x4."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    has_tumour: bool


def _field(rng: np.random.Generator, xyz: np.ndarray, wavelength: tuple[float, float],
           n: int = 10) -> np.ndarray:
    """Smooth random field over world points ``xyz`` (N, 3) mm, roughly in [-1, 1].

    A sum of ``n`` random plane waves whose wavelengths lie in ``wavelength`` (mm).
    """
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = 2 * np.pi / rng.uniform(*wavelength, size=n)
    phase = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)
    proj = xyz @ (dirs * k[:, None]).T.astype(np.float32) + phase
    out = np.cos(proj, out=proj).sum(axis=1)
    return (out * np.sqrt(2.0 / n)).astype(np.float32)


def _grid(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Draw a voxel grid: returns the affine and the shape covering ``cfg.fov_mm``."""
    name = rng.choice(list(_ORIENTATIONS)) if cfg.vary_grid else "RAS"
    direction = _ORIENTATIONS[str(name)]
    spacing = np.full(3, cfg.spacing) * (rng.uniform(0.9, 1.1, 3) if cfg.vary_grid else 1.0)
    if cfg.vary_grid and rng.random() < 0.25:  # thick slices along one voxel axis
        spacing[rng.integers(3)] *= 1.6
    fov_vox = np.abs(direction.T) @ np.asarray(cfg.fov_mm)  # extent along each voxel axis
    shape = tuple(int(np.ceil(f / s)) for f, s in zip(fov_vox, spacing))
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    centre_vox = (np.asarray(shape) - 1) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre_vox + rng.normal(0, 3, 3)
    return affine, shape


def _anatomy(rng: np.random.Generator, xyz: np.ndarray) -> dict[str, np.ndarray]:
    """Tissue masks of a brain phantom at world points ``xyz`` (mm)."""
    radii = np.array([62.0, 78.0, 58.0]) * rng.uniform(0.9, 1.08, 3)
    rot = _small_rotation(rng, 0.12)
    local = xyz @ rot.T
    rho = np.sqrt(((local / radii) ** 2).sum(axis=1))
    rho = rho + 0.05 * _field(rng, xyz, (60, 140))
    depth = (1.0 - rho) * radii.mean()  # approx. mm below the brain surface
    brain = depth > 0
    ribbon = 3.0 + 1.5 * _field(rng, xyz, (25, 60))
    sulci = (_field(rng, xyz, (8, 16), n=16) > 0.9) & (depth < ribbon + 2.5)
    csf = brain & ((depth < 1.0) | sulci)
    gm = brain & ~csf & (depth < ribbon)
    # lateral ventricles: two curved ellipsoids either side of the midline
    vent = np.zeros(len(xyz), dtype=bool)
    size = rng.uniform(0.8, 1.3)
    for side in (-1.0, 1.0):
        c = np.array([side * 9.0, 5.0, 12.0]) + rng.normal(0, 1.5, 3)
        d = local - c
        d[:, 2] -= 0.004 * d[:, 1] ** 2  # bend along y
        vent |= ((d / (np.array([7.0, 28.0, 8.0]) * size)) ** 2).sum(axis=1) < 1
    deep = np.zeros(len(xyz), dtype=bool)
    for side in (-1.0, 1.0):
        c = np.array([side * 20.0, 0.0, 0.0]) + rng.normal(0, 1.5, 3)
        deep |= (((local - c) / np.array([8.0, 14.0, 10.0])) ** 2).sum(axis=1) < 1
    csf |= brain & vent
    deep &= brain & ~csf
    wm = brain & ~csf & ~gm & ~deep
    return {"brain": brain, "csf": csf, "gm": gm, "wm": wm, "deep_gm": deep, "depth": depth}


def _small_rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle, max_angle)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _tumour(rng: np.random.Generator, xyz: np.ndarray, tissue: dict[str, np.ndarray]) -> np.ndarray:
    """Internal label map (0-3) of one glioma at a random white-matter location."""
    candidates = np.flatnonzero(tissue["wm"] & (tissue["depth"] > 12))
    if candidates.size == 0:
        candidates = np.flatnonzero(tissue["brain"])
    centre = xyz[rng.choice(candidates)]
    small = rng.random() < 0.2
    r_edema = rng.uniform(8, 14) if small else rng.uniform(18, 36)
    d = np.linalg.norm((xyz - centre) * rng.uniform(0.75, 1.25, 3), axis=1)
    rough = np.clip(_field(rng, xyz, (15, 45)), -2, 2)
    rho_e = d / (r_edema * (1 + 0.22 * rough))
    core_frac = rng.uniform(0.4, 0.7)
    rho_c = d / (r_edema * core_frac * (1 + 0.18 * np.clip(_field(rng, xyz, (10, 30)), -2, 2)))
    brain = tissue["brain"] & ~(tissue["csf"] & (tissue["depth"] < 2.0))
    # edema spreads along white matter, much less into grey matter
    edema = brain & (rho_e < 1) & (tissue["wm"] | tissue["deep_gm"] | (rho_e < 0.75))
    core = brain & (rho_c < 1)
    label = np.zeros(len(xyz), dtype=np.uint8)
    label[edema] = 1
    label[core] = 2
    if rng.random() < 0.8:  # enhancing: patchy rim of thickness 2-5 mm at the core border
        thickness = rng.uniform(2.0, 5.0) / (r_edema * core_frac)
        rim = core & (rho_c > 1 - thickness) & (_field(rng, xyz, (12, 30)) > -0.6)
        if rng.random() < 0.3:  # solid enhancing nodule instead of a necrotic centre
            rim |= core & (rho_c < 0.5)
        label[rim] = 3
    return label


def _wm_lesions(rng: np.random.Generator, xyz: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Small FLAIR-bright white-matter lesions (not tumour, not labelled)."""
    out = np.zeros(len(xyz), dtype=bool)
    idx = np.flatnonzero(wm)
    for _ in range(int(rng.integers(1, 6))):
        c = xyz[rng.choice(idx)]
        out |= np.linalg.norm(xyz - c, axis=1) < rng.uniform(1.5, 4.0)
    return out & wm


def _vessels(rng: np.random.Generator, xyz: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Thin T1gd-enhancing tubes along random curves (not tumour, not labelled)."""
    out = np.zeros(len(xyz), dtype=bool)
    for _ in range(3):
        f1 = _field(rng, xyz, (40, 90), n=6)
        f2 = _field(rng, xyz, (40, 90), n=6)
        out |= (np.abs(f1) < 0.05) & (np.abs(f2) < 0.05)
    return out & brain


def generate_case(seed: int, tumour: bool, cfg: SynthConfig = SynthConfig()) -> SynthCase:
    """Generate one case deterministically from ``seed``.

    Args:
        seed: seed of this case.
        tumour: whether the case contains a tumour.
        cfg: generator settings (grid, spacing, field of view).

    Returns:
        The case, image ``(X, Y, Z, 4)`` float32 in (FLAIR, T1, T1gd, T2) order.
    """
    rng = np.random.default_rng(seed)
    affine, shape = _grid(rng, cfg)
    ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"),
                   axis=-1).reshape(-1, 3)
    xyz = (ijk @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32))
    tissue = _anatomy(rng, xyz)
    label = np.zeros(len(xyz), dtype=np.uint8)
    if tumour:
        for _ in range(1 + int(rng.random() < 0.2)):
            label = np.maximum(label, _tumour(rng, xyz, tissue))
    image = np.zeros((len(xyz), 4), dtype=np.float32)
    for name in ("csf", "gm", "wm", "deep_gm"):
        image[tissue[name]] = _TISSUES[name]
    if rng.random() < 0.6:
        image[_wm_lesions(rng, xyz, tissue["wm"]) & (label == 0)] = _TISSUES["wm_lesion"]
    image[_vessels(rng, xyz, tissue["brain"]) & (label == 0)] = _TISSUES["vessel"]
    necrotic = rng.random() < 0.7
    image[label == 1] = _TISSUES["edema"]
    image[label == 2] = _TISSUES["necrosis" if necrotic else "nonenh"]
    image[label == 3] = _TISSUES["enhancing"]
    brain = tissue["brain"]
    texture = 1 + 0.04 * _field(rng, xyz, (4, 12), n=12)
    image *= texture[:, None]
    image = image.reshape(*shape, 4)
    label = label.reshape(shape)
    brain = brain.reshape(shape)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    sigma = 0.6 / spacing * spacing.min()  # partial-volume blur, ~0.6 voxel
    for c in range(4):
        image[..., c] = ndimage.gaussian_filter(image[..., c], sigma)
    bias = np.exp(0.18 * _field(rng, xyz, (150, 300), n=6)).reshape(shape)
    noise_sd = rng.uniform(0.015, 0.045)
    for c in range(4):
        chan = image[..., c] * bias
        chan = np.sqrt((chan + rng.normal(0, noise_sd, shape)) ** 2 + rng.normal(0, noise_sd, shape) ** 2)
        chan *= rng.uniform(300, 1500)  # per-case, per-channel scanner scale
        image[..., c] = np.where(brain, chan, 0.0)  # skull-stripped, as in BraTS / MSD
    return SynthCase(image=image, label=label, affine=affine, has_tumour=bool(label.any()))


def _write_case(out: Path, name: str, split: str, seed: int, tumour: bool, cfg: SynthConfig) -> None:
    case = generate_case(seed, tumour=tumour, cfg=cfg)
    _write_nifti(out / f"images{split}" / f"{name}.nii.gz", np.round(case.image).astype(np.int16), case.affine)
    _write_nifti(out / f"labels{split}" / f"{name}.nii.gz", case.label, case.affine)
    log.info("synth %s (%s, tumour=%s, shape=%s)", name, split, case.has_tumour, case.label.shape)


def write_msd_dataset(out_dir: str | Path, cfg: SynthConfig = SynthConfig(), workers: int = 2) -> Path:
    """Write ``cfg.n`` cases in the MSD Task01 layout under ``out_dir``.

    Layout: ``imagesTr/``, ``labelsTr/``, ``imagesTs/``, ``labelsTs/`` (4D int16 NIfTI, channel
    last; uint8 labels) and ``dataset.json``. At least one test case is tumour-free when
    ``n_test >= 2``.

    Args:
        out_dir: dataset folder (created; existing case files are overwritten).
        cfg: generator settings.
        workers: parallel processes.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    if cfg.n < 1 or not 0 <= cfg.n_test < cfg.n:
        from medseg.errors import ConfigError

        raise ConfigError(f"synth needs n >= 1 and 0 <= n_test < n, got n={cfg.n}, n_test={cfg.n_test}")
    out = Path(out_dir)
    tumour_free = _spread(cfg.n - cfg.n_test, cfg.tumour_free_fraction)
    tumour_free = np.concatenate([tumour_free, _spread(cfg.n_test, cfg.tumour_free_fraction)])
    if cfg.n_test >= 2 and cfg.tumour_free_fraction > 0 and not tumour_free[cfg.n - cfg.n_test:].any():
        tumour_free[cfg.n - cfg.n_test] = True  # the test split always shows a tumour-free case
    training, test = [], []
    jobs = []
    for i in range(cfg.n):
        name = f"BRATS_{i + 1:03d}"
        split = "Ts" if i >= cfg.n - cfg.n_test else "Tr"
        jobs.append((out, name, split, cfg.seed * 100003 + i, not bool(tumour_free[i]), cfg))
        entry = {"image": f"./images{split}/{name}.nii.gz", "label": f"./labels{split}/{name}.nii.gz"}
        (test if split == "Ts" else training).append(entry)
    parallel_map(_write_case, jobs, workers)
    write_json(out / "dataset.json", {
        "name": "BRATS",
        "description": "medseg built-in synthetic BraTS-like gliomas (MSD Task01 layout)",
        "reference": "generated by medseg.data.synthetic",
        "licence": "CC-BY-SA 4.0",
        "tensorImageSize": "4D",
        "modality": {str(i): c for i, c in enumerate(CHANNELS)},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
        "synth_config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
    })
    return out


def _spread(n: int, fraction: float) -> np.ndarray:
    """``round(n * fraction)`` True values spread evenly over ``n`` places."""
    out = np.zeros(n, dtype=bool)
    k = int(round(n * fraction))
    if k:
        out[np.linspace(n / (2 * k), n - n / (2 * k), k).astype(int)] = True
    return out


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
