"""nnU-Net v2's CPU predictor on the benchmark's test cases (run with the peers venv's python).

Called by ``bench/compare.py`` when ``make bench-peers`` has installed nnunetv2 into
``.venv-peers``. nnU-Net plans its own network and patch for the data (``nnUNetv2_extract_fingerprint``
+ ``nnUNetv2_plan_experiment``, default planner, ``3d_fullres``). Training that network on this
2-core CPU for even one nnU-Net epoch (250 iterations at its planned patch) takes hours, so the
timed model is the planned architecture with its initial weights, saved as an nnU-Net checkpoint:
inference time does not depend on the weight values, so ``nnUNetv2_predict``'s timing is its real
default-settings timing, but its Dice is meaningless and not reported. Per-case seconds are the wall
time of ``nnUNetv2_predict`` over the test folder (model loading and worker start-up included, as a
user runs it) divided by the number of cases; with and without mirroring (``--disable_tta``).

    .venv-peers/bin/python bench/nnunet_arm.py --data DATA --work WORK [--threads 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

DATASET = "Dataset501_MedsegBench"


def convert(data: Path, raw: Path) -> Path:
    """MSD-layout built-in data -> nnU-Net raw layout (one 3D file per channel)."""
    meta = json.loads((data / "dataset.json").read_text())
    out = raw / DATASET
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    def split(image: Path, dest: Path) -> None:
        img = nib.load(image)
        arr = np.asarray(img.dataobj, dtype=np.float32)
        name = image.name[:-7]
        for c in range(arr.shape[-1]):
            nib.save(nib.Nifti1Image(arr[..., c], img.affine), dest / f"{name}_{c:04d}.nii.gz")

    for e in meta["training"]:
        split(data / e["image"], out / "imagesTr")
        shutil.copy(data / e["label"], out / "labelsTr" / Path(e["label"]).name)
    for e in meta["test"]:
        split(data / e["image"], out / "imagesTs")
    modalities = meta.get("modality", {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"})
    (out / "dataset.json").write_text(json.dumps({
        "channel_names": modalities, "labels": {"background": 0, "edema": 1, "non-enhancing tumour": 2,
                                                "enhancing tumour": 3},
        "numTraining": len(meta["training"]), "file_ending": ".nii.gz"}, indent=2))
    return out


def make_model(env: dict, results: Path, preprocessed: Path) -> None:
    """The planned 3d_fullres network with initial weights, saved as nnU-Net's fold-0 checkpoint."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((preprocessed / DATASET / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((preprocessed / DATASET / "dataset.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    net = nnUNetTrainer.build_network_architecture(pm, cm, len(dataset_json["channel_names"]), n_out,
                                                   enable_deep_supervision=False)
    folder = results / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    shutil.copy(preprocessed / DATASET / "nnUNetPlans.json", folder / "plans.json")
    shutil.copy(preprocessed / DATASET / "dataset.json", folder / "dataset.json")
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres", "fold": 0},
                "inference_allowed_mirroring_axes": (0, 1, 2)}, folder / "fold_0" / "checkpoint_final.pth")
    return cm.patch_size


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args()
    work = Path(a.work)
    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
           "OMP_NUM_THREADS": str(a.threads), "nnUNet_n_proc_DA": str(a.threads)}
    bindir = Path(sys.executable).parent
    out = convert(Path(a.data), raw)
    for cmd in (["nnUNetv2_extract_fingerprint", "-d", "501", "-np", str(a.threads)],
                ["nnUNetv2_plan_experiment", "-d", "501"]):
        subprocess.run([str(bindir / cmd[0]), *cmd[1:]], env=env, check=True, capture_output=True)
    os.environ.update(env)
    patch = make_model(env, res, pre)
    n = len(list((out / "imagesTs").glob("*_0000.nii.gz")))
    results = []
    # without mirroring first: the mirrored run takes 8x as long, and a RESULT line follows each setting
    # so that what was measured survives a run cut short
    for label, extra in (("nnU-Net v2 predictor, --disable_tta", ["--disable_tta"]),
                         ("nnU-Net v2 predictor, default (mirroring)", [])):
        times = []
        for r in range(a.repeats):
            dest = work / f"pred{len(results)}_{r}"
            t = time.perf_counter()
            subprocess.run([str(bindir / "nnUNetv2_predict"), "-i", str(out / "imagesTs"), "-o", str(dest),
                            "-d", "501", "-c", "3d_fullres", "-f", "0", "-device", "cpu", *extra],
                           env=env, check=True, capture_output=True)
            times.append((time.perf_counter() - t) / n)
        results.append({"setting": label + f" (planned patch {list(patch)}, untrained weights: timing only)",
                        "seconds_per_case": float(np.median(times)),
                        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                        "dice": None})
        print("RESULT " + json.dumps({"results": results}), flush=True)


if __name__ == "__main__":
    main()
