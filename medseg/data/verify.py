"""Dataset verification: every case is checked before anything is planned or trained, and *every*
problem is listed (missing, unreadable or truncated files, channel count, grid mismatches,
NaN/Inf, empty images, label values, size budget, paths escaping the dataset).

``verification.json`` and ``verification.txt`` record them. Any problem stops ``prepare`` unless
``data.skip_bad=true``, which quarantines the bad cases. Statistics of a good case are cached
under ``verified/`` of the cache, keyed by :func:`medseg.data.cache.input_hash`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.cache import input_hash
from medseg.data.contrasts import identification_json
from medseg.data.geometry import ras_shape, ras_spacing
from medseg.data.sources import CaseRef, Source
from medseg.errors import DataError, MedsegError, failure_line
from medseg.utils.files import read_json, write_json, write_text
from medseg.utils.parallel import parallel_map

log = logging.getLogger(__name__)


@dataclass
class Verification:
    """Outcome of verifying a dataset.

    Args:
        refs: every case of the source.
        checks: one record per case: ``problems`` (messages), and for a good case ``stats``
            (:func:`case_stats`), ``input_key`` and ``reused``.
        dataset_problems: problems not tied to one case (e.g. unreadable files found while scanning).
    """

    refs: list[CaseRef]
    checks: list[dict[str, Any]]
    dataset_problems: list[str]

    @property
    def good(self) -> list[tuple[CaseRef, dict[str, Any]]]:
        """Cases without problems and their records."""
        return [(r, c) for r, c in zip(self.refs, self.checks) if not c["problems"]]

    @property
    def bad(self) -> list[tuple[CaseRef, dict[str, Any]]]:
        """Cases with problems and their records."""
        return [(r, c) for r, c in zip(self.refs, self.checks) if c["problems"]]


def verify_dataset(source: Source, cache_root: Path, src_key: str, workers: int, skip_bad: bool,
                   out_dir: Path) -> Verification:
    """Verify every case of ``source``, write the reports into ``out_dir`` and report problems.

    Args:
        source: the dataset source.
        cache_root: ``paths.cache_dir`` (records go under ``verified/``).
        src_key: key of the source settings (:func:`medseg.data.cache.source_key`).
        workers: parallel processes.
        skip_bad: quarantine bad cases instead of failing.
        out_dir: where ``verification.json`` and ``verification.txt`` go.

    Raises:
        DataError: the dataset lists no cases, or no case passed verification.
        MedsegError: some case failed verification and ``skip_bad`` is false.
    """
    refs = source.cases()
    if not refs:
        raise DataError(source.root, "the dataset lists no cases")
    log.info("prepare: verifying %d cases from %s", len(refs), source.root)
    checks = parallel_map(verify_case, [(source, r, cache_root / "verified", src_key) for r in refs], workers)
    result = Verification(refs, checks, list(getattr(source, "scan_problems", [])))
    write_verification(out_dir, source, result, skip_bad)
    if result.bad or result.dataset_problems:
        report_problems(result.bad, result.dataset_problems, len(refs), skip_bad, out_dir)
    if not result.good:
        raise DataError(source.root, "no case passed verification (see verification.json)")
    return result


def verify_case(source: Source, ref: CaseRef, verified: Path, src_key: str) -> dict[str, Any]:
    """Check one case; statistics of a good case are cached under its input hash.

    Returns:
        ``{"problems": [...]}`` for a bad case; ``problems`` (empty), ``stats``, ``input_key`` and
        ``reused`` (when read from the cache) for a good one.
    """
    try:
        missing = [f"{f}: file not found" for f in ref.files if not f.is_file()]
        if missing or ref.problems:
            return {"problems": list(ref.problems) + missing}
        key = input_hash(source, ref, src_key)
        record = verified / f"{ref.name}-{key}.json"
        if record.is_file():
            return {**read_json(record), "reused": True}
        case, problems = source.check(ref)
        if problems or case is None:
            return {"problems": problems or [f"{ref.name}: could not be loaded"]}
        out = {"problems": [], "stats": case_stats(case.image, case.label, case.affine), "input_key": key}
        write_json(record, out)
        return out
    except MedsegError as e:
        return {"problems": [str(e)]}
    except (OSError, ValueError, MemoryError) as e:
        return {"problems": [failure_line(ref.files[0] if ref.files else ref.name, e)]}


def case_stats(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray) -> dict[str, Any]:
    """Statistics of a raw case.

    Args:
        image: ``(C, X, Y, Z)`` in the file's voxel order.
        label: ``(X, Y, Z)`` internal codes, or ``None``.
        affine: voxel -> RAS mm affine.

    Returns:
        ``shape`` and ``spacing`` (mm) along R, A, S; per-channel intensity statistics over the
        non-zero and the foreground voxels; ``label_counts`` (voxels per code, ``None`` unlabelled).
    """
    fg = label > 0 if label is not None else None
    chans = []
    for c in range(image.shape[0]):
        nz = image[c][image[c] != 0]
        tum = image[c][fg] if fg is not None and fg.any() else np.empty(0)
        chans.append({"nonzero": _describe(nz), "foreground": _describe(tum)})
    counts = np.bincount(label.ravel(), minlength=4).tolist() if label is not None else None
    return {"shape": ras_shape(affine, image.shape[1:]), "spacing": list(ras_spacing(affine)), "channels": chans,
            "label_counts": counts}


def _describe(v: np.ndarray) -> dict[str, float] | None:
    if v.size == 0:
        return None
    p = np.percentile(v, [0.5, 50, 99.5])
    return {"mean": float(v.mean()), "std": float(v.std()), "p00_5": float(p[0]),
            "p50": float(p[1]), "p99_5": float(p[2]), "n": int(v.size)}


def report_problems(bad: list[tuple[CaseRef, dict[str, Any]]], dataset_problems: list[str], n_cases: int,
                    skip_bad: bool, out_dir: Path) -> None:
    """Log every problem (one line each); raise unless ``skip_bad``.

    Raises:
        MedsegError: there are problems and ``skip_bad`` is false (names the first and the report).
    """
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


def write_verification(out_dir: Path, source: Source, result: Verification, skip_bad: bool) -> None:
    """Write ``verification.json`` (every case and problem) and ``verification.txt`` (the problems)."""
    refs, bad = result.refs, result.bad
    report = {
        "root": str(source.root), "source": type(source).__name__, "channels": list(source.channels),
        "convention": source.convention, "n_cases": len(refs), "n_ok": len(refs) - len(bad), "n_bad": len(bad),
        "mode": "skip_bad (bad cases quarantined)" if skip_bad else "strict (any problem stops prepare)",
        "dataset_problems": result.dataset_problems,
        "cases": [{"name": r.name, "ok": not c["problems"], "problems": c["problems"],
                   "files": [str(f) for f in r.files][:8], "n_files": len(r.files),
                   "verified_from_cache": c.get("reused", False),
                   **({"contrasts": identification_json(r)} if r.identification else {})}
                  for r, c in zip(refs, result.checks)],
    }
    write_json(out_dir / "verification.json", report)
    lines = [f"verification of {source.root}: {report['n_ok']} of {len(refs)} cases OK, {len(bad)} with problems"]
    lines += [f"  dataset: {p}" for p in result.dataset_problems]
    for r, c in bad:
        lines += [f"  {r.name}: {p}" for p in c["problems"]]
    write_text(out_dir / "verification.txt", "\n".join(lines) + "\n")
    log.info("%s", lines[0])
