"""The model card (``MODEL_CARD.md``) shipped inside every artifact."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def model_card(metadata: dict[str, Any], training_data: dict[str, Any] | None) -> str:
    """Markdown: intended use, input specification, training data, metrics with CIs, limitations."""
    lines = [f"# Model card — {metadata.get('name', 'medseg')}", "",
             f"Exported {metadata.get('created', '')} by medseg {metadata.get('versions', {}).get('medseg', '')}; "
             f"weights sha256 `{metadata.get('weights_sha256', '')}`.", ""]
    lines += _intended_use(metadata["output"].get("regions", {}))
    lines += _input_specification(metadata)
    lines += _training_data(training_data)
    lines += _metrics(metadata)
    lines += _limitations(metadata)
    return "\n".join(lines)


def _intended_use(regions: dict[str, Any]) -> list[str]:
    return ["## Intended use", "",
            ("Segmentation of brain tumour sub-regions (whole tumour, tumour core, enhancing tumour) on "
             "multi-contrast MRI, for research." if "whole_tumour" in regions else
             "Segmentation of the lesion class it was trained on, for research."),
            "Not a medical device: outputs must be reviewed by a qualified reader and must not be the "
            "sole basis of a clinical decision.", ""]


def _input_specification(metadata: dict[str, Any]) -> list[str]:
    inp, out, net = metadata["input"], metadata["output"], metadata["network"]
    return ["## Input specification", "",
            "| item | value |", "|---|---|",
            f"| channels (in this order) | {', '.join(inp['channels'])} |",
            f"| file format | {inp.get('file_format', '')} |",
            f"| orientation | reoriented to {inp['orientation']} internally; outputs on the input grid |",
            f"| spacing | resampled to {inp['spacing_mm']} mm internally |",
            f"| normalisation | {inp['normalization']} (per channel over non-zero voxels, after cropping to the "
            f"non-zero box) |",
            f"| window | {inp['patch_size']} voxels, Gaussian-blended sliding window |",
            f"| output | {out.get('decoding', '')}; labels {out.get('labels', {})}; regions {out.get('regions', {})} |",
            "", "## Network", "",
            f"{net.get('architecture', '')}, {net.get('spatial_dims', '')}D, channels {net.get('channels')}, "
            f"strides {net.get('strides')}, {net.get('num_res_units', 0)} residual unit(s), "
            f"{net.get('norm', '')} norm, activation {net.get('activation', 'ReLU')} only, "
            f"{net.get('parameters', 0):,} parameters.", ""]


def _training_data(training_data: dict[str, Any] | None) -> list[str]:
    lines = ["## Training data", ""]
    if not training_data:
        return lines + ["Not recorded (export ran without `paths.prepared`).", ""]
    fp = training_data.get("fingerprint", {})
    return lines + [
        f"- fingerprint sha256 `{training_data.get('sha256', '')}` (of `fingerprint.json` + `datalist.json`)",
        f"- {fp.get('n_cases', '?')} cases ({fp.get('n_tumour_free', '?')} tumour-free); split "
        f"{training_data.get('split', {})}",
        f"- source: {training_data.get('source', '')}",
        f"- spacing median {fp.get('spacing_mm', {}).get('median')} mm, "
        f"shape median {fp.get('shape', {}).get('median')}",
        f"- label fractions {fp.get('label_fraction', {})}", ""]


def _metrics(metadata: dict[str, Any]) -> list[str]:
    lines = ["## Metrics (held-out test cases)", ""]
    summary = metadata.get("metrics")
    if not summary:
        return lines + ["Not recorded (export ran without `paths.metrics`).", ""]
    lines += ["| structure | n | Dice mean [95% CI] | HD95 mm mean [95% CI] |", "|---|---|---|---|"]
    for s, m in summary.items():
        d, h = m.get("dice", {}), m.get("hd95", {})
        dci, hci = d.get("ci95") or [None, None], h.get("ci95") or [None, None]
        lines.append(f"| {s} | {d.get('n', '')} | {_fmt(d.get('mean'))} [{_fmt(dci[0])}, {_fmt(dci[1])}] | "
                     f"{_fmt(h.get('mean'), 2)} [{_fmt(hci[0], 2)}, {_fmt(hci[1], 2)}] |")
    conv = metadata.get("metrics_convention") or {}
    if conv.get("empty"):
        lines += ["", f"Empty-mask convention: {conv['empty']}."]
    return lines + [""]


def _limitations(metadata: dict[str, Any]) -> list[str]:
    post = metadata.get("postprocessing", {})
    min_ml = post.get("min_component_ml", 0)
    enhancing = float(post.get("min_enhancing_ml") or 0)
    fit = post.get("enhancing_fit") or {}
    rule = ([f"- A case's predicted enhancing tumour under {enhancing:g} ml is relabelled as tumour core (a "
             "rule against false enhancing tumour in non-enhancing and tumour-free cases"
             + (f", its threshold fitted on {fit['n_cases']} validation cases: enhancing-tumour Dice "
                f"{fit['mean_dice_before']:.3f} -> {fit['mean_dice_after']:.3f}" if fit else "")
             + "); a true enhancing tumour that small is then missed."] if enhancing > 0 else [])
    return ["## Limitations", "",
            "- Trained and tested on the data described above only; performance on other scanners, "
            "protocols, field strengths, paediatric cases or other pathologies is unknown.",
            "- The input channels must be the listed contrasts in the listed order, co-registered on "
            "one grid; skull-stripped inputs are expected if the training data were skull-stripped.",
            "- Small lesions (below a few voxels at the internal spacing) may be missed; "
            f"components under {min_ml} ml are removed by post-processing.",
            *rule,
            "- Test-set confidence intervals are bootstrap intervals over few cases and are wide.",
            "- Built-in demo data are synthetic: a model trained on them is not fit for real images.", ""]
