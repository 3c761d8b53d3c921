"""Check the planner's memory model against real training steps on this machine.

For a few patch sizes, residual-unit counts and batch sizes, one process per configuration runs
one fp32 training step (AdamW, Dice + cross-entropy) of the 5-level ReLU U-Net and records the rise
of its peak RSS during the step; the planner's estimate (:func:`medseg.data.planning.
estimate_memory_gb`) is printed beside it. The estimate should be at or a little above the
measurement (it includes a safety factor). CPU only; on a GPU, compare with
``torch.cuda.max_memory_allocated``.

    .venv/bin/python bench/plan_memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [(48, 0, 2), (64, 0, 2), (96, 0, 2), (64, 1, 2), (96, 1, 1)]

STEP = """
import json, resource, sys, torch
from monai.losses import DiceCELoss
from medseg.data.planning import estimate_memory_gb
from medseg.models.unet import build_model
patch, res, batch = (int(a) for a in sys.argv[1:4])
cfg = {"spatial_dims": 3, "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
       "num_res_units": res, "norm": "instance", "dropout": 0.0}
torch.set_num_threads(2)
model = build_model(cfg, 4, 4)
opt = torch.optim.AdamW(model.parameters())
loss = DiceCELoss(to_onehot_y=True, softmax=True)
x = torch.randn(batch, 4, patch, patch, patch)
y = torch.randint(0, 4, (batch, 1, patch, patch, patch))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss(model(x), y).backward()
opt.step()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"measured": (after - before) / 1024**2,
                  "estimate": estimate_memory_gb([patch] * 3, cfg, 4, 4, batch)}))
"""


def main() -> None:
    print(f"{'patch':>6} {'res':>4} {'batch':>6} {'measured GB':>12} {'estimate GB':>12} {'ratio':>6}")
    for patch, res, batch in CONFIGS:
        out = subprocess.run([sys.executable, "-c", STEP, str(patch), str(res), str(batch)], cwd=REPO,
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{patch:>5}³ {res:>4} {batch:>6} {r['measured']:12.3f} {r['estimate']:12.3f} "
              f"{r['estimate'] / r['measured']:6.2f}")


if __name__ == "__main__":
    main()
