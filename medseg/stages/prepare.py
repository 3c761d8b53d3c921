"""``prepare``: verify every case, plan, preprocess into a reusable cache, split, fingerprint.

Steps (the work is done in :mod:`medseg.data`):

1. **Verify** every case of the source (:mod:`medseg.data.verify`) and list *every* problem;
   ``verification.json`` and ``verification.txt`` record them (they are kept even when the stage
   fails). By default any problem stops the stage with exit status 2; ``data.skip_bad=true``
   quarantines the bad cases and goes on with the others.
2. **Plan** (:func:`medseg.data.planning.make_plan`): target spacing and patch size from the
   fingerprint and the memory budget; explicit config values win.
3. **Preprocess** into the cache (:mod:`medseg.data.cache`), **split**
   (:mod:`medseg.data.splits`), and write ``datalist.json``, ``plan.json``, ``fingerprint.json``
   (:class:`~medseg.data.prepared.PreparedDataset`), ``summary.json`` and ``config.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medseg.config import MedsegConfig, choice
from medseg.data.cache import prepare_case, source_key, spec_folder
from medseg.data.fingerprint import fingerprint
from medseg.data.planning import make_plan
from medseg.data.prepared import PreparedDataset
from medseg.data.preprocess import PreprocessSpec
from medseg.data.sources import Source, build_source, source_options
from medseg.data.splits import split_cases
from medseg.data.verify import Verification, report_problems, verify_dataset
from medseg.errors import DataError
from medseg.utils.parallel import parallel_map

log = logging.getLogger(__name__)


def prepare(cfg: MedsegConfig, out_dir: Path) -> PreparedDataset:
    """Verify, plan, preprocess and split the dataset of ``cfg.data`` into ``out_dir``.

    Args:
        cfg: the config (``data``, ``model``, ``train`` and ``paths.cache_dir`` are read).
        out_dir: the prepare folder.

    Raises:
        DataError: no case is usable.
        MedsegError: some case failed verification and ``data.skip_bad`` is false.
    """
    data = cfg.data
    source = build_source(data)
    cache_root = Path(cfg.paths.cache_dir)
    src_key = source_key(data, source)
    checked = verify_dataset(source, cache_root, src_key, int(data.workers), bool(data.skip_bad), out_dir)
    plan = make_plan([c["stats"] for _, c in checked.good], data, cfg.model, cfg.train, len(source.channels),
                     source.labels)
    spec = PreprocessSpec(channels=tuple(source.channels), target_spacing=tuple(plan["target_spacing"]),
                          normalization=choice(data.normalization), crop_foreground=bool(data.crop_foreground))
    cache = spec_folder(cache_root, spec, src_key)
    log.info("prepare: target spacing %s mm, patch %s, cache %s", plan["target_spacing"], plan["patch_size"], cache)
    metas, failed = _preprocess(source, checked, spec, cache, cfg, out_dir)
    reused = sum(m.pop("reused") for m in metas)
    splits = split_cases(metas, float(data.val_fraction), float(data.test_fraction), int(data.split_seed))
    plan = {**plan, "preprocessing": spec.to_json(), "labels": source.labels.to_json(),
            "source": {"kind": choice(data.source), "root": str(Path(data.root).resolve()),
                       "convention": source.convention, "options": source_options(data)},
            "cache": str(cache.resolve())}
    report = {"reused_from_cache": reused, "quarantined": [r.name for r, _ in checked.bad] + failed,
              "cache": str(cache)}
    prepared = PreparedDataset(out_dir, splits, plan, fingerprint(metas, source.channels, source.labels),
                               report=report).write()
    log.info("prepare: %d cases (%d reused from cache, %d quarantined), split %s",
             len(metas), reused, len(report["quarantined"]), prepared.counts)
    return prepared


def _preprocess(source: Source, checked: Verification, spec: PreprocessSpec, cache: Path, cfg: MedsegConfig,
                out_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Preprocess the verified cases into ``cache``: their metas, and the names of the cases that
    failed (reported like verification problems)."""
    good = checked.good
    results = parallel_map(prepare_case, [(source, r, c, spec, cache) for r, c in good], int(cfg.data.workers))
    failed = [(r, res) for (r, _), res in zip(good, results) if isinstance(res, str)]
    if failed:  # preprocessing found what verification could not (e.g. nothing left after cropping)
        report_problems([(r, {"problems": [res]}) for r, res in failed], [], len(checked.refs),
                        bool(cfg.data.skip_bad), out_dir)
    metas = [m for m in results if isinstance(m, dict)]
    if not metas:
        raise DataError(source.root, "no case could be preprocessed")
    return metas, [r.name for r, _ in failed]


def prepare_stage(cfg: MedsegConfig, out_dir: Path) -> dict[str, Any]:
    """Run the prepare stage (see module docstring)."""
    return prepare(cfg, out_dir).summary()
