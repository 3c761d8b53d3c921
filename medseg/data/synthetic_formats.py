"""The built-in phantom written in other layouts: BraTS folders, DICOM MR studies, X-ray DICOM.

- :func:`write_brats_dataset`: BraTS 2021 (``CASE_flair.nii.gz`` ..., labels 1/2/4) or 2023+
  (``CASE-t2f.nii.gz`` ..., labels 1/2/3) case folders.
- :func:`write_dicom_dataset`: one DICOM study per case, as scanners export them: one series per
  contrast, shuffled file names, a three-plane localiser, and per case a different mix of classic
  single-frame files, an enhanced multi-frame file, implicit VR, and a T2 acquired sagittally
  (another grid of the same frame of reference). Case ``i`` is written in the description style
  ``DICOM_STYLES[i % 6]`` (:data:`DICOM_STYLES`: generic, Siemens, GE, Philips, misleading, none),
  each with that vendor's acquisitions (Siemens MPRAGE, GE spin echo, Philips TFE); the
  post-contrast T1 records ContrastBolusAgent and is acquired after the pre-contrast one. Labels
  are NIfTI files on the FLAIR grid in ``labels/``.
- :func:`write_xray_dataset`: 2D contrast-enhanced radiographs (DX/CR) projected through the phantom
  along the antero-posterior axis: soft tissue, a skull, iodinated contrast where tissue enhances
  (tumour rim, but also unlabelled vessels), scatter blur, heel effect and quantum noise; the mask
  is the projection of the tumour core. Files vary as real ones do: MONOCHROME1 and MONOCHROME2,
  PixelSpacing or ImagerPixelSpacing with a magnification factor, stored VOI windows; masks are PNG
  (0/255) or NIfTI (0/1).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.data.io.dicom_write import (FLAIR_IR, LOCALISER, MPRAGE, T1_SPIN_ECHO, T1_TFE, T2_TSE, MRProtocol, new_ids,
                                        write_radiograph, write_series)
from medseg.data.sources.brats import RELEASES
from medseg.data.synthetic import SynthConfig, _spread, _write_nifti, generate_case
from medseg.utils.parallel import parallel_map

#: internal code -> file code of each BraTS release
_TO_BRATS = {"brats2021": {0: 0, 1: 2, 2: 1, 3: 4}, "brats2023": {0: 0, 1: 2, 2: 1, 3: 3}}
#: SeriesDescription of each contrast (FLAIR, T1, T1 post-contrast, T2) in the generic style
DICOM_DESCRIPTIONS = ("AX T2 FLAIR", "T1 SE AX", "T1 AX POST GD", "T2 TSE AX")
_GENERIC = (FLAIR_IR, T1_SPIN_ECHO, MPRAGE, T2_TSE)
#: style -> (SeriesDescription, acquisition) of FLAIR, T1, T1 post-contrast and T2. Siemens' two
#: MPRAGEs share one description (the agent is only in ContrastBolusAgent); ``misleading`` words
#: every description as another contrast; ``none`` writes no SeriesDescription at all.
DICOM_STYLES: dict[str, tuple[tuple[str, MRProtocol], ...]] = {
    "generic": tuple(zip(DICOM_DESCRIPTIONS, _GENERIC)),
    "siemens": (("t2_tirm_tra_dark-fluid", FLAIR_IR), ("t1_mprage_sag_p2_iso", MPRAGE),
                ("t1_mprage_sag_p2_iso", MPRAGE), ("t2_tse_tra", T2_TSE)),
    "ge": (("Ax T2 FLAIR", FLAIR_IR), ("AX T1 SE", T1_SPIN_ECHO), ("AX T1 SE +C", T1_SPIN_ECHO),
           ("Ax T2 FSE", T2_TSE)),
    "philips": (("T2W_FLAIR", FLAIR_IR), ("sT1W_3D_TFE", T1_TFE), ("CE sT1W_3D_TFE", T1_TFE), ("T2W_TSE", T2_TSE)),
    "misleading": (("AX T2", FLAIR_IR), ("T1 AX POST", T1_SPIN_ECHO), ("T1 AX", MPRAGE), ("T2 FLAIR AX", T2_TSE)),
    "none": tuple(("", p) for p in _GENERIC),
}
#: the agent recorded in the post-contrast series (ContrastBolusAgent)
CONTRAST_AGENT = "Gadobutrol"


def _tumour_flags(cfg: SynthConfig) -> np.ndarray:
    return _spread(cfg.n, cfg.tumour_free_fraction)


def write_brats_dataset(out_dir: str | Path, cfg: SynthConfig = SynthConfig(), release: str = "brats2021",
                        workers: int = 2) -> Path:
    """Write ``cfg.n`` phantom cases as BraTS ``release`` case folders (no test split: BraTS has none)."""
    out = Path(out_dir)
    free = _tumour_flags(cfg)
    prefix = "BraTS2021_" if release == "brats2021" else "BraTS-GLI-"
    jobs = [(out, f"{prefix}{i:05d}" + ("" if release == "brats2021" else "-000"), release,
             cfg.seed * 100003 + i, not bool(free[i]), cfg) for i in range(cfg.n)]
    parallel_map(_write_brats_case, jobs, workers)
    return out


def _write_brats_case(out: Path, name: str, release: str, seed: int, tumour: bool, cfg: SynthConfig) -> None:
    case = generate_case(seed, tumour, cfg)
    suffixes, seg, _ = RELEASES[release]
    folder = out / name
    for c, suffix in enumerate(suffixes):
        _write_nifti(folder / f"{name}{suffix}.nii.gz", np.round(case.image[..., c]).astype(np.int16), case.affine)
    lut = np.zeros(4, dtype=np.uint8)
    for internal, code in _TO_BRATS[release].items():
        lut[internal] = code
    _write_nifti(folder / f"{name}{seg}.nii.gz", lut[case.label], case.affine)


def write_dicom_dataset(out_dir: str | Path, cfg: SynthConfig = SynthConfig(), workers: int = 2,
                        styles: tuple[str, ...] = tuple(DICOM_STYLES)) -> Path:
    """Write ``cfg.n`` phantom cases as DICOM MR studies plus NIfTI labels (see module docstring);
    case ``i`` in the description style ``styles[i % len(styles)]``."""
    out = Path(out_dir)
    free = _tumour_flags(cfg)
    unknown = [s for s in styles if s not in DICOM_STYLES]
    if unknown or not styles:
        raise ValueError(f"DICOM styles {unknown} are not known; valid: {list(DICOM_STYLES)}")
    jobs = [(out, i, cfg.seed * 100003 + i, not bool(free[i]), cfg, styles[i % len(styles)]) for i in range(cfg.n)]
    parallel_map(_write_dicom_case, jobs, workers)
    return out


def _sagittal(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same samples stored with another axis order (voxel axes rolled by one)."""
    perm = (1, 2, 0)
    new_affine = np.eye(4)
    new_affine[:3, :3] = affine[:3, :3][:, perm]
    new_affine[:3, 3] = affine[:3, 3]
    return np.ascontiguousarray(np.transpose(data, perm)), new_affine


def _write_dicom_case(out: Path, i: int, seed: int, tumour: bool, cfg: SynthConfig, style: str = "generic") -> None:
    case = generate_case(seed, tumour, cfg)
    pid = f"SUBJ{i + 1:03d}"
    study = new_ids(pid, "", 0)
    folder = out / "dicom" / pid / f"study_{i % 3 + 1}"
    variant = i % 4
    for c, (desc, protocol) in enumerate(DICOM_STYLES[style]):
        data, affine = case.image[..., c], case.affine
        if c == 3 and variant in (1, 3):
            data, affine = _sagittal(data, affine)
        ids = {**new_ids(pid, desc, c + 2, study["study_uid"], study["frame_of_reference"]),
               "series_time": f"09{10 + 5 * c:02d}00", "contrast_agent": CONTRAST_AGENT if c == 2 else ""}
        write_series(data, affine, folder / f"SE{c + 2:03d}", ids, enhanced=(c == 1 and variant == 2),
                     implicit_vr=(variant == 3), seed=seed + c, protocol=protocol)
    _localiser(case.image[..., 0], case.affine, folder / "SE001", pid, study, "" if style == "none" else "3-PLANE LOC")
    _write_nifti(out / "labels" / f"{pid}.nii.gz", case.label, case.affine)


def _localiser(volume: np.ndarray, affine: np.ndarray, folder: Path, pid: str, study: dict[str, str],
               description: str = "3-PLANE LOC") -> None:
    """A three-plane localiser: one slice per orientation in one series (not a volume)."""
    ids = {**new_ids(pid, description, 1, study["study_uid"], study["frame_of_reference"]), "series_time": "090500"}
    centre = [s // 2 for s in volume.shape]
    for axis in range(3):
        sl = [slice(None)] * 3
        sl[axis] = slice(centre[axis], centre[axis] + 1)
        data = volume[tuple(sl)]
        shift = np.eye(4)
        shift[axis, 3] = centre[axis]
        a = affine @ shift
        perm = [j for j in range(3) if j != axis] + [axis]
        b = np.eye(4)
        b[:3, :3] = a[:3, :3][:, perm]
        b[:3, 3] = a[:3, 3]
        write_series(np.transpose(data, perm), b, folder / f"plane{axis}", ids, seed=axis, protocol=LOCALISER)


def write_xray_dataset(out_dir: str | Path, cfg: SynthConfig = SynthConfig(spacing=1.5, vary_grid=False),
                       workers: int = 2) -> Path:
    """Write ``cfg.n`` projection radiographs and masks (see module docstring)."""
    out = Path(out_dir)
    cfg = replace(cfg, vary_grid=False)
    free = _tumour_flags(cfg)
    jobs = [(out, i, cfg.seed * 100003 + i, not bool(free[i]), cfg) for i in range(cfg.n)]
    parallel_map(_write_xray_case, jobs, workers)
    return out


#: Extra attenuation (per cm, relative) of fully enhancing tissue in the contrast radiograph.
UPTAKE_ATTENUATION = 4.0


def project(image: np.ndarray, label: np.ndarray, spacing: float, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """An antero-posterior projection ``(X, Z)`` of a RAS phantom and its tumour mask."""
    norm = [image[..., c] / max(float(np.percentile(image[..., c][image[..., c] > 0], 99)), 1e-6)
            for c in range(4)]
    brain = image[..., 0] > 0
    # soft tissue attenuates about evenly; iodinated contrast adds attenuation where tissue enhances
    # (T1gd above T1: enhancing tumour, but also vessels and choroid plexus, which are not labelled)
    uptake = np.clip(norm[2] - norm[1], 0.0, None) * brain
    mu = 0.2 + 0.1 * norm[0] + 0.2 * norm[1] + UPTAKE_ATTENUATION * uptake
    mu = mu * brain + 1.8 * (ndimage.binary_dilation(brain, iterations=4) & ~ndimage.binary_dilation(brain, iterations=1))
    path = mu.sum(axis=1) * spacing / 10.0  # line integral (cm)
    path = ndimage.gaussian_filter(path, 1.2)  # focal spot and scatter
    heel = np.linspace(0.9, 1.1, path.shape[1])[None, :]
    counts = 4000.0 * np.exp(-0.35 * path) * heel
    detected = rng.poisson(counts).astype(np.float32)
    radiograph = -np.log(np.maximum(detected, 1.0) / 4000.0)  # higher attenuation = brighter
    mask = np.isin(label, (2, 3)).any(axis=1)  # the tumour core (enhancing rim and what it encloses)
    return radiograph, mask


def _write_xray_case(out: Path, i: int, seed: int, tumour: bool, cfg: SynthConfig) -> None:
    case = generate_case(seed, tumour, cfg)
    rng = np.random.default_rng(seed + 7)
    spacing = float(np.linalg.norm(case.affine[:3, 0]))
    radiograph, mask = project(case.image, case.label, spacing, rng)
    # image columns run along R (X), rows from superior to inferior
    image2d, mask2d = radiograph[:, ::-1], mask[:, ::-1]
    name = f"XR{i + 1:03d}"
    ids = new_ids(f"XRPAT{i + 1:03d}", "SKULL AP", 1)
    mag = 1.1 if i % 3 == 1 else None
    tag = "ImagerPixelSpacing" if i % 3 else "PixelSpacing"
    px = spacing * (mag or 1.0)
    window = (float(np.percentile(image2d, 50)), float(np.ptp(image2d))) if i % 4 == 2 else None
    write_radiograph(image2d, out / "images" / f"{name}.dcm", ids, spacing=(px, px), spacing_tag=tag,
                     magnification=mag, monochrome1=bool(i % 2), window=window, modality="DX" if i % 2 else "CR")
    if i % 2:
        _write_nifti(out / "masks" / f"images_{name}.nii.gz", mask2d.astype(np.uint8)[:, :, None],
                     np.diag([spacing, spacing, 1.0, 1.0]))
    else:
        from PIL import Image

        (out / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray((mask2d.T * 255).astype(np.uint8)).save(out / "masks" / f"images_{name}.png")


LAYOUTS = ("msd", "brats2021", "brats2023", "dicom", "xray")


def write_dataset(out_dir: str | Path, cfg: SynthConfig, layout: str = "msd", workers: int = 2) -> Path:
    """Write the built-in data in ``layout`` (one of :data:`LAYOUTS`)."""
    from medseg.data.synthetic import write_msd_dataset
    from medseg.errors import ConfigError

    if layout == "msd":
        return write_msd_dataset(out_dir, cfg, workers)
    if layout in ("brats2021", "brats2023"):
        return write_brats_dataset(out_dir, cfg, layout, workers)
    if layout == "dicom":
        return write_dicom_dataset(out_dir, cfg, workers)
    if layout == "xray":
        return write_xray_dataset(out_dir, cfg, workers)
    raise ConfigError(f"synth layout {layout!r} is not known; valid: {list(LAYOUTS)}")
