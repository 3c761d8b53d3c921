"""A MONAI bundle of an exported model, run by MONAI's own runner with medseg's results.

Layout (what ``monai.bundle`` expects, as in the MONAI model zoo)::

    medseg_bundle/
      configs/metadata.json    bundle metadata: versions, required packages, network_data_format
      configs/inference.json   a ConfigWorkflow: transforms, SlidingWindowInferer, SupervisedEvaluator
      configs/logging.conf     the runner's logging set-up
      models/model.ts          TorchScript with metadata.json and inference.json embedded
      models/model.pt          the weights as a state dict (for ``network_def``)
      scripts/components.py    the bundle's own MONAI components (:mod:`medseg.export.bundle_components`)
      docs/README.md           the command, inputs, outputs

``python -m monai.bundle run --config_file medseg_bundle/configs/inference.json --bundle_root
medseg_bundle --dataset_dir IMAGES --output_dir OUT`` segments every ``IMAGES/*.nii*`` (4D NIfTI,
channels last, any axis order and spacing) into ``OUT/<case>.nii.gz`` on the input grid, with the
labels ``medseg-predict`` writes: the same preprocessing (reorientation to RAS, crop to the non-zero
box, resampling to the target spacing with medseg's kernels, z-score over the non-zero voxels), the
same sliding window (patch, overlap, Gaussian importance, probabilities blended), the same decoding
and small-component removal, mapped back by ``Invertd``. ``tests/test_bundle.py`` measures the
agreement. ``monai.bundle.load("medseg_bundle", bundle_dir=ARTIFACT, load_ts_module=True)`` returns
the TorchScript network, and ``network_def`` rebuilds the same ReLU U-Net.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
from pathlib import Path
from typing import Any

import torch

from medseg.config import InferenceConfig
from medseg.utils.files import atomic_dir, write_json, write_text

BUNDLE_DIR = "medseg_bundle"
SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
#: the bundle's own python, as the configs name it (``scripts/components.py`` on the bundle root)
COMPONENTS = "scripts.components"
COMPONENTS_SOURCE = Path(__file__).with_name("bundle_components.py")
#: versions declared for a package the configs need that is not installed where the export runs:
#: medseg's own lower bounds (pyproject.toml)
FLOOR_VERSIONS = {"monai": "1.4.0", "torch": "2.2.0", "numpy": "1.24.0", "nibabel": "5.0.0",
                  "pytorch-ignite": "0.4.11", "fire": "0.6.0", "scipy": "1.10.0"}
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


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
    """``configs/inference.json``: a MONAI ConfigWorkflow computing what ``medseg-predict`` computes
    (see the module docstring; sliding-window settings are :class:`~medseg.config.InferenceConfig`'s)."""
    inp, out = metadata["input"], metadata["output"]
    dims = int(metadata["network"]["spatial_dims"])
    patch = [int(p) for p in inp["patch_size"]]
    roi = patch if len(patch) == 3 else [*patch, 1]  # a 2D network runs slice by slice on (X, Y, 1) windows
    inference = InferenceConfig()
    return {
        "imports": ["$import glob", "$import numpy", "$import os", "$import torch"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii*')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": net,
        "network": {"_target_": f"{COMPONENTS}.ProbabilityNet", "net": "$@network_def.to(@device)",
                    "activation": "sigmoid" if out.get("mode") == "regions" else "softmax", "slicewise": dims == 2},
        "preprocessing": {"_target_": "Compose", "transforms": _preprocessing(inp)},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": f"{COMPONENTS}.GaussianSlidingWindowInferer", "roi_size": roi,
                    "sw_batch_size": inference.sw_batch_size, "overlap": inference.overlap, "sigma_scale": 0.125,
                    "padding_mode": "constant", "cval": 0.0},
        "postprocessing": {"_target_": "Compose", "transforms": _postprocessing(metadata)},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network_def"}, "map_location": "@device"},
                     {"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def _preprocessing(inp: dict[str, Any]) -> list[dict[str, Any]]:
    """medseg's preprocessing as MONAI transforms: load, check, reorient to RAS, crop to the non-zero
    box, resample to the target spacing, z-score over the non-zero voxels."""
    pre = inp.get("preprocessing", {})
    zscore = inp["normalization"] == "zscore_nonzero"
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": f"{COMPONENTS}.CheckInputd", "keys": "image", "channels": list(inp["channels"])},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS",
         "labels": [["L", "R"], ["P", "A"], ["I", "S"]]}]
    if pre.get("crop_foreground", True):
        steps.append({"_target_": "CropForegroundd", "keys": "image", "source_key": "image",
                      "select_fn": "$lambda x: x != 0", "margin": 0, "allow_smaller": True})
    steps.append({"_target_": f"{COMPONENTS}.ResampleToSpacingd", "keys": "image",
                  "pixdim": [float(s) for s in inp["spacing_mm"]], "mask_key": "nonzero" if zscore else None})
    if zscore:
        steps += [{"_target_": f"{COMPONENTS}.NonzeroZScored", "keys": "image", "mask_key": "nonzero"},
                  {"_target_": "DeleteItemsd", "keys": "nonzero"}]
    return [*steps, {"_target_": "EnsureTyped", "keys": "image"}]


def calibration_transforms(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The temperature fitted at export (``metadata["calibration"]``) applied to the blended
    ``(K, X, Y, Z)`` probabilities as medseg applies it (:mod:`medseg.inference.calibration`; labels
    are unchanged, probabilities are calibrated); none without a temperature."""
    temps = [float(t) for t in (metadata.get("calibration") or {}).get("temperature") or []]
    if not temps or all(t == 1.0 for t in temps):
        return []
    t = f"torch.tensor({temps}).view(-1, 1, 1, 1)"
    if metadata["output"].get("mode") == "regions":
        expr = f"$lambda p: torch.sigmoid(torch.logit(p.float(), eps=1e-6) / {t})"
    else:
        expr = f"$lambda p: torch.softmax(torch.log(p.float().clamp(1e-6, 1.0 - 1e-6)) / {t}, dim=0)"
    return [{"_target_": "Lambdad", "keys": "pred", "func": expr}]


def _postprocessing(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """Probabilities back onto the input grid (``Invertd``), decoded, small components removed, written
    as ``<case>.nii.gz`` (uint8) on the input file's own grid."""
    out = metadata["output"]
    if out.get("mode") == "regions":
        decode = {"_target_": f"{COMPONENTS}.RegionsToLabelsd", "keys": "pred",
                  "codes": [min(int(c) for c in codes) for codes in out["regions"].values()]}
    else:
        decode = {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}
    min_ml = float(metadata.get("postprocessing", {}).get("min_component_ml", 0.0))
    return [*calibration_transforms(metadata),
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            decode,
            {"_target_": f"{COMPONENTS}.RemoveSmallComponentsd", "keys": "pred", "min_ml": min_ml},
            *enhancing_transform(metadata),
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "",
             "output_ext": ".nii.gz", "output_dtype": "$numpy.uint8", "resample": False,
             "separate_folder": False, "writer": f"{COMPONENTS}.GridWriter"}]


def enhancing_transform(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The small-enhancing rule (:mod:`medseg.inference.postprocess`) with the threshold recorded at
    export; nothing where it is off or the label set has no enhancing tumour."""
    post = metadata.get("postprocessing", {})
    if float(post.get("min_enhancing_ml", 0.0)) <= 0 or not post.get("enhancing_codes"):
        return []
    return [{"_target_": f"{COMPONENTS}.RelabelSmallEnhancingd", "keys": "pred",
             "min_ml": float(post["min_enhancing_ml"]), "codes": [int(c) for c in post["enhancing_codes"]],
             "replacement": int(post["enhancing_replacement"])}]


def enhancing_line(metadata: dict[str, Any]) -> str:
    """The bundle README's sentence on the small-enhancing rule (empty where it is off)."""
    rule = enhancing_transform(metadata)
    if not rule:
        return ""
    r = rule[0]
    return (f"; then a case's enhancing tumour (codes {r['codes']}) relabelled {r['replacement']} (tumour core) when "
            f"it totals under {r['min_ml']:g} ml (`scripts.components.RelabelSmallEnhancingd`; threshold fitted "
            "on the validation split)")


def package_versions(min_component_ml: float) -> dict[str, Any]:
    """What the bundle's configs need, as model-zoo metadata declares it: ``monai``/``torch``/``numpy``
    versions and ``required_packages_version`` (the installed version, else a tested floor).

    ``nibabel`` reads and writes NIfTI, ``pytorch-ignite`` runs the evaluator, ``fire`` is the
    ``python -m monai.bundle`` command line, ``scipy`` labels components (only when components are
    removed). Nothing is written as ``optional_packages_version``: MONAI reads that key as a
    deprecated name of ``required_packages_version`` and replaces the required list with it.
    """
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return FLOOR_VERSIONS[name]

    required = ["nibabel", "pytorch-ignite", "fire", *(["scipy"] if min_component_ml > 0 else [])]
    return {"monai_version": version("monai"), "pytorch_version": version("torch"), "numpy_version": version("numpy"),
            "required_packages_version": {n: version(n) for n in required}}


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
    min_ml = float(metadata.get("postprocessing", {}).get("min_component_ml", 0.0))
    return {
        "schema": SCHEMA,
        "version": "1.0.0",
        "changelog": {"1.0.0": f"exported by medseg {versions.get('medseg', '')} on {metadata.get('created', '')}"},
        **package_versions(min_ml),
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
    """Write the MONAI bundle folder inside the artifact (see the module docstring); the folder
    appears whole or not at all."""
    net = model.net if hasattr(model, "net") and int(metadata["network"]["spatial_dims"]) == 2 else model
    n_out = int(metadata["output"]["num_classes"])
    net_cfg = network_def(metadata["network"], len(metadata["input"]["channels"]), n_out)
    meta = bundle_metadata(metadata, n_out)
    inference = inference_config(metadata, net_cfg)
    with atomic_dir(artifact_dir / BUNDLE_DIR) as root:
        write_json(root / "configs" / "metadata.json", meta)
        write_json(root / "configs" / "inference.json", inference)
        write_text(root / "configs" / "logging.conf", LOGGING_CONF)
        write_text(root / "scripts" / "__init__.py", '"""medseg\'s bundle components (scripts/components.py)."""\n')
        write_text(root / "scripts" / "components.py", COMPONENTS_SOURCE.read_text(encoding="utf-8"))
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        buf = io.BytesIO()
        torch.save(state, buf)
        (root / "models").mkdir(parents=True, exist_ok=True)
        (root / "models" / "model.pt").write_bytes(buf.getvalue())
        scripted = torch.jit.script(net.eval())
        torch.jit.save(scripted, str(root / "models" / "model.ts"),
                       _extra_files={"metadata.json": json.dumps(meta), "inference.json": json.dumps(inference)})
        write_text(root / "docs" / "README.md", _readme(metadata, meta))
    return artifact_dir / BUNDLE_DIR


def _readme(metadata: dict[str, Any], meta: dict[str, Any]) -> str:
    """``docs/README.md``: what the bundle computes and the exact command that runs it."""
    inp = metadata["input"]
    inference = InferenceConfig()
    packages = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"],
                **meta["required_packages_version"]}
    pins = " ".join(f"'{n}=={v}'" for n, v in packages.items())
    min_ml = float(metadata.get("postprocessing", {}).get("min_component_ml", 0.0))
    return f"""# {meta['name']} — MONAI bundle exported by medseg

{meta['task']}. {meta['description']}

## Run it with MONAI's runner
```bash
pip install {pins}
python -m monai.bundle run --config_file medseg_bundle/configs/inference.json \\
    --bundle_root medseg_bundle --dataset_dir IMAGES --output_dir OUT
```
`IMAGES/*.nii*` are 4D NIfTI cases (channels last), in any voxel axis order (RAS, LAS, LPS, PSR, ...)
and any spacing; `OUT/<case>.nii.gz` is the uint8 label map on each input's own grid (its shape and
affine). The packages are those of `configs/metadata.json` (`required_packages_version`; nothing
else, medseg included, is needed). Add `--device '$torch.device("cpu")'` to force the CPU.

## Input
- {len(inp['channels'])} channels in this order: {', '.join(inp['channels'])}
- reoriented to {inp['orientation']}, cropped to the box of non-zero voxels, resampled to
  {inp['spacing_mm']} mm (output shape `round(n * spacing / target)`, trilinear, `align_corners=False`)
- normalisation: {inp['normalization']} (per channel, over the resampled non-zero mask; zero outside)

## Inference
- sliding window {inp['patch_size']}, overlap {inference.overlap}, Gaussian importance (sigma 0.125 of the
  window), softmax/sigmoid probabilities blended (`scripts.components.ProbabilityNet`)
- probabilities mapped back onto the input grid (`Invertd`: trilinear, un-crop, un-reorient), then decoded

## Output
- `pred` channels: {meta['pred_classes']}
- labels: {meta['label_classes']}
- post-processing: 26-connected tumour components under {min_ml:g} ml removed
  (`scripts.components.RemoveSmallComponentsd`){enhancing_line(metadata)}

## Bundle components
`scripts/components.py` holds the steps MONAI has no exact equivalent for (medseg's resampling and
normalisation, probability blending, region decoding, component removal, and a NIfTI writer that
keeps permuted affines); each is a MONAI transform documented in that file.

## Network only
```python
import monai
net, meta, extra = monai.bundle.load("{BUNDLE_DIR}", bundle_dir="ARTIFACT_FOLDER", load_ts_module=True)
```
The labels equal those of `medseg-predict ARTIFACT_FOLDER IMAGES OUT` (agreement measured by
medseg's `tests/test_bundle.py`).
"""
