"""DICOM sources: MR studies (one case per study, one series per channel) and radiographs.

``dicom``: every file under the root is scanned (headers only), grouped by study and series.
Each channel is the one series of the study identified as its contrast from the acquisition
attributes (ImageType, ScanningSequence, InversionTime, RepetitionTime, EchoTime, enhanced MR's
functional groups, ContrastBolusAgent and the time order of the series; the SeriesDescription
patterns as a hint; see :mod:`medseg.data.contrasts`), or the series a mapping file names. Why each
series was chosen is kept in ``CaseRef.identification`` (``verification.json``, predict's summary).
Channels on different grids of the same frame of reference are resampled (trilinear, in world
coordinates) onto the grid of the first channel, which is the grid of the case: labels
(``label_dir/{case}.nii.gz``) must be on it, and predictions are written on it. ``predict`` sets
``allow_missing``: a study lacking a channel's series is then a case with that channel missing
(``CaseRef.missing``, loaded as zeros) when its model accepts that subset.

``xray``: every DICOM image under the root (CR, DX, or any single-frame greyscale image) is a case;
its mask is ``mask_dir/{case}.png`` or ``.nii.gz`` (binary, 0/1 or 0/255). Images are ``(1, X, Y, 1)``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg.config import DEFAULT_SERIES_PATTERNS
from medseg.data.contrasts import choose, identification_record, identify_series, stand_in, zero_channels
from medseg.data.io.dicom import SeriesInfo, looks_like_dicom, read_radiograph, read_series, scan
from medseg.data.io.nifti import DEFAULT_MAX_VOXELS, read_nifti
from medseg.data.sources.base import Case, CaseRef, Source, align_to_grid, grid_mismatch, walk_files
from medseg.errors import ConfigError, DataError
from medseg.utils.files import read_json

log = logging.getLogger(__name__)


def series_pattern(channel: str, pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled case-insensitively.

    Raises:
        ConfigError: not a regular expression, or one that matches every description (empty),
            naming the channel.
    """
    if not str(pattern).strip():
        raise ConfigError(f"series pattern of channel {channel!r} is empty: it would match every series "
                          f"description; give a regular expression, e.g. {channel}='{channel.lower()}'")
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as e:
        raise ConfigError(f"series pattern of channel {channel!r} is not a regular expression: {pattern!r} ({e})") from e


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "case"


def resample_to(data: np.ndarray, affine: np.ndarray, ref_affine: np.ndarray,
                ref_shape: Sequence[int]) -> np.ndarray:
    """Trilinearly resample ``data`` (on ``affine``) onto another grid of the same world space.

    Voxels of the new grid that fall outside the source are zero. Works slab by slab to bound memory.
    """
    from scipy import ndimage

    to_src = np.linalg.inv(affine) @ ref_affine
    out = np.zeros(tuple(ref_shape), dtype=np.float32)
    ii, jj = np.meshgrid(np.arange(ref_shape[0]), np.arange(ref_shape[1]), indexing="ij")
    for k in range(ref_shape[2]):
        pts = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k), np.ones(ii.size)])
        src = (to_src @ pts)[:3]
        out[:, :, k] = ndimage.map_coordinates(data, src, order=1, mode="constant", cval=0.0).reshape(ii.shape)
    return out


class DicomSource(Source):
    """A folder tree of DICOM MR studies.

    Args:
        root: folder scanned recursively (directory symlinks are not followed).
        channels: channel names in input order.
        series_patterns: channel -> regular expression matched against SeriesDescription (a hint
            that breaks ties and names series whose attributes are inconclusive).
        series_mapping: optional JSON file ``{case or StudyInstanceUID: {channel: SeriesInstanceUID
            or exact SeriesDescription}}``: the channels it names for a study are those series; the
            others are identified among the series it leaves. A key that is not one of
            ``channels`` is refused (``DataError``).
        label_dir: folder of NIfTI labels named ``{case}.nii.gz`` (relative to ``root`` or absolute).
        convention: label coding of the label files.
        max_voxels: refuse series whose headers promise more voxels than this (before decoding).
        affine_tol_mm: tolerance when comparing channel and label grids.
        slice_gap_tol_mm: tolerated deviation of slice gaps from their median.
        resample_channels: resample channels on other grids onto the first channel's grid.
    """

    def __init__(self, root: str | Path, channels: Sequence[str] = tuple(DEFAULT_SERIES_PATTERNS),
                 series_patterns: Mapping[str, str] | None = None, series_mapping: str | None = None,
                 label_dir: str | None = "labels", convention: str = "msd", max_voxels: int = DEFAULT_MAX_VOXELS,
                 affine_tol_mm: float = 1e-3, slice_gap_tol_mm: float = 0.05, resample_channels: bool = True,
                 **_: object) -> None:
        super().__init__(root, convention, max_voxels, affine_tol_mm)
        self.channels = tuple(str(c) for c in channels) or tuple(DEFAULT_SERIES_PATTERNS)
        patterns = {**DEFAULT_SERIES_PATTERNS, **(series_patterns or {})}
        self.patterns = {c: series_pattern(c, patterns.get(c, re.escape(c))) for c in self.channels}
        self.mapping = self._read_mapping(series_mapping)
        self.label_dir = None
        if label_dir:
            self.label_dir = Path(label_dir) if Path(label_dir).is_absolute() else self.root / label_dir
        self.gap_tol = float(slice_gap_tol_mm)
        self.resample_channels = bool(resample_channels)
        self.scan_problems: list[str] = []
        #: accept a study lacking some channels' series (``CaseRef.missing``; the channel loads as
        #: zeros): set by ``predict`` when the model accepts that subset, never by ``prepare``
        self.allow_missing = False

    def _read_mapping(self, path: str | None) -> dict[str, dict[str, str]]:
        if not path:
            return {}
        p = Path(path) if Path(path).is_absolute() else self.root / path
        data = read_json(p)
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise DataError(p, "series mapping must be {case: {channel: SeriesInstanceUID or SeriesDescription}}")
        mapping = {str(k): {str(c): str(s) for c, s in v.items()} for k, v in data.items()}
        unknown = sorted({c for named in mapping.values() for c in named if c not in self.channels})
        if unknown:  # e.g. "flair" for "FLAIR": ignoring it would silently fall back to identification
            cases = sorted(k for k, named in mapping.items() if set(named) & set(unknown))
            raise DataError(p, f"series mapping names {unknown}, which are not among the channels "
                               f"{list(self.channels)} (in {len(cases)} case(s), such as {cases[0]!r})")
        return mapping

    def cases(self) -> list[CaseRef]:
        """One case per study; studies with no series identified as any channel are ignored."""
        skip = (self.label_dir,) if self.label_dir else ()
        series, self.scan_problems = scan(walk_files(self.root, skip=skip))
        studies: dict[str, list[SeriesInfo]] = {}
        for s in series:
            studies.setdefault(s.study_uid, []).append(s)
        names = self._names(studies)
        refs = [self._case(names[uid], uid, members) for uid, members in studies.items()]
        refs = [r for r in refs if r is not None]
        unused = sorted(set(self.mapping) - set(names.values()) - set(names))
        if unused:  # a typo, or a mapping written for another delivery: said, not fatal
            log.warning("%s: the series mapping's entries %s match no study here (by case name or "
                        "StudyInstanceUID); those studies' series are identified as without it",
                        self.root, unused[:5] + (["..."] if len(unused) > 5 else []))
        if not refs and not self.scan_problems:
            if not series and not any(looks_like_dicom(f) for f in walk_files(self.root, skip=skip)):
                raise DataError(self.root, "no DICOM file under it")
            if not series:
                raise DataError(self.root, "no DICOM image series under it (its DICOM files hold no image: "
                                           "a DICOMDIR index, segmentations, structured reports, RT objects, ...)")
            found = sorted({s.description or "<no description>" for s in series})
            raise DataError(self.root, f"no DICOM series is identified as any of the channels {list(self.channels)} "
                                       f"(by acquisition attributes, patterns "
                                       f"{ {c: p.pattern for c, p in self.patterns.items()} } or mapping); "
                                       f"series found: {found}")
        return refs

    def _case(self, name: str, uid: str, members: list[SeriesInfo]) -> CaseRef | None:
        """The case of one study, or ``None`` when no series of it is a candidate for any channel."""
        chosen, problems, reasons, candidates = self._assign(name, uid, members)
        folder = Path(os.path.commonpath([f.parent for m in members for f in m.files]))
        if not candidates:  # nothing of interest in this study (e.g. a localiser-only study)
            log.warning("%s: study %s left out: no series is identified as any of the channels (series: %s)",
                        folder, name, sorted({m.description or "<no description>" for m in members}))
            return None
        missing = tuple(c for c in self.channels if f"missing:{c}" in problems)
        errors = [m for k, m in problems.items() if not (self.allow_missing and k.startswith("missing:"))]
        errors += [p for c in chosen if c is not None for p in c.problems]  # a file of the series was unreadable
        frames = {c.frame_of_reference for c in chosen if c is not None}
        if len(frames) > 1:
            first = next(c for c in chosen if c is not None)
            errors.append(f"{first.files[0]}: the channels come from {len(frames)} frames of reference; "
                          f"they are not registered to each other")
        groups = tuple(tuple(sorted(c.files)) if c is not None else () for c in chosen)
        label = self.label_dir / f"{name}.nii.gz" if self.label_dir else None
        ref = CaseRef(name=name, images=tuple(f for g in groups for f in g),
                      label=label if label is not None and label.exists() else None,
                      problems=tuple(errors), series=groups, identification=tuple(reasons), folder=folder)
        if self.allow_missing and missing and not errors and len(missing) < len(self.channels):
            ref = stand_in(ref, self.channels, missing)
        return ref

    @staticmethod
    def _names(studies: dict[str, list[SeriesInfo]]) -> dict[str, str]:
        by_patient: dict[str, list[str]] = {}
        for uid, members in studies.items():
            by_patient.setdefault(_safe(members[0].patient_id), []).append(uid)
        names = {}
        for pid, uids in by_patient.items():
            for i, uid in enumerate(uids):
                date = studies[uid][0].study_date
                names[uid] = pid if len(uids) == 1 else f"{pid}_{date or 'study'}_{i + 1}"
        return names

    def _assign(self, name: str, study_uid: str, members: list[SeriesInfo]
                ) -> tuple[list[SeriesInfo | None], dict[str, str], list[tuple], bool]:
        """Choose each channel's series: ``(chosen per channel, problems per channel, reasons of
        the chosen ones, whether any series was a candidate)``; ambiguities are problems, a channel
        without any candidate is a problem keyed ``"missing:<channel>"``. A channel the mapping file
        names for this study is the series it names (SeriesInstanceUID or exact description), and
        an error when that series is not in the study (never a missing channel); the others are
        identified among the series it leaves. Problems come in channel order."""
        mapping = self.mapping.get(name) or self.mapping.get(study_uid) or {}
        where = members[0].files[0].parent
        found = sorted({s.description for s in members})
        chosen: dict[str, SeriesInfo | None] = {}
        problems: dict[str, str] = {}
        reasons = {}
        for c in (c for c in self.channels if c in mapping):
            want = mapping[c]
            hits = [s for s in members if want in (s.series_uid, s.description)]
            earlier = self.channels[:self.channels.index(c)]
            first = next((d for d in earlier if chosen.get(d) is not None and chosen[d] in hits), None)
            if first is not None:
                twice = chosen[first]
                problems[c] = (f"{where}: the series mapping names one series (series {twice.series_number} "
                               f"{twice.description!r}, {twice.series_uid}) for both {first!r} and {c!r} "
                               f"in study of {name}")
                chosen[c] = None
                continue
            chosen[c] = hits[0] if len(hits) == 1 else None
            if len(hits) == 1:
                reasons[c] = (c, hits[0].series_uid, hits[0].series_number, hits[0].description,
                              (f"data.series_mapping names {want!r}",))
            else:  # an error even when channels may be missing: the mapping promised this series
                what = "no series matches" if not hits else f"{len(hits)} series match"
                problems[c] = (f"{where}: {what} channel {c!r} (data.series_mapping names {want!r}) "
                               f"in study of {name}; series descriptions found: {found}")
        rest = [c for c in self.channels if c not in mapping]
        taken = {s.series_uid for s in chosen.values() if s is not None}
        identified = identify_series(members, self.channels, self.patterns) if rest else []
        left = [x for x in identified if x.series.series_uid not in taken]
        for c in rest:
            pick, why = choose(left, c)
            chosen[c] = pick.series if pick else None
            if pick is not None:
                reasons[c] = identification_record(c, pick)
            elif why.startswith("no series"):
                seen = "; ".join(f"{x.label()}: {x.contrast or 'none'}"
                                 + (" (named for another channel by the mapping)"
                                    if x.series.series_uid in taken else "") for x in identified)
                problems[f"missing:{c}"] = (f"{where}: no series matches channel {c!r} in study of {name} "
                                            f"(identified: {seen}); series descriptions found: {found}")
            else:
                problems[c] = f"{where}: channel {c!r} in study of {name}: {why}"
        order = {k: i for i, c in enumerate(self.channels) for k in (c, f"missing:{c}")}
        problems = dict(sorted(problems.items(), key=lambda kv: order[kv[0]]))
        return ([chosen[c] for c in self.channels], problems, [reasons[c] for c in self.channels if c in reasons],
                any(c in mapping for c in self.channels) or any(x.channel for x in identified))

    def check(self, ref: CaseRef) -> tuple[Case | None, list[str]]:
        """Build every channel's volume and list every problem."""
        problems = list(ref.problems)
        if problems:
            return None, problems
        vols = []
        for c, files in zip(self.channels, ref.series):
            try:
                vols.append(read_series(files, self.max_voxels, self.gap_tol))
            except DataError as e:
                problems.append(f"{e} (channel {c!r})")
        if problems:
            return None, problems
        first = vols[0]
        data = [first.data]
        for c, v in zip(self.channels[1:], vols[1:]):
            why = grid_mismatch(first.affine, first.data.shape, v.affine, v.data.shape, self.affine_tol_mm)
            aligned = None if why is None else align_to_grid(v.data, v.affine, first.affine, first.data.shape,
                                                             self.affine_tol_mm)
            if why is None:
                data.append(v.data)
            elif aligned is not None:
                data.append(aligned)
            elif self.resample_channels:
                data.append(resample_to(v.data, v.affine, first.affine, first.data.shape))
            else:
                problems.append(f"{v.files[0]}: channel {c!r} {why} of channel {self.channels[0]!r}")
        for c, d, v in zip(self.channels, data, vols):
            if c not in ref.missing and not d.any():
                problems.append(f"{v.files[0]}: channel {c!r} is empty (every voxel is zero)")
        label = None
        if ref.label is not None:
            try:
                lab = read_nifti(ref.label, ndim=(3,), max_voxels=self.max_voxels)
                raw = lab.data
                why = grid_mismatch(first.affine, first.data.shape, lab.affine, lab.data.shape, self.affine_tol_mm)
                if why:
                    raw = align_to_grid(lab.data, lab.affine, first.affine, first.data.shape, self.affine_tol_mm)
                    if raw is None:
                        problems.append(f"{ref.label}: label {why} of channel {self.channels[0]!r}")
                if raw is not None:
                    label = self.check_label(raw, ref.label, problems)
            except DataError as e:
                problems.append(str(e))
        if problems:
            return None, problems
        image = zero_channels(np.stack(data), self.channels, ref.missing)
        return Case(ref=ref, image=image, affine=first.affine, label=label), []


class XraySource(Source):
    """2D radiographs (CR/DX DICOM) with optional PNG or NIfTI masks.

    Args:
        root: folder scanned recursively for DICOM files.
        mask_dir: folder of masks named ``{case}.png``, ``{case}.nii.gz`` or ``{case}.nii``.
        voi_lut: apply the VOI LUT or window stored in the file.
        convention: label coding of the masks (``binary``: 0 background, 1 or 255 lesion).
        max_voxels: refuse images with more pixels than this (before decoding).
    """

    channels = ("xray",)

    def __init__(self, root: str | Path, mask_dir: str | None = "masks", voi_lut: bool = False,
                 convention: str = "binary", max_voxels: int = DEFAULT_MAX_VOXELS, affine_tol_mm: float = 1e-3,
                 **_: object) -> None:
        super().__init__(root, "binary" if convention == "msd" else convention, max_voxels, affine_tol_mm)
        self.mask_dir = None
        if mask_dir:
            self.mask_dir = Path(mask_dir) if Path(mask_dir).is_absolute() else self.root / mask_dir
        self.voi_lut = bool(voi_lut)

    def cases(self) -> list[CaseRef]:
        """One case per DICOM file."""
        skip = (self.mask_dir,) if self.mask_dir else ()
        refs = []
        for path in walk_files(self.root, skip=skip):
            if not looks_like_dicom(path):
                continue
            name = _safe(path.relative_to(self.root).with_suffix("").as_posix().replace("/", "_"))
            refs.append(CaseRef(name=name, images=(path,), label=self._mask(name)))
        if not refs:
            raise DataError(self.root, "no DICOM file found")
        return refs

    def _mask(self, name: str) -> Path | None:
        if self.mask_dir is None:
            return None
        for ext in (".png", ".nii.gz", ".nii"):
            if (self.mask_dir / (name + ext)).is_file():
                return self.mask_dir / (name + ext)
        return None

    def check(self, ref: CaseRef) -> tuple[Case | None, list[str]]:
        """Read the radiograph and its mask, listing every problem."""
        problems = list(ref.problems)
        image = None
        try:
            rad = read_radiograph(ref.images[0], self.voi_lut, self.max_voxels)
            image = rad.data
            if not image.any() or float(image.max()) == float(image.min()):
                problems.append(f"{ref.images[0]}: image is empty (constant intensity)")
        except DataError as e:
            problems.append(str(e))
        raw = None
        if ref.label is not None:
            try:
                raw = read_mask(ref.label, self.max_voxels)
            except DataError as e:
                problems.append(str(e))
        if image is not None and raw is not None and raw.shape != image.shape:
            problems.append(f"{ref.label}: mask shape {raw.shape} (columns, rows) differs from the image's "
                            f"{image.shape} in {ref.images[0].name}")
        label = self.check_label(raw, ref.label, problems) if raw is not None else None
        if problems or image is None:
            return None, problems
        affine = np.diag([rad.spacing[0], rad.spacing[1], 1.0, 1.0])
        # images are (C, X, Y, 1); intensities shifted so the minimum is zero-free background
        img = (image - float(image.min()) + 1.0)[None, :, :, None].astype(np.float32)
        return Case(ref=ref, image=img, affine=affine, label=None if label is None else label[:, :, None],
                    extra={"spacing_source": rad.spacing_source, "photometric": rad.photometric}), []


def read_mask(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> np.ndarray:
    """A 2D mask ``(X, Y)`` (X = column) from a PNG (greyscale or equal RGB channels) or NIfTI file."""
    if path.suffix.lower() == ".png":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                if im.width * im.height > max_voxels:
                    raise DataError(path, f"mask of {im.width}x{im.height} exceeds the budget of {max_voxels} voxels")
                arr = np.asarray(im)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DataError(path, f"not a readable PNG file ({type(e).__name__}: {e})") from e
        if arr.ndim == 3:
            if not all(np.array_equal(arr[..., 0], arr[..., i]) for i in range(1, min(arr.shape[2], 3))):
                raise DataError(path, "colour mask: expected greyscale (or equal RGB channels)")
            arr = arr[..., 0]
        return np.ascontiguousarray(arr.T)
    vol = read_nifti(path, ndim=(2, 3), max_voxels=max_voxels)
    data = vol.data
    if data.ndim == 3:
        if data.shape[2] != 1:
            raise DataError(path, f"expected a 2D mask, got shape {data.shape}")
        data = data[:, :, 0]
    return data
