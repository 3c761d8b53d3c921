"""``medseg-predict``: the Hydra- and MONAI-free batch command (the Docker image's default).

    medseg-predict ARTIFACT INPUT OUTPUT [--backend torch|onnxruntime|onnxruntime-int8] [--shard i/n]
                   [--tta 0,1,2] [--overlap 0.5] [--threads N] [--pattern '*.nii.gz'] [--no-skip-existing]

See :mod:`medseg.inference.runtime` for what it reads and writes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medseg.errors import MedsegError, PartialFailure
from medseg.export.artifact import load_artifact
from medseg.inference.runtime import file_inputs, parse_shard, predictor_from_artifact, run_batch, shard_items


def main(argv: list[str] | None = None) -> int:
    """``medseg-predict``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="medseg-predict", description="Segment a folder of cases with an "
                                     "exported medseg artifact (no Hydra, no MONAI needed).")
    parser.add_argument("artifact", help="artifact folder (metadata.json, model.ts, model.onnx)")
    parser.add_argument("input", help="folder of 4D NIfTI cases, a .txt list of files, or one file")
    parser.add_argument("output", help="output folder")
    parser.add_argument("--backend", choices=["torch", "onnxruntime", "onnxruntime-int8"], default="torch")
    parser.add_argument("--shard", default=None, help="i/n: only the i-th of n parts of the sorted case list")
    parser.add_argument("--pattern", default="*.nii.gz")
    parser.add_argument("--tta", default="", help="comma-separated axes to mirror, e.g. 0,1,2")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-memory-gb", type=float, default=4.0,
                        help="refuse a case whose estimated peak memory exceeds this (0: no cap)")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"],
                        help="torch backend: autocast dtype (auto: bf16 on CPUs/GPUs with native bf16)")
    parser.add_argument("--no-skip-existing", action="store_true", help="predict cases whose output exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        art = load_artifact(args.artifact, load_module=args.backend == "torch")
        items = shard_items(file_inputs(Path(args.input), args.pattern, len(art.spec.channels)),
                            parse_shard(args.shard))
        inf = {"overlap": args.overlap, "sw_batch_size": args.sw_batch_size, "threads": args.threads,
               "device": args.device, "precision": args.precision,
               "max_memory_gb": args.max_memory_gb or None, "tta_flips": [int(a) for a in args.tta.split(",") if a.strip()]}
        predictor = predictor_from_artifact(art, inf, backend=args.backend)
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        summary = run_batch(items, predictor, art, out, skip_existing=not args.no_skip_existing,
                            extra={"input": str(args.input), "backend": args.backend, "shard": args.shard})
    except PartialFailure as e:
        sys.stderr.write(f"medseg-predict: error: {e}\n")
        return 2
    except MedsegError as e:
        sys.stderr.write(f"medseg-predict: error: {e}\n")
        return 2
    sys.stdout.write(f"{summary['n_ok']} case(s) segmented, {summary['n_skipped']} skipped, "
                     f"{summary['n_failed']} failed; summary in {Path(args.output) / 'predictions.json'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
