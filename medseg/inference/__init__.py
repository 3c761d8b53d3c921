"""Prediction: sliding windows, the case predictor, target decoding, precision, and the Hydra-free
batch runtime (``medseg-predict``). Never imports the trainer (:mod:`medseg.engine`).

:func:`build_predictor` (:mod:`medseg.inference.build`) is the one way to build a
:class:`~medseg.inference.predictor.CasePredictor` from a checkpoint or an artifact.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_predictor"]


def __getattr__(name: str) -> Any:
    if name == "build_predictor":  # imported on first use: the submodules stay cheap to import
        from medseg.inference.build import build_predictor

        return build_predictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
