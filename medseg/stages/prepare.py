"""``prepare``: check every case, preprocess into a reusable cache, split, fingerprint.

Outputs (in the stage folder): ``datalist.json`` (train / validation / test entries pointing into
the cache), ``plan.json`` (preprocessing, labels, source), ``fingerprint.json`` (spacings, shapes,
per-channel intensity statistics, label frequencies), ``summary.json``, ``config.yaml``.

The cache lives under ``paths.cache_dir/preprocessed/<spec hash>/<case>-<input hash>/`` with
``image.npy`` ``(C, X, Y, Z)`` float32, ``label.npy`` ``(X, Y, Z)`` uint8 and ``meta.json``; an
entry is reused while its input files and the preprocessing settings are unchanged, and written
atomically so an interrupted run never leaves a broken entry.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from medseg.data.io.nifti import read_header
from medseg.data.labels import LabelSpec
from medseg.data.preprocess import PreprocessSpec, preprocess
from medseg.data.sources import CaseRef, Source, make_source
from medseg.errors import DataError, MedsegError
from medseg.utils.files import atomic_dir, read_json, sha256_file, to_json, write_json

log = logging.getLogger(__name__)

#: Bump when preprocessing code changes in a way that alters cached arrays.
PREPROCESS_VERSION = 1


def build_source(data_cfg: DictConfig) -> Source:
    """The dataset source named by ``data.source`` over ``data.root``."""
    kind = str(getattr(data_cfg.source, "value", data_cfg.source))
    return make_source(kind, str(data_cfg.root), convention=str(data_cfg.convention),
                       max_voxels=int(data_cfg.max_voxels), affine_tol_mm=float(data_cfg.affine_tol_mm))


def ras_spacing(path: Path) -> tuple[float, float, float]:
    """Spacing (mm) of a NIfTI file along R, A, S, read from its header only."""
    from nibabel import orientations as ornt

    img = read_header(path)
    zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
    order = ornt.io_orientation(img.affine)[:, 0].astype(int)
    ras = np.zeros(3)
    ras[order] = zooms
    return tuple(float(z) for z in ras)


def prepare_stage(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run the prepare stage (see module docstring)."""
    source = build_source(cfg.data)
    refs = source.cases()
    if not refs:
        raise DataError(source.root, "the dataset lists no cases")
    spacings = [ras_spacing(r.images[0]) for r in refs]
    target = cfg.data.target_spacing
    target_spacing = tuple(float(s) for s in target) if target else tuple(
        float(s) for s in np.median(np.asarray(spacings), axis=0))
    spec = PreprocessSpec(channels=tuple(source.channels), target_spacing=target_spacing,
                          normalization=str(getattr(cfg.data.normalization, "value", cfg.data.normalization)),
                          crop_foreground=bool(cfg.data.crop_foreground))
    spec_key = hashlib.sha256(to_json({"spec": spec.to_json(), "convention": str(cfg.data.convention),
                                       "version": PREPROCESS_VERSION}).encode()).hexdigest()[:16]
    cache = Path(cfg.paths.cache_dir) / "preprocessed" / spec_key
    log.info("prepare: %d cases from %s, target spacing %s mm, cache %s",
             len(refs), source.root, target_spacing, cache)
    jobs = [(source, ref, spec, cache) for ref in refs]
    results = _map(_prepare_case, jobs, int(cfg.data.workers))
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        for e in errors:
            log.error("%s", e)
        more = f" (and {len(errors) - 1} more problems, listed above)" if len(errors) > 1 else ""
        raise MedsegError(errors[0] + more)
    metas: list[dict[str, Any]] = [r for r in results if isinstance(r, dict)]
    reused = sum(m.pop("reused") for m in metas)
    splits = split_cases(metas, float(cfg.data.val_fraction), float(cfg.data.test_fraction),
                         int(cfg.data.split_seed))
    labels = LabelSpec()
    write_json(out_dir / "datalist.json", splits)
    write_json(out_dir / "fingerprint.json", fingerprint(metas, source.channels, labels))
    write_json(out_dir / "plan.json", {
        "preprocessing": spec.to_json(),
        "labels": labels.to_json(),
        "source": {"kind": str(getattr(cfg.data.source, "value", cfg.data.source)),
                   "root": str(Path(cfg.data.root).resolve()), "convention": str(cfg.data.convention)},
        "cache": str(cache.resolve()),
    })
    counts = {k: len(v) for k, v in splits.items()}
    log.info("prepare: %d cases (%d reused from cache), split %s", len(metas), reused, counts)
    return {"cases": len(metas), "reused_from_cache": reused, "split": counts,
            "target_spacing": list(target_spacing), "cache": str(cache)}


def _map(fn, jobs: list, workers: int) -> list:  # noqa: ANN001
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*j) for j in jobs]
    ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        return list(pool.map(fn, *zip(*jobs)))


def _input_hash(ref: CaseRef) -> str:
    h = hashlib.sha256()
    for f in ref.files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]


def _prepare_case(source: Source, ref: CaseRef, spec: PreprocessSpec, cache: Path) -> dict[str, Any] | str:
    """Preprocess one case into the cache (or reuse it); a problem comes back as a message."""
    try:
        for f in ref.files:
            if not f.is_file():
                raise DataError(f, "file not found")
        entry = cache / f"{ref.name}-{_input_hash(ref)}"
        # where the case sits in this dataset: never taken from the cache
        where = {"name": ref.name, "split": ref.split, "source_images": [str(p) for p in ref.images],
                 "source_label": str(ref.label) if ref.label else None}
        if (entry / "meta.json").is_file():
            meta = read_json(entry / "meta.json")
            return {**meta, **where, "reused": True}
        case = source.load(ref)
        image, label, geom = preprocess(case.image, case.affine, spec, case.label, name=str(ref.images[0]))
        meta = {
            **where,
            "image": str((entry / "image.npy").resolve()),
            "label": str((entry / "label.npy").resolve()) if label is not None else None,
            "geometry": geom.to_json(),
            "stats": case_stats(case.image, case.label, ras_spacing(ref.images[0])),
        }
        with atomic_dir(entry) as tmp:
            np.save(tmp / "image.npy", image)
            if label is not None:
                np.save(tmp / "label.npy", label)
            write_json(tmp / "meta.json", meta)
        return {**meta, "reused": False}
    except MedsegError as e:
        return str(e)
    except (OSError, ValueError) as e:
        return f"{ref.images[0]}: {type(e).__name__}: {e}"


def case_stats(image: np.ndarray, label: np.ndarray | None, spacing: tuple[float, ...]) -> dict[str, Any]:
    """Per-channel intensity statistics (non-zero voxels and tumour voxels) and label counts."""
    fg = label > 0 if label is not None else None
    chans = []
    for c in range(image.shape[0]):
        nz = image[c][image[c] != 0]
        tum = image[c][fg] if fg is not None and fg.any() else np.empty(0)
        chans.append({
            "nonzero": _describe(nz),
            "foreground": _describe(tum),
        })
    counts = np.bincount(label.ravel(), minlength=4).tolist() if label is not None else None
    return {"shape": list(image.shape[1:]), "spacing": list(spacing), "channels": chans,
            "label_counts": counts}


def _describe(v: np.ndarray) -> dict[str, float] | None:
    if v.size == 0:
        return None
    p = np.percentile(v, [0.5, 50, 99.5])
    return {"mean": float(v.mean()), "std": float(v.std()), "p00_5": float(p[0]),
            "p50": float(p[1]), "p99_5": float(p[2]), "n": int(v.size)}


def split_cases(metas: list[dict[str, Any]], val_fraction: float, test_fraction: float,
                seed: int) -> dict[str, list[dict[str, Any]]]:
    """Train / validation / test split of labelled cases.

    Labelled cases the dataset declares as test form the test split; if there are none,
    ``test_fraction`` of the training cases are held out. ``val_fraction`` of the remaining
    training cases validate. Unlabelled cases are listed under ``unlabelled``.
    """
    rng = np.random.default_rng(seed)
    labelled = [m for m in metas if m.get("label")]
    unlabelled = [m for m in metas if not m.get("label")]
    test = [m for m in labelled if m["split"] == "test"]
    pool = sorted((m for m in labelled if m["split"] != "test"), key=lambda m: m["name"])
    if not test and len(pool) > 2:
        test, pool = _stratified_take(pool, test_fraction, rng)
    val, train = _stratified_take(pool, val_fraction, rng) if len(pool) > 1 else ([], pool)

    def entry(m: dict[str, Any]) -> dict[str, Any]:
        return {k: m[k] for k in ("name", "image", "label", "source_images", "source_label", "geometry")}

    return {"train": [entry(m) for m in sorted(train, key=lambda m: m["name"])],
            "validation": [entry(m) for m in sorted(val, key=lambda m: m["name"])],
            "test": [entry(m) for m in sorted(test, key=lambda m: m["name"])],
            "unlabelled": [entry(m) for m in sorted(unlabelled, key=lambda m: m["name"])]}


def _stratified_take(pool: list[dict[str, Any]], fraction: float, rng: np.random.Generator
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out ``fraction`` of ``pool`` (at least one case), tumour and tumour-free cases alike."""
    if fraction <= 0:
        return [], pool
    n_take = max(1, int(round(fraction * len(pool))))
    has_tumour = [bool(sum((m["stats"]["label_counts"] or [0])[1:])) for m in pool]
    groups = [[m for m, t in zip(pool, has_tumour) if t], [m for m, t in zip(pool, has_tumour) if not t]]
    order: list[dict[str, Any]] = []
    for g in groups:  # tumour cases first, so a small hold-out is never tumour-free only
        order += [g[i] for i in rng.permutation(len(g))]
    quota = [int(round(n_take * len(groups[0]) / len(pool))), 0]
    quota[0] = max(min(quota[0], len(groups[0])), min(1, len(groups[0])))
    quota[1] = min(n_take - quota[0], len(groups[1]))
    taken = order[:quota[0]] + order[len(groups[0]):len(groups[0]) + quota[1]]
    ids = {id(m) for m in taken}
    return taken, [m for m in pool if id(m) not in ids]


def fingerprint(metas: list[dict[str, Any]], channels: tuple[str, ...], labels: LabelSpec) -> dict[str, Any]:
    """Dataset fingerprint: spacing and shape distribution, intensities, label frequencies."""
    spacings = np.asarray([m["stats"]["spacing"] for m in metas])
    shapes = np.asarray([m["stats"]["shape"] for m in metas])
    counts = np.asarray([m["stats"]["label_counts"] for m in metas if m["stats"]["label_counts"]])
    chans = {}
    for c, name in enumerate(channels):
        per = [m["stats"]["channels"][c] for m in metas]
        chans[name] = {kind: _mean_stats([p[kind] for p in per if p[kind]]) for kind in ("nonzero", "foreground")}
    total = counts.sum(axis=0) if counts.size else np.zeros(4)
    return {
        "n_cases": len(metas),
        "n_labelled": int(len(counts)),
        "n_tumour_free": int((counts[:, 1:].sum(axis=1) == 0).sum()) if counts.size else 0,
        "spacing_mm": {"median": np.median(spacings, axis=0).tolist(), "min": spacings.min(axis=0).tolist(),
                       "max": spacings.max(axis=0).tolist()},
        "shape": {"median": np.median(shapes, axis=0).tolist(), "min": shapes.min(axis=0).tolist(),
                  "max": shapes.max(axis=0).tolist()},
        "intensity": chans,
        "label_fraction": {labels.labels.get(i, str(i)): float(total[i] / max(total.sum(), 1))
                           for i in range(len(total))},
    }


def _mean_stats(items: list[dict[str, float]]) -> dict[str, float] | None:
    if not items:
        return None
    return {k: float(np.mean([i[k] for i in items])) for k in items[0]}
