"""The one way to build a :class:`~medseg.inference.predictor.CasePredictor`.

``evaluate`` builds it from a training checkpoint (the eager network), ``predict`` and the
Hydra-free ``medseg-predict`` from an exported artifact (TorchScript or ONNX Runtime, optionally an
ensemble of artifacts). Either way the sliding-window settings come from one
:class:`~medseg.config.InferenceConfig`, whose defaults are the only ones.

The artifact path imports neither MONAI nor Hydra; the checkpoint path rebuilds the MONAI network
(:func:`medseg.models.checkpoint.model_from_checkpoint`) and imports it only when used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from medseg.config import Backend, InferenceConfig, choice
from medseg.data.preprocess import PreprocessSpec
from medseg.errors import ArtifactError, ConfigError
from medseg.export.artifact import Artifact
from medseg.inference.postprocess import pooled_enhancing_fit
from medseg.inference.predictor import CasePredictor, pick_device, torch_network
from medseg.inference.targets import Target

log = logging.getLogger(__name__)


def build_predictor(inference: InferenceConfig, *, checkpoint: Path | None = None, artifact: Artifact | None = None,
                    ensemble: Sequence[Artifact] = (), backend: str | Backend = "torch") -> CasePredictor:
    """A case predictor for a checkpoint or an artifact (exactly one of them).

    Args:
        inference: sliding-window settings, device, threads and precision. With an artifact,
            ``min_component_ml=None`` and ``min_enhancing_ml=None`` take the values recorded in the
            artifact (an ensemble refits the enhancing threshold: :func:`enhancing_threshold`), and
            the temperature recorded there is applied (``calibrate``); with a
            checkpoint ``min_component_ml=None`` keeps every component, ``min_enhancing_ml=None``
            leaves the enhancing rule off until it is fitted
            (:func:`medseg.export.review.fit_enhancing`), and it is uncalibrated
            (:func:`medseg.export.review.fit_review` calibrates it).
        checkpoint: a training checkpoint (``best.pt``): its network runs eagerly in PyTorch.
        artifact: a loaded artifact (:func:`medseg.export.artifact.load_artifact`).
        ensemble: more artifacts whose probabilities are averaged with ``artifact``'s; they must take
            the same input and give the same output.
        backend: ``torch``, ``onnxruntime`` or ``onnxruntime-int8`` (artifacts only).

    Raises:
        ConfigError: neither or both of ``checkpoint`` and ``artifact``; an ensemble or another
            backend with a checkpoint.
        ArtifactError: ensemble members that differ from ``artifact``; a backend file missing.
        DataError: an unusable checkpoint.
    """
    backend = choice(backend)
    if (checkpoint is None) == (artifact is None):
        raise ConfigError("build_predictor needs exactly one of checkpoint= or artifact=")
    device = _runtime_device(inference)
    if checkpoint is not None:
        if ensemble or backend != Backend.torch.value:
            raise ConfigError(f"a checkpoint runs in PyTorch alone (backend torch, no ensemble); got backend "
                              f"{backend!r} and {len(ensemble)} ensemble member(s)")
        return _from_checkpoint(inference, Path(checkpoint), device)
    return _from_artifact(inference, artifact, ensemble, backend, device)


def _runtime_device(inference: InferenceConfig) -> torch.device:
    """Apply ``inference.threads`` and pick ``inference.device``."""
    if inference.threads:
        torch.set_num_threads(int(inference.threads))
    return pick_device(choice(inference.device))


def _from_checkpoint(inference: InferenceConfig, checkpoint: Path, device: torch.device) -> CasePredictor:
    """The checkpoint's network run eagerly (under autocast for ``inference.precision``)."""
    from medseg.models.checkpoint import model_from_checkpoint

    model, meta = model_from_checkpoint(checkpoint, device)
    net = torch_network(model, device, choice(inference.precision))
    return CasePredictor(net, PreprocessSpec.from_json(meta.plan["preprocessing"]), meta.patch_size,
                         Target.from_checkpoint(meta), inference, model_cfg=meta.model)


def _from_artifact(inference: InferenceConfig, artifact: Artifact, ensemble: Sequence[Artifact], backend: str,
                   device: torch.device) -> CasePredictor:
    """The artifact's network (and the ensemble's) run with ``backend``."""
    check_ensemble(artifact, ensemble)
    nets = [a.network(backend, device, inference.threads, choice(inference.precision)) for a in (artifact, *ensemble)]
    enhancing_ml, source = enhancing_threshold(inference, artifact, ensemble)
    return CasePredictor(nets, artifact.spec, artifact.patch_size, Target.from_json(artifact.metadata["output"]),
                         inference, min_component_ml=min_component_ml(inference, artifact),
                         min_enhancing_ml=enhancing_ml, enhancing_source=source,
                         model_cfg=artifact.metadata.get("network"), temperature=temperature(inference, artifact))


def temperature(inference: InferenceConfig, artifact: Artifact) -> list[float] | None:
    """The temperature fitted at export (``metadata.json`` ``calibration``), applied for every backend;
    ``None`` with ``inference.calibrate=false`` or for an artifact exported without one. An ensemble
    uses the first artifact's temperature."""
    calibration = artifact.metadata.get("calibration") or {}
    if not inference.calibrate or not calibration.get("temperature"):
        return None
    return [float(t) for t in calibration["temperature"]]


def check_ensemble(artifact: Artifact, ensemble: Sequence[Artifact]) -> None:
    """Refuse ensemble members whose input or output description differs from ``artifact``'s (the
    patch size may differ)."""
    for other in ensemble:
        for key in ("input", "output"):
            if {k: v for k, v in other.metadata[key].items() if k != "patch_size"} != \
                    {k: v for k, v in artifact.metadata[key].items() if k != "patch_size"}:
                raise ArtifactError(f"{other.path}: its {key} differs from {artifact.path}'s; "
                                    f"only models with the same preprocessing and outputs can be ensembled")


def min_component_ml(inference: InferenceConfig, artifact: Artifact) -> float:
    """The configured minimum component size, else the one recorded in the artifact."""
    if inference.min_component_ml is not None:
        return float(inference.min_component_ml)
    return float(artifact.metadata.get("postprocessing", {}).get("min_component_ml", 0.0))


def enhancing_threshold(inference: InferenceConfig, artifact: Artifact,
                        ensemble: Sequence[Artifact] = ()) -> tuple[float, str]:
    """The small-enhancing threshold and where it comes from.

    The configured one (``inference.min_enhancing_ml``); else, for one artifact, the one fitted at
    export (0, the rule off, for artifacts exported before it existed); for an ensemble, the
    threshold refitted on the pooled validation cases of every member
    (:func:`~medseg.inference.postprocess.pooled_enhancing_fit`: with cross-validation folds, every
    training case), or, where a member carries no fit evidence, the members' common threshold, and
    the first artifact's (with a warning) when they differ.
    """
    if inference.min_enhancing_ml is not None:
        return float(inference.min_enhancing_ml), "configured (inference.min_enhancing_ml, --min-enhancing-ml)"
    posts = [a.metadata.get("postprocessing", {}) for a in (artifact, *ensemble)]
    first = float(posts[0].get("min_enhancing_ml", 0.0))
    if not ensemble:
        return first, "the artifact's (fitted at export)" if posts[0].get("enhancing_fit") else "the artifact's"
    pooled = pooled_enhancing_fit([p.get("enhancing_fit") for p in posts])
    if pooled is not None:
        log.info("small-enhancing threshold refitted on the %d validation cases of the %d ensemble members: "
                 "%g ml (members' own: %s)", pooled["n_cases"], pooled["members"], pooled["min_enhancing_ml"],
                 ", ".join(f"{float(p.get('min_enhancing_ml', 0.0)):g}" for p in posts))
        return float(pooled["min_enhancing_ml"]), (f"refitted on the pooled validation cases of the "
                                                   f"{pooled['members']} ensemble members ({pooled['n_cases']} cases)")
    thresholds = {float(p.get("min_enhancing_ml", 0.0)) for p in posts}
    if len(thresholds) > 1:
        log.warning("the ensemble members' small-enhancing thresholds differ (%s ml) and not all carry the "
                    "validation evidence to refit one; applying the first artifact's, %g ml (set "
                    "predict.inference.min_enhancing_ml to choose)", ", ".join(f"{t:g}" for t in sorted(thresholds)),
                    first)
        return first, "the first ensemble member's (members differ)"
    return first, "the ensemble members' common threshold"
