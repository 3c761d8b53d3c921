"""``export``: TorchScript + ONNX artifact with its metadata, proven equal to the eager model.

Inputs: ``paths.checkpoint``; optional ``paths.prepared`` (a real case for the parity check and the
training-data fingerprint of the model card) and ``paths.metrics`` (evaluate's ``metrics.json``,
copied into the metadata and the model card).
Outputs: ``artifact/`` with ``model.ts``, ``model.onnx`` (``export.onnx``), ``MODEL_CARD.md``,
``medseg_bundle/`` (``export.bundle``) and ``metadata.json`` (see :mod:`medseg.export.artifact`);
``summary.json`` with the parity figures of every format. Export fails if any format's logits or
labels differ from the eager model's beyond ``export.logit_tolerance`` /
``export.min_label_agreement``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from medseg.inference.sliding_window import sliding_window_probs
from medseg.inference.targets import Target
from medseg.engine.trainer import load_checkpoint
from medseg.errors import ArtifactError
from medseg.export.artifact import CARD_FILE, ONNX_FILE, ONNX_INT8_FILE, load_artifact, write_artifact
from medseg.export.bundle import write_bundle
from medseg.export.model_card import model_card
from medseg.export.onnx import export_onnx, quantize_int8
from medseg.report.provenance import library_versions
from medseg.models.unet import architecture, build_model, check_relu_only, count_parameters, load_weights
from medseg.stages.common import require_path
from medseg.stages.evaluate import checkpoint_target
from medseg.stages.train import load_prepared
from medseg.utils.files import read_json, sha256_file, write_text

log = logging.getLogger(__name__)


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over parameter names and bytes, in state-dict order."""
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def script_model(model: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript via ``torch.jit.script``, falling back to tracing."""
    try:
        return torch.jit.script(model)
    except Exception as e:  # some MONAI versions are not scriptable
        log.warning("torch.jit.script failed (%s); tracing instead", e)
        return torch.jit.trace(model, example, check_trace=False)


def parity_case(prepared: Path | None) -> np.ndarray | None:
    """A preprocessed real case (test first, else validation, else training)."""
    if prepared is None:
        return None
    datalist, _ = load_prepared(prepared)
    for split in ("test", "validation", "train"):
        if datalist.get(split):
            return np.load(datalist[split][0]["image"])
    return None


def export_stage(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run the export stage (see module docstring)."""
    checkpoint = require_path(cfg, "checkpoint", "export")
    prepared = Path(cfg.paths.prepared) if cfg.paths.get("prepared") else None
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt["meta"]
    model = build_model(meta["model"], int(meta["in_channels"]), int(meta["num_classes"]), inference=True)
    load_weights(model, ckpt["model"])
    model.eval()
    check_relu_only(model)
    target = checkpoint_target(meta)
    patch = [int(p) for p in meta["patch_size"]]
    image = parity_case(prepared)
    example = torch.zeros(1, int(meta["in_channels"]), *patch)
    if image is not None:
        window = _window(image, patch)
        example = torch.from_numpy(window)[None]
    scripted = script_model(model, example)
    metrics = read_json(cfg.paths.metrics) if cfg.paths.get("metrics") else None
    metadata = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "name": str(cfg.name),
        "input": {
            "channels": meta["plan"]["preprocessing"]["channels"],
            "axis_order": "(C, X, Y, Z) after reorientation to RAS",
            "spacing_mm": meta["plan"]["preprocessing"]["target_spacing"],
            "orientation": "RAS",
            "normalization": meta["plan"]["preprocessing"]["normalization"],
            "preprocessing": meta["plan"]["preprocessing"],
            "patch_size": patch,
            "file_format": "NIfTI, 4D with channels last (MSD layout), voxel -> RAS affine",
        },
        "output": {**target.to_json(), "num_classes": int(meta["num_classes"]),
                   "decoding": "label = argmax over classes" if target.mode == "labels" else
                   "label = code of the innermost region with probability > 0.5"},
        "network": {"architecture": architecture(meta["model"]), "activation": "ReLU", **meta["model"],
                    "parameters": count_parameters(model)},
        "training": {"epoch": meta.get("epoch"), "iteration": meta.get("iteration"),
                     "validation_dice": meta.get("val"), "checkpoint_sha256": sha256_file(checkpoint)},
        "postprocessing": {"min_component_ml": float(cfg.evaluate.inference.min_component_ml or 0.0)},
        "metrics": metrics.get("summary") if isinstance(metrics, dict) else None,
        "metrics_convention": metrics.get("convention") if isinstance(metrics, dict) else None,
        "versions": library_versions(),
        "weights_sha256": weights_sha256(model.state_dict()),
    }
    art_dir = out_dir / "artifact"
    art_dir.mkdir(parents=True, exist_ok=True)
    if cfg.export.onnx:
        export_onnx(model, example, art_dir / ONNX_FILE, int(cfg.export.opset))
        if cfg.export.int8:
            quantize_int8(art_dir / ONNX_FILE, art_dir / ONNX_INT8_FILE)
    if cfg.export.bundle:
        write_bundle(art_dir, model, metadata)
    write_text(art_dir / CARD_FILE, model_card(metadata, training_data(prepared)))
    write_artifact(art_dir, scripted, metadata)
    backends = ["torch"] + (["onnxruntime"] if cfg.export.onnx else [])
    parity = {b: check_parity(model, art_dir, example, image, patch, target, float(cfg.export.logit_tolerance),
                              float(cfg.export.min_label_agreement), backend=b) for b in backends}
    for b, p in parity.items():
        log.info("export %s: max |logit diff| %.2e, label agreement %.6f", b, p["max_abs_logit_diff"],
                 p["label_agreement"])
    return {"artifact": str(art_dir), **parity["torch"], "parity": parity,
            "files": sorted(read_json(art_dir / "metadata.json")["files"])}


def training_data(prepared: Path | None) -> dict[str, Any] | None:
    """The training data fingerprint recorded in the model card."""
    if prepared is None or not (prepared / "fingerprint.json").is_file():
        return None
    datalist, plan = load_prepared(prepared)
    digest = hashlib.sha256((prepared / "fingerprint.json").read_bytes() + (prepared / "datalist.json").read_bytes())
    src = plan.get("source", {})
    return {"sha256": digest.hexdigest(), "fingerprint": read_json(prepared / "fingerprint.json"),
            "split": {k: len(v) for k, v in datalist.items() if isinstance(v, list)},
            "source": f"{src.get('kind', '')} {src.get('root', '')} ({src.get('convention', '')} labels)"}


def _window(image: np.ndarray, patch: list[int]) -> np.ndarray:
    """A patch-sized window from the centre of the image (zero-padded if smaller)."""
    out = np.zeros((image.shape[0], *patch), dtype=np.float32)
    src, dst = [], []
    for n, p in zip(image.shape[1:], patch):
        s = max(0, (n - p) // 2)
        m = min(n, p)
        src.append(slice(s, s + m))
        dst.append(slice(0, m))
    out[(slice(None), *dst)] = image[(slice(None), *src)]
    return out


def check_parity(model: torch.nn.Module, art_dir: Path, example: torch.Tensor, image: np.ndarray | None,
                 patch: list[int], target: Target, tol: float, min_agree: float, backend: str = "torch"
                 ) -> dict[str, Any]:
    """Reload the artifact, run it with ``backend`` and compare it with the eager model; raise if
    beyond tolerance."""
    art = load_artifact(art_dir, load_module=backend == "torch")
    exported = art.network(backend)
    with torch.inference_mode():
        diff = float((model(example) - exported(example)).abs().max())
    agreement = 1.0
    if image is not None:
        x = torch.from_numpy(image)

        def eager(b: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(b)

        a, b = (target.decode(sliding_window_probs(net, x, patch, target.channels, overlap=0.25,
                                                   activation=target.activation)) for net in (eager, exported))
        agreement = float((a == b).mean())
    if diff > tol or agreement < min_agree:
        raise ArtifactError(f"{art_dir}: exported model ({backend}) differs from the eager model "
                            f"(max |logit diff| {diff:.3g} > {tol:g} or label agreement {agreement:.6f} < {min_agree})")
    return {"max_abs_logit_diff": diff, "label_agreement": agreement,
            "parity_case": "real preprocessed case" if image is not None else "zero input"}
