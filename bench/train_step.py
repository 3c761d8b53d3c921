"""Time one training step of the 5-level ReLU U-Net under each precision / compile option.

Prints the median step time (after warm-up) of fp32, bf16 autocast, channels-last and
``torch.compile`` on this machine, relative to fp32, so that ``train.precision=auto`` and
``train.compile`` defaults are chosen by measurement; then the loss alone (forward + backward on
the logits) for each target: medseg's fused Dice + CE against the same loss composed from MONAI's
``DiceLoss`` and torch's cross-entropy modules.

    .venv/bin/python bench/train_step.py [--patch 64] [--batch 2] [--threads 2] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medseg.data.labels import LabelSpec  # noqa: E402
from medseg.engine.losses import SegmentationLoss  # noqa: E402
from medseg.inference.targets import Target  # noqa: E402
from medseg.inference.precision import cpu_has_native_bf16  # noqa: E402
from medseg.models.unet import build_model  # noqa: E402

MODEL = {"spatial_dims": 3, "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 0,
         "norm": "instance", "dropout": 0.0}


def step_time(mode: str, patch: int, batch: int, steps: int = 12) -> tuple[float, float]:
    """Median step seconds after 4 warm-up steps, and the first step's seconds."""
    torch.manual_seed(0)
    model = build_model(MODEL, 4, 4)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = SegmentationLoss(Target("labels", LabelSpec()))
    x = torch.randn(batch, 4, patch, patch, patch)
    y = torch.randint(0, 4, (batch, 1, patch, patch, patch))
    if mode in ("channels_last", "bf16_channels_last"):
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    net = torch.compile(model) if mode == "compile" else model
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.startswith("bf16")):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[4:]), times[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU native bf16: {cpu_has_native_bf16()}; patch {args.patch}³, batch {args.batch}, "
          f"{args.threads} threads, torch {torch.__version__}")
    modes = ["fp32", "bf16", "channels_last", "bf16_channels_last"] + (["compile"] if args.compile else [])
    base = None
    for mode in modes:
        median, first = step_time(mode, args.patch, args.batch)
        base = base or median
        print(f"{mode:14s} median step {median:.4f} s  ({base / median:.2f}x fp32)  first step {first:.2f} s")
    for target in ("labels", "regions"):
        fused, composed = loss_time(target, args.patch, args.batch)
        print(f"loss {target:8s} fused {fused * 1000:.1f} ms, MONAI DiceLoss + torch CE {composed * 1000:.1f} ms "
              f"({composed / fused:.2f}x)")


def loss_time(mode: str, patch: int, batch: int, steps: int = 20) -> tuple[float, float]:
    """Median forward + backward seconds of the fused loss and of the composed MONAI + torch loss."""
    from monai.losses import DiceLoss

    target = Target(mode, LabelSpec())
    fused = SegmentationLoss(target)
    regions = mode == "regions"
    dice = DiceLoss(include_background=regions, to_onehot_y=not regions, softmax=not regions, sigmoid=regions,
                    batch=True)
    voxel = torch.nn.BCEWithLogitsLoss() if regions else torch.nn.CrossEntropyLoss()

    def composed(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if regions:
            enc = target.encode(y)
            return dice(x, enc) + voxel(x, enc)
        return dice(x, y.long()) + voxel(x, y[:, 0].long())

    x = torch.randn(batch, target.channels, patch, patch, patch, requires_grad=True)
    y = torch.randint(0, 4, (batch, 1, patch, patch, patch), dtype=torch.uint8)
    out = []
    for fn in (fused, composed):
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            fn(x, y).backward()
            times.append(time.perf_counter() - t)
        out.append(statistics.median(times[4:]))
    return out[0], out[1]


if __name__ == "__main__":
    main()
