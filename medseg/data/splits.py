"""Splitting prepared cases: the train / validation / test split of ``prepare`` and the
cross-validation folds of ``train``; and the check that a patch size suits the U-Net."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.errors import ConfigError
from medseg.models.memory import size_divisor

#: Keys of a case kept in ``datalist.json``.
ENTRY_KEYS = ("name", "image", "label", "source_images", "source_label", "geometry")


def split_cases(metas: list[dict[str, Any]], val_fraction: float, test_fraction: float,
                seed: int) -> dict[str, list[dict[str, Any]]]:
    """Train / validation / test split of labelled cases.

    Labelled cases the dataset declares as test form the test split; if there are none,
    ``test_fraction`` of the training cases are held out. ``val_fraction`` of the remaining
    training cases validate. Unlabelled cases are listed under ``unlabelled``.

    Args:
        metas: one dict per case with ``name``, ``split`` (as the dataset declares it), ``label``,
            ``stats`` (for ``label_counts``) and the :data:`ENTRY_KEYS`.
        val_fraction: share of the training pool that validates.
        test_fraction: share held out for testing when the dataset declares no test cases.
        seed: seed of the random draw.

    Returns:
        ``{"train", "validation", "test", "unlabelled"}`` -> entries sorted by name.
    """
    rng = np.random.default_rng(seed)
    labelled = [m for m in metas if m.get("label")]
    unlabelled = [m for m in metas if not m.get("label")]
    test = [m for m in labelled if m["split"] == "test"]
    pool = sorted((m for m in labelled if m["split"] != "test"), key=lambda m: m["name"])
    if not test and len(pool) > 2:
        test, pool = _stratified_take(pool, test_fraction, rng)
    val, train = _stratified_take(pool, val_fraction, rng) if len(pool) > 1 else ([], pool)
    return {"train": _entries(train), "validation": _entries(val), "test": _entries(test),
            "unlabelled": _entries(unlabelled)}


def _entries(metas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Datalist entries of ``metas``, sorted by name."""
    return [{k: m[k] for k in ENTRY_KEYS} for m in sorted(metas, key=lambda m: m["name"])]


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


def fold_split(datalist: dict[str, list[dict[str, Any]]], fold: int, folds: int, seed: int
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train / validation entries of cross-validation ``fold`` of ``folds``.

    The pool is the prepared train and validation splits (the test split stays held out); cases
    are sorted by name and dealt into ``folds`` groups in an order drawn from ``seed``, so every
    fold of every run sees the same partition.

    Args:
        datalist: split name -> entries (``PreparedDataset.datalist``).
        fold: the fold to validate on, ``0 .. folds - 1``.
        folds: number of folds.
        seed: seed of the draw (``data.split_seed``).

    Raises:
        ConfigError: ``fold`` is out of range or there are fewer cases than folds.
    """
    if not 0 <= fold < folds:
        raise ConfigError(f"train.fold={fold} must be in 0..{folds - 1} (train.folds={folds})")
    pool = sorted(datalist["train"] + datalist["validation"], key=lambda e: e["name"])
    if len(pool) < folds:
        raise ConfigError(f"train.folds={folds} needs at least {folds} training cases, have {len(pool)}")
    order = np.random.default_rng(seed).permutation(len(pool))
    val_idx = set(order[fold::folds].tolist())
    return ([e for i, e in enumerate(pool) if i not in val_idx], [e for i, e in enumerate(pool) if i in val_idx])


def check_patch(patch: Sequence[int], strides: Sequence[int]) -> None:
    """Refuse patch sizes the U-Net cannot take.

    Raises:
        ConfigError: a size is not a multiple of the product of ``strides``.
    """
    div = size_divisor(strides)
    bad = [p for p in patch if p % div]
    if bad:
        raise ConfigError(f"train.patch_size={list(patch)}: every size must be a multiple of {div} "
                          f"(the product of model.strides={list(strides)})")
