"""A MONAI-bundle-compatible copy of an exported model.

Layout (what ``monai.bundle`` expects)::

    medseg_bundle/
      configs/metadata.json    MONAI bundle metadata (versions, network_data_format, ...)
      configs/inference.json   a ConfigWorkflow: MONAI transforms, SlidingWindowInferer, evaluator
      models/model.ts          TorchScript with metadata.json and inference.json embedded
      models/model.pt          the weights as a state dict (for ``network_def``)
      docs/README.md           what it is and how it differs from the medseg artifact

``monai.bundle.load("medseg_bundle", bundle_dir=ARTIFACT, load_ts_module=True)`` returns the
TorchScript network, and ``network_def`` in ``inference.json`` rebuilds the same ReLU U-Net.

The bundle's own inference pipeline is written with MONAI transforms (Orientation -> Spacing ->
channel-wise non-zero z-score -> Gaussian sliding window) and approximates medseg's: medseg also
crops to the foreground box before resampling and resamples with its own kernels, so voxel labels
can differ slightly. The medseg artifact (``medseg predict``) is the reference path.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from medseg.utils.files import atomic_path, write_json, write_text

BUNDLE_DIR = "medseg_bundle"
SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"


def network_def(model_cfg: dict[str, Any], in_channels: int, out_channels: int) -> dict[str, Any]:
    """The MONAI network constructor of the exported (inference) model, as bundle config."""
    dims = int(model_cfg["spatial_dims"])
    channels = [int(c) for c in model_cfg["channels"]]
    strides = [int(s) for s in model_cfg["strides"]]
    norm: Any = ["INSTANCE", {"affine": True}] if str(model_cfg.get("norm", "instance")).lower().endswith("instance") \
        else "BATCH"
    if model_cfg.get("deep_supervision"):
        return {"_target_": "DynUNet", "spatial_dims": dims, "in_channels": in_channels, "out_channels": out_channels,
                "kernel_size": [3] * len(channels), "strides": [1, *strides], "upsample_kernel_size": strides,
                "filters": channels, "norm_name": norm, "act_name": "RELU", "deep_supervision": False,
                "res_block": int(model_cfg.get("num_res_units", 0)) > 0,
                "dropout": float(model_cfg.get("dropout", 0.0)) or None}
    return {"_target_": "UNet", "spatial_dims": dims, "in_channels": in_channels, "out_channels": out_channels,
            "channels": channels, "strides": strides, "num_res_units": int(model_cfg.get("num_res_units", 0)),
            "act": "RELU", "norm": norm, "dropout": float(model_cfg.get("dropout", 0.0))}


def inference_config(metadata: dict[str, Any], net: dict[str, Any]) -> dict[str, Any]:
    """``configs/inference.json``: a MONAI ConfigWorkflow reproducing medseg's inference."""
    inp, out = metadata["input"], metadata["output"]
    dims = int(metadata["network"]["spatial_dims"])
    patch = [int(p) for p in inp["patch_size"]][:dims]
    spacing = [float(s) for s in inp["spacing_mm"]][:dims]
    sigmoid = out.get("mode") == "regions"
    post = [{"_target_": "Activationsd", "keys": "pred", "sigmoid": sigmoid, "softmax": not sigmoid},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            ({"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5} if sigmoid else
             {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}),
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False}]
    return {
        "imports": ["$import glob", "$import numpy", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii*')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": net,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": spacing, "mode": "bilinear"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            {"_target_": "EnsureTyped", "keys": "image"}]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": patch, "sw_batch_size": 2, "overlap": 0.5,
                    "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}},
                     {"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def bundle_metadata(metadata: dict[str, Any], n_out: int) -> dict[str, Any]:
    """``configs/metadata.json`` in MONAI's bundle metadata schema."""
    inp, out = metadata["input"], metadata["output"]
    versions = metadata.get("versions", {})
    dims = int(metadata["network"]["spatial_dims"])
    patch = [int(p) for p in inp["patch_size"]][:dims]
    if out.get("mode") == "regions":
        out_channels = {str(i): name for i, name in enumerate(out["regions"])}
    else:
        out_channels = {str(k): v for k, v in sorted(out["labels"].items(), key=lambda kv: int(kv[0]))}
    summary = metadata.get("metrics") or {}
    return {
        "schema": SCHEMA,
        "version": "1.0.0",
        "changelog": {"1.0.0": f"exported by medseg {versions.get('medseg', '')} on {metadata.get('created', '')}"},
        "monai_version": versions.get("monai", ""),
        "pytorch_version": versions.get("torch", ""),
        "numpy_version": versions.get("numpy", ""),
        "required_packages_version": {"nibabel": versions.get("nibabel", "")},
        "name": metadata.get("name", "medseg"),
        "task": "Brain tumour segmentation (whole tumour, tumour core, enhancing tumour)"
                if "whole_tumour" in out.get("regions", {}) else "Lesion segmentation",
        "description": "ReLU U-Net trained with medseg; see docs/README.md and the medseg model card.",
        "authors": "medseg",
        "copyright": "see the training data licence",
        "data_type": "nibabel",
        "image_classes": ", ".join(f"channel {i}: {c}" for i, c in enumerate(inp["channels"])),
        "label_classes": json.dumps(out.get("labels", {})),
        "pred_classes": json.dumps(out_channels),
        "eval_metrics": {f"{r}_dice": v["dice"]["mean"] for r, v in summary.items()
                         if isinstance(v, dict) and "dice" in v and r in out.get("regions", {})},
        "intended_use": "Research use only; not a medical device.",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR",
                                 "num_channels": len(inp["channels"]), "spatial_shape": patch, "dtype": "float32",
                                 "value_range": [], "is_patch_data": True,
                                 "channel_def": {str(i): c for i, c in enumerate(inp["channels"])}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": n_out,
                                 "spatial_shape": patch, "dtype": "float32", "value_range": [],
                                 "is_patch_data": True, "channel_def": out_channels}},
        },
    }


def write_bundle(artifact_dir: Path, model: torch.nn.Module, metadata: dict[str, Any]) -> Path:
    """Write the MONAI bundle folder inside the artifact (see the module docstring)."""
    root = artifact_dir / BUNDLE_DIR
    net = model.net if hasattr(model, "net") and int(metadata["network"]["spatial_dims"]) == 2 else model
    n_out = int(metadata["output"]["num_classes"])
    net_cfg = network_def(metadata["network"], len(metadata["input"]["channels"]), n_out)
    meta = bundle_metadata(metadata, n_out)
    inference = inference_config(metadata, net_cfg)
    write_json(root / "configs" / "metadata.json", meta)
    write_json(root / "configs" / "inference.json", inference)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(root / "models" / "model.pt") as tmp:
        tmp.write_bytes(buf.getvalue())
    scripted = torch.jit.script(net.eval())
    with atomic_path(root / "models" / "model.ts") as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={"metadata.json": json.dumps(meta),
                                                         "inference.json": json.dumps(inference)})
    write_text(root / "docs" / "README.md", _readme(metadata, meta))
    return root


def _readme(metadata: dict[str, Any], meta: dict[str, Any]) -> str:
    inp = metadata["input"]
    return f"""# {meta['name']} — MONAI bundle exported by medseg

{meta['task']}. {meta['description']}

## Input
- {len(inp['channels'])} channels in this order: {', '.join(inp['channels'])}
- reoriented to {inp['orientation']}, resampled to {inp['spacing_mm']} mm
- normalisation: {inp['normalization']} (per channel, non-zero voxels)
- sliding window {inp['patch_size']}, Gaussian blending

## Output
- `pred` channels: {meta['pred_classes']}

## Use
```python
import monai
net, meta, extra = monai.bundle.load("{BUNDLE_DIR}", bundle_dir="ARTIFACT_FOLDER", load_ts_module=True)
```
or run `python -m monai.bundle run --config_file configs/inference.json --dataset_dir IMAGES` inside
this folder (4D NIfTI images, channels last).

## Differences from the medseg artifact
This pipeline uses MONAI transforms. medseg additionally crops to the foreground before
resampling and resamples with its own kernels, so labels can differ at a few boundary voxels.
`medseg predict paths.artifact=ARTIFACT_FOLDER` is the reference implementation; its parity with
this network is checked at export.
"""
