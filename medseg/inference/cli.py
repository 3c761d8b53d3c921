"""``medseg-predict``: the Hydra- and MONAI-free batch command (the Docker image's default).

    medseg-predict ARTIFACT INPUT OUTPUT [--backend torch|onnxruntime|onnxruntime-int8] [--shard i/n]
                   [--tta 0,1,2] [--overlap 0.5] [--threads N] [--pattern '*.nii.gz'] [--no-skip-existing]
                   [--uncertainty] [--no-calibrate] [--review|--no-review] [--viewer-case-mb MB] [--viewer-max-mb MB]
                   [--layout auto|nifti4d|brats2023|brats2021|nnunet|dicom] [--labels auto|msd|brats2021|brats2023]
                   [--series-pattern CHANNEL=REGEX ...] [--series-map MAPPING.json]

Every default is the one of :class:`medseg.config.InferenceConfig` / :class:`medseg.config.PredictConfig`
(the same as ``medseg predict``). See :mod:`medseg.inference.runtime` for what it reads and writes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medseg.config import (Backend, Device, InferenceConfig, InputLayout, OutputCoding, Precision, PredictConfig,
                           StitchDtype)
from medseg.errors import ConfigError, MedsegError
from medseg.export.artifact import load_artifact
from medseg.inference.build import build_predictor
from medseg.inference.layouts import describe_layouts, discover_inputs, output_coding
from medseg.inference.runtime import run_batch, shard_items
from medseg.utils.niivue import viewer_bounds


def _parser() -> argparse.ArgumentParser:
    """The argument parser; defaults from the config schema."""
    inf, pred = InferenceConfig(min_component_ml=None), PredictConfig()
    p = argparse.ArgumentParser(prog="medseg-predict", description="Segment a folder of cases with an "
                                "exported medseg artifact (no Hydra, no MONAI needed).")
    p.add_argument("artifact", help="artifact folder (metadata.json, model.ts, model.onnx)")
    p.add_argument("input", help="folder of cases (4D NIfTI, or one file per contrast: see --layout), "
                   "a .txt list of 4D files, or one file")
    p.add_argument("output", help="output folder")
    p.add_argument("--backend", choices=[b.value for b in Backend], default=pred.backend.value)
    p.add_argument("--shard", default=pred.shard, help="i/n: only the i-th of n parts of the sorted case list")
    p.add_argument("--pattern", default=pred.pattern, help="layout nifti4d: which files of INPUT are cases")
    p.add_argument("--layout", choices=[x.value for x in InputLayout], default=pred.layout.value,
                   help="how INPUT's cases are laid out (auto: from the file names): "
                   + "; ".join(f"{k}: {v}" for k, v in describe_layouts().items()))
    p.add_argument("--labels", choices=[x.value for x in OutputCoding], default=pred.labels.value,
                   help="label coding of the outputs (auto: brats2023 for BraTS 2023 files, brats2021 for "
                   "BraTS 2021 folders, else msd)")
    p.add_argument("--series-pattern", action="append", default=[], metavar="CHANNEL=REGEX",
                   help="layout dicom: SeriesDescription hint of a channel (case-insensitive regular expression), "
                   "replacing its default; repeatable")
    p.add_argument("--series-map", metavar="MAPPING.json",
                   help="layout dicom: JSON {case or StudyInstanceUID: {channel: SeriesInstanceUID or "
                   "SeriesDescription}} choosing the series, over the identification")
    p.add_argument("--tta", default=",".join(str(a) for a in inf.tta_flips),
                   help="comma-separated axes to mirror, e.g. 0,1,2")
    p.add_argument("--overlap", type=float, default=inf.overlap)
    p.add_argument("--sw-batch-size", type=int, default=inf.sw_batch_size)
    p.add_argument("--threads", type=int, default=inf.threads)
    p.add_argument("--device", choices=[d.value for d in Device], default=inf.device.value)
    p.add_argument("--max-memory-gb", type=float, default=inf.max_memory_gb,
                   help="refuse a case whose estimated peak memory exceeds this (0: no cap)")
    p.add_argument("--precision", choices=[x.value for x in Precision], default=inf.precision.value,
                   help="torch backend: autocast dtype (auto: bf16 on CPUs/GPUs with native bf16)")
    p.add_argument("--stitch-dtype", choices=[x.value for x in StitchDtype], default=inf.stitch_dtype.value,
                   help="dtype of the probability accumulator")
    p.add_argument("--min-component-ml", type=float, default=inf.min_component_ml,
                   help="drop tumour components smaller than this (default: the value recorded in the artifact)")
    p.add_argument("--min-enhancing-ml", type=float, default=inf.min_enhancing_ml,
                   help="relabel a case's enhancing tumour as tumour core when it totals less than this "
                        "(0: off; default: the threshold fitted on validation and recorded in the artifact)")
    p.add_argument("--no-skip-existing", action="store_true", help="predict cases whose output exists")
    p.add_argument("--review", action=argparse.BooleanOptionalAction, default=pred.review,
                   help="write review.html, an offline NiiVue viewer of the batch (default: when NiiVue is installed)")
    p.add_argument("--viewer-case-mb", type=float, default=pred.viewer_case_mb, help="review.html: MB per case")
    p.add_argument("--viewer-max-mb", type=float, default=pred.viewer_max_mb, help="review.html: MB in total")
    p.add_argument("--uncertainty", action="store_true", default=pred.uncertainty,
                   help="also write <case>_uncertainty.nii.gz: voxel-wise predictive entropy (bits) on the input grid")
    p.add_argument("--no-calibrate", action="store_true", default=not inf.calibrate,
                   help="do not apply the artifact's fitted temperature (raw probabilities; labels are the same)")
    return p


def inference_config(args: argparse.Namespace) -> InferenceConfig:
    """The :class:`InferenceConfig` the arguments describe.

    Raises:
        ConfigError: a value the schema refuses (one line).
    """
    try:
        return InferenceConfig(overlap=args.overlap, sw_batch_size=args.sw_batch_size,
                               tta_flips=[int(a) for a in args.tta.split(",") if a.strip()],
                               min_component_ml=args.min_component_ml, min_enhancing_ml=args.min_enhancing_ml,
                               threads=args.threads,
                               device=Device(args.device), precision=Precision(args.precision),
                               max_memory_gb=args.max_memory_gb or None, stitch_dtype=StitchDtype(args.stitch_dtype),
                               calibrate=not args.no_calibrate)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def series_patterns(pairs: list[str]) -> dict[str, str]:
    """``CHANNEL=REGEX`` arguments as a mapping.

    Raises:
        ConfigError: an argument without ``=``, with an empty channel or pattern (an empty pattern
            would match every series), or a channel given twice.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        channel, sep, pattern = pair.partition("=")
        if not sep or not channel.strip() or not pattern.strip():
            raise ConfigError(f"--series-pattern {pair!r}: expected CHANNEL=REGEX, e.g. FLAIR='flair|dark.?fluid'")
        if channel.strip() in out:
            raise ConfigError(f"--series-pattern names channel {channel.strip()!r} twice")
        out[channel.strip()] = pattern
    return out


def main(argv: list[str] | None = None) -> int:
    """``medseg-predict``: see the module docstring."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        inference = inference_config(args)
        art = load_artifact(args.artifact, load_module=args.backend == Backend.torch.value)
        items, layout = discover_inputs(Path(args.input), args.layout, art.spec.channels, args.pattern,
                                        series_patterns(args.series_pattern), args.series_map)
        coding = output_coding(args.labels, layout, art.labels)
        items = shard_items(items, args.shard)
        predictor = build_predictor(inference, artifact=art, backend=args.backend)
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        summary = run_batch(items, predictor, art, out, skip_existing=not args.no_skip_existing, coding=coding,
                            uncertainty=args.uncertainty,
                            review=viewer_bounds(args.review, args.viewer_case_mb, args.viewer_max_mb, "--review"),
                            shard=args.shard, extra={"input": str(args.input), "layout": layout,
                                                     "backend": args.backend})
    except MedsegError as e:  # PartialFailure included: the finished cases keep their outputs
        sys.stderr.write(f"medseg-predict: error: {e}\n")
        return 2
    sys.stdout.write(f"{summary['n_ok']} case(s) segmented, {summary['n_skipped']} skipped, "
                     f"{summary['n_failed']} failed, {summary['qc']['n_review']} flagged for review; "
                     f"summary in {summary['summary_path']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
