"""``prepare``: verify every case, plan, preprocess into a reusable cache, split, fingerprint.

Steps:

1. **Verify** every case of the source and list *every* problem (missing, unreadable or truncated
   files, channel count, grid mismatches, NaN/Inf, empty images, label values, size budget, paths
   escaping the dataset). ``verification.json`` and ``verification.txt`` record them (they are
   kept even when the stage fails). By default any problem stops the stage with exit status 2;
   ``data.skip_bad=true`` quarantines the bad cases and goes on with the others.
2. **Plan** (:mod:`medseg.data.planning`): target spacing and patch size from the fingerprint
   and the memory budget; explicit config values win. Written to ``plan.json``.
3. **Preprocess** into the cache, **split**, and write ``datalist.json`` (entries pointing into the
   cache), ``fingerprint.json``, ``summary.json``, ``config.yaml``.

Cache layout under ``paths.cache_dir``:

- ``verified/<case>-<key>.json``: statistics of a case that passed verification, keyed by the
  sha256 of its files and the source settings, so unchanged cases are not decoded again;
- ``preprocessed/<spec key>/<case>-<key>/``: ``image.npy`` ``(C, X, Y, Z)`` float32,
  ``label.npy`` ``(X, Y, Z)`` uint8, ``meta.json``; reused while its inputs and the preprocessing
  settings are unchanged; a change rebuilds only the cases it touches. Entries are written to a
  temporary folder and renamed, so an interrupted run never leaves a broken entry.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from medseg.config import choice
from medseg.data.labels import LabelSpec
from medseg.data.planning import estimate_memory_gb, plan_patch, plan_spacing
from medseg.data.preprocess import PreprocessSpec, preprocess
from medseg.data.sources import CaseRef, Source, make_source
from medseg.errors import DataError, MedsegError
from medseg.models.unet import size_divisor
from medseg.stages.common import plain
from medseg.utils.files import atomic_dir, read_json, sha256_file, to_json, write_json, write_text
from medseg.utils.parallel import parallel_map

log = logging.getLogger(__name__)

#: Bump when preprocessing code changes in a way that alters cached arrays.
PREPROCESS_VERSION = 2

#: ``data`` keys that change what a source reads (part of every cache key).
SOURCE_KEYS = ("source", "convention", "channels", "patterns", "label_pattern", "datalist", "series_patterns",
               "series_mapping", "label_dir", "slice_gap_tol_mm", "resample_channels", "mask_dir", "voi_lut",
               "max_voxels", "affine_tol_mm")


def source_options(data_cfg: DictConfig) -> dict[str, Any]:
    """The ``data`` settings a source is built from (recorded in ``plan.json`` for later stages)."""
    d = plain(data_cfg)
    return {k: d[k] for k in SOURCE_KEYS if k in d and k != "source"}


def build_source(data_cfg: DictConfig) -> Source:
    """The dataset source named by ``data.source`` over ``data.root``."""
    kind = choice(data_cfg.source)
    return make_source(kind, str(data_cfg.root), **source_options(data_cfg))


def ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Spacing (mm) of a grid along R, A, S."""
    from nibabel import orientations as ornt

    zooms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    order = ornt.io_orientation(affine)[:, 0].astype(int)
    ras = np.zeros(3)
    ras[order] = zooms
    return tuple(float(z) for z in ras)


def ras_shape(affine: np.ndarray, shape: tuple[int, ...]) -> list[int]:
    """Shape of a grid with its axes in R, A, S order."""
    from nibabel import orientations as ornt

    order = ornt.io_orientation(affine)[:, 0].astype(int)
    out = [0, 0, 0]
    for axis, n in zip(order, shape):
        out[axis] = int(n)
    return out


def prepare_stage(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run the prepare stage (see module docstring)."""
    source = build_source(cfg.data)
    refs = source.cases()
    if not refs:
        raise DataError(source.root, "the dataset lists no cases")
    cache_root = Path(cfg.paths.cache_dir)
    src_key = _key({"kind": choice(cfg.data.source), **source_options(cfg.data),
                    "channels_read": list(source.channels)})
    workers = int(cfg.data.workers)
    log.info("prepare: verifying %d cases from %s", len(refs), source.root)
    checks = parallel_map(_verify_case, [(source, r, cache_root / "verified", src_key) for r in refs], workers)
    dataset_problems = list(getattr(source, "scan_problems", []))
    good = [(r, c) for r, c in zip(refs, checks) if not c["problems"]]
    bad = [(r, c) for r, c in zip(refs, checks) if c["problems"]]
    _write_verification(out_dir, source, refs, checks, dataset_problems, bool(cfg.data.skip_bad))
    if bad or dataset_problems:
        _report_problems(bad, dataset_problems, len(refs), bool(cfg.data.skip_bad), out_dir)
    if not good:
        raise DataError(source.root, "no case passed verification (see verification.json)")
    stats = [c["stats"] for _, c in good]
    plan = make_plan(cfg, stats, source, labels=source.labels)
    spec = PreprocessSpec(channels=tuple(source.channels), target_spacing=tuple(plan["target_spacing"]),
                          normalization=choice(cfg.data.normalization),
                          crop_foreground=bool(cfg.data.crop_foreground))
    spec_key = _key({"spec": spec.to_json(), "source": src_key, "version": PREPROCESS_VERSION})
    cache = cache_root / "preprocessed" / spec_key
    log.info("prepare: target spacing %s mm, patch %s, cache %s", plan["target_spacing"], plan["patch_size"], cache)
    results = parallel_map(_prepare_case, [(source, r, c, spec, cache) for r, c in good], workers)
    failed = [(r, res) for (r, _), res in zip(good, results) if isinstance(res, str)]
    if failed:  # preprocessing found what verification could not (e.g. nothing left after cropping)
        _report_problems([(r, {"problems": [res]}) for r, res in failed], [], len(refs),
                         bool(cfg.data.skip_bad), out_dir)
    metas: list[dict[str, Any]] = [m for m in results if isinstance(m, dict)]
    if not metas:
        raise DataError(source.root, "no case could be preprocessed")
    reused = sum(m.pop("reused") for m in metas)
    splits = split_cases(metas, float(cfg.data.val_fraction), float(cfg.data.test_fraction),
                         int(cfg.data.split_seed))
    write_json(out_dir / "datalist.json", splits)
    write_json(out_dir / "fingerprint.json", fingerprint(metas, source.channels, source.labels))
    write_json(out_dir / "plan.json", {
        **plan,
        "preprocessing": spec.to_json(),
        "labels": source.labels.to_json(),
        "source": {"kind": choice(cfg.data.source),
                   "root": str(Path(cfg.data.root).resolve()), "convention": source.convention,
                   "options": source_options(cfg.data)},
        "cache": str(cache.resolve()),
    })
    counts = {k: len(v) for k, v in splits.items()}
    quarantined = [r.name for r, _ in bad] + [r.name for r, _ in failed]
    log.info("prepare: %d cases (%d reused from cache, %d quarantined), split %s",
             len(metas), reused, len(quarantined), counts)
    return {"cases": len(metas), "reused_from_cache": reused, "quarantined": quarantined, "split": counts,
            "target_spacing": plan["target_spacing"], "patch_size": plan["patch_size"], "cache": str(cache)}


def _key(obj: Any) -> str:
    return hashlib.sha256(to_json(obj).encode()).hexdigest()[:16]


def _report_problems(bad: list[tuple[CaseRef, dict]], dataset_problems: list[str], n_cases: int,
                     skip_bad: bool, out_dir: Path) -> None:
    """Log every problem (one line each); raise unless ``skip_bad``."""
    for problem in dataset_problems:
        log.error("%s", problem)
    for ref, check in bad:
        for problem in check["problems"]:
            log.error("%s: %s", ref.name, problem)
    n_problems = len(dataset_problems) + sum(len(c["problems"]) for _, c in bad)
    if skip_bad:
        if bad:
            log.warning("prepare: quarantined %d of %d cases (data.skip_bad=true): %s",
                        len(bad), n_cases, ", ".join(r.name for r, _ in bad))
        if dataset_problems:
            log.warning("prepare: ignored %d unreadable files (data.skip_bad=true)", len(dataset_problems))
        return
    first = dataset_problems[0] if dataset_problems else bad[0][1]["problems"][0]
    raise MedsegError(f"{len(bad)} of {n_cases} cases failed verification with {n_problems} problem(s); "
                      f"first: {first}. All are listed in {out_dir / 'verification.json'}; "
                      f"fix them or set data.skip_bad=true to quarantine the bad cases")


def _write_verification(out_dir: Path, source: Source, refs: list[CaseRef], checks: list[dict],
                        dataset_problems: list[str], skip_bad: bool) -> None:
    bad = [(r, c) for r, c in zip(refs, checks) if c["problems"]]
    report = {
        "root": str(source.root), "source": type(source).__name__, "channels": list(source.channels),
        "convention": source.convention, "n_cases": len(refs), "n_ok": len(refs) - len(bad), "n_bad": len(bad),
        "mode": "skip_bad (bad cases quarantined)" if skip_bad else "strict (any problem stops prepare)",
        "dataset_problems": dataset_problems,
        "cases": [{"name": r.name, "ok": not c["problems"], "problems": c["problems"],
                   "files": [str(f) for f in r.files][:8], "n_files": len(r.files),
                   "verified_from_cache": c.get("reused", False)} for r, c in zip(refs, checks)],
    }
    write_json(out_dir / "verification.json", report)
    lines = [f"verification of {source.root}: {report['n_ok']} of {len(refs)} cases OK, {len(bad)} with problems"]
    lines += [f"  dataset: {p}" for p in dataset_problems]
    for r, c in bad:
        lines += [f"  {r.name}: {p}" for p in c["problems"]]
    write_text(out_dir / "verification.txt", "\n".join(lines) + "\n")
    log.info("%s", lines[0])


def make_plan(cfg: DictConfig, stats: list[dict[str, Any]], source: Source, labels: LabelSpec) -> dict[str, Any]:
    """Target spacing and patch size from the fingerprint; explicit config values win."""
    spacings = np.asarray([s["spacing"] for s in stats])
    planned_spacing, why_spacing = plan_spacing(spacings)
    two_d = all(s["shape"][2] == 1 for s in stats)
    if two_d:  # single-slice images keep their (nominal) slice spacing
        planned_spacing[2] = float(np.median(spacings[:, 2]))
    explicit_spacing = cfg.data.target_spacing
    target = [float(v) for v in explicit_spacing] if explicit_spacing else planned_spacing
    shapes = np.asarray([s["shape"] for s in stats], dtype=float)
    median_shape = np.median(shapes * spacings / np.asarray(target), axis=0)
    model = plain(cfg.model)
    dims = int(model["spatial_dims"])
    budget = float(cfg.data.memory_budget_gb)
    batch = int(cfg.train.batch_size)
    planned_patch, est = plan_patch(median_shape, model, len(source.channels), labels.num_classes, batch,
                                    budget, size_divisor(model["strides"]), dims)
    explicit_patch = cfg.train.patch_size
    patch = [int(p) for p in explicit_patch] if explicit_patch else planned_patch
    vol = [*patch, 1] if dims == 2 else patch
    used_est = estimate_memory_gb(vol, model, len(source.channels), labels.num_classes, batch)
    if used_est > budget:
        log.warning("plan: train.patch_size=%s needs about %.1f GB per step, over data.memory_budget_gb=%.1f",
                    patch, used_est, budget)
    return {
        "target_spacing": target,
        "patch_size": patch,
        "batch_size": batch,
        "planned": {"target_spacing": planned_spacing, "target_spacing_reason": why_spacing,
                    "patch_size": planned_patch, "estimated_memory_gb": round(est, 3)},
        "explicit": {"target_spacing": bool(explicit_spacing), "patch_size": bool(explicit_patch)},
        "estimated_memory_gb": round(used_est, 3),
        "memory_budget_gb": budget,
        "median_shape_at_target": [float(v) for v in median_shape],
        "two_dimensional": two_d,
    }


def _input_hash(source: Source, ref: CaseRef, src_key: str) -> str:
    h = hashlib.sha256(src_key.encode())
    for f in source.input_files(ref):
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]


def _verify_case(source: Source, ref: CaseRef, verified: Path, src_key: str) -> dict[str, Any]:
    """Check one case; statistics of a good case are cached under its input hash."""
    try:
        missing = [f"{f}: file not found" for f in ref.files if not f.is_file()]
        if missing or ref.problems:
            return {"problems": list(ref.problems) + missing}
        key = _input_hash(source, ref, src_key)
        record = verified / f"{ref.name}-{key}.json"
        if record.is_file():
            return {**read_json(record), "reused": True}
        case, problems = source.check(ref)
        if problems or case is None:
            return {"problems": problems or [f"{ref.name}: could not be loaded"]}
        stats = case_stats(case.image, case.label, case.affine)
        out = {"problems": [], "stats": stats, "input_key": key}
        write_json(record, out)
        return out
    except MedsegError as e:
        return {"problems": [str(e)]}
    except (OSError, ValueError, MemoryError) as e:
        return {"problems": [f"{ref.files[0] if ref.files else ref.name}: {type(e).__name__}: {e}"]}


def _prepare_case(source: Source, ref: CaseRef, check: dict[str, Any], spec: PreprocessSpec,
                  cache: Path) -> dict[str, Any] | str:
    """Preprocess one verified case into the cache (or reuse it); a problem comes back as a message."""
    try:
        entry = cache / f"{ref.name}-{check['input_key']}"
        # where the case sits in this dataset: never taken from the cache
        where = {"name": ref.name, "split": ref.split, "source_images": [str(p) for p in ref.images[:8]],
                 "source_label": str(ref.label) if ref.label else None, "stats": check["stats"]}
        if (entry / "meta.json").is_file():
            meta = read_json(entry / "meta.json")
            return {**meta, **where, "reused": True}
        case = source.load(ref)
        image, label, geom = preprocess(case.image, case.affine, spec, case.label, name=str(ref.images[0]))
        meta = {
            "image": str((entry / "image.npy").resolve()),
            "label": str((entry / "label.npy").resolve()) if label is not None else None,
            "geometry": geom.to_json(),
        }
        with atomic_dir(entry) as tmp:
            np.save(tmp / "image.npy", image)
            if label is not None:
                np.save(tmp / "label.npy", label)
            write_json(tmp / "meta.json", meta)
        return {**meta, **where, "reused": False}
    except MedsegError as e:
        return str(e)
    except (OSError, ValueError, MemoryError) as e:
        return f"{ref.images[0]}: {type(e).__name__}: {e}"


def case_stats(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray) -> dict[str, Any]:
    """Shape and spacing along R/A/S, per-channel intensity statistics (non-zero and foreground
    voxels) and label counts of a raw case."""
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
    return {"shape": ras_shape(affine, image.shape[1:]), "spacing": list(ras_spacing(affine)), "channels": chans,
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
        "label_fraction": {labels.labels[i]: float(total[i] / max(total.sum(), 1))
                           for i in range(len(total)) if i in labels.labels},
    }


def _mean_stats(items: list[dict[str, float]]) -> dict[str, float] | None:
    if not items:
        return None
    return {k: float(np.mean([i[k] for i in items])) for k in items[0]}
