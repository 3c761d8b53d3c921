"""Typed configuration schemas: the one place every default is written.

The YAML files under ``conf/`` hold only what a group or a preset changes; they are merged onto
these dataclasses, so an unknown key or a value of the wrong type fails when Hydra composes the
config, before any data is read. Choice-valued keys are enums: an invalid value is refused with the
list of valid ones. Stages receive the composed config as these dataclasses
(:func:`to_typed`, i.e. ``OmegaConf.to_object``), whose ``__post_init__`` checks what a type cannot.

This module imports neither Hydra nor OmegaConf at import time, so the Hydra-free runtime
(``medseg-predict``) builds its :class:`InferenceConfig` from the same defaults.
:func:`register_configs` stores the root schema in Hydra's ConfigStore as ``medseg_schema``;
``conf/config.yaml`` lists it first in its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional, TypeVar

#: OmegaConf's marker of a required value (``omegaconf.MISSING``).
MISSING = "???"


class SourceKind(str, Enum):
    """Dataset layouts ``prepare`` can read."""

    msd = "msd"
    brats = "brats"
    nifti = "nifti"
    dicom = "dicom"
    xray = "xray"


class Norm(str, Enum):
    """Normalisation layers of the U-Net."""

    instance = "instance"
    batch = "batch"


class Schedule(str, Enum):
    """Learning-rate schedules (per iteration, after linear warm-up)."""

    cosine = "cosine"
    poly = "poly"
    constant = "constant"


class StitchDtype(str, Enum):
    """Dtype of the sliding-window probability accumulator."""

    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class EmptyKind(str, Enum):
    """Empty-mask conventions (see :mod:`medseg.metrics.overlap`)."""

    brats = "brats"
    ignore = "ignore"


class TargetMode(str, Enum):
    """What the network predicts: one softmax channel per label, or one sigmoid per region."""

    labels = "labels"
    regions = "regions"


class LossKind(str, Enum):
    """Dice plus a voxel-wise term."""

    dice_ce = "dice_ce"
    dice_focal = "dice_focal"


class OptimizerKind(str, Enum):
    """Optimisers."""

    adamw = "adamw"
    sgd = "sgd"


class Precision(str, Enum):
    """Autocast precision; ``auto``: bf16 on GPUs that support it (else fp16) and on CPUs with native
    bf16 instructions, fp32 on other CPUs."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Normalization(str, Enum):
    """Intensity normalisation of each channel."""

    zscore_nonzero = "zscore_nonzero"
    none = "none"


class PredictSource(str, Enum):
    """What ``predict`` reads: 4D NIfTI files, or a dataset folder read with the ``data`` settings."""

    files = "files"
    data = "data"


class InputLayout(str, Enum):
    """How ``predict.source=files`` inputs are laid out (see :mod:`medseg.inference.layouts`);
    ``auto``: told apart by the file names."""

    auto = "auto"
    nifti4d = "nifti4d"
    brats2023 = "brats2023"
    brats2021 = "brats2021"
    nnunet = "nnunet"
    dicom = "dicom"


class OutputCoding(str, Enum):
    """Label coding of written label maps; ``auto``: the input convention's (brats2023 for BraTS
    2023 files, brats2021 for BraTS 2021 folders, else msd)."""

    auto = "auto"
    msd = "msd"
    brats2021 = "brats2021"
    brats2023 = "brats2023"


class SynthLayout(str, Enum):
    """Layouts the built-in data generator writes."""

    msd = "msd"
    brats2021 = "brats2021"
    brats2023 = "brats2023"
    dicom = "dicom"
    xray = "xray"


class LabelConvention(str, Enum):
    """Label codings of label files (see :data:`medseg.data.labels.CONVENTIONS`)."""

    msd = "msd"
    brats2021 = "brats2021"
    brats2023 = "brats2023"
    binary = "binary"
    brats2024_gli = "brats2024_gli"  # post-treatment glioma: 1 NETC, 2 SNFH, 3 ET, 4 resection cavity
    brats2024_met = "brats2024_met"  # metastases: GLI 2024 codes, regions ET, RC, TC, WT
    brats2024_men = "brats2024_men"  # pre-operative meningioma: 2023 codes
    brats2024_ped = "brats2024_ped"  # paediatric: 1 ET, 2 NETC, 3 cystic component, 4 edema
    brats2024_menrt = "brats2024_menrt"  # meningioma radiotherapy: 1 gross tumour volume


#: Label coding of a dataset's label files: ``auto`` (detected from the file names, BraTS) or any
#: :class:`LabelConvention` (one list of codings, written once).
DataConvention = Enum("DataConvention", {"auto": "auto", **{c.name: c.value for c in LabelConvention}},
                      type=str, module=__name__)
DataConvention.__doc__ = "Label coding of a dataset's label files; ``auto``: detected from the file names (BraTS)."


class LesionConvention(str, Enum):
    """Lesion-wise scoring rules (see :mod:`medseg.metrics.lesions` and
    :mod:`medseg.metrics.lesions_brats2025`)."""

    brats2023 = "brats2023"  # dilated reference lesions, small ones ignored, misses Dice 0 / HD95 374 mm
    brats2025 = "brats2025"  # brats-evaluation (panoptica): connected components, one-to-one matching


class Backend(str, Enum):
    """Runtime of an exported artifact's network."""

    torch = "torch"
    onnxruntime = "onnxruntime"
    onnxruntime_int8 = "onnxruntime-int8"


class EvalSplit(str, Enum):
    """The prepared split that ``evaluate`` (and ``run``'s predict) scores."""

    test = "test"
    validation = "validation"
    train = "train"


class Device(str, Enum):
    """Where to run the network."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class PathsConfig:
    """Folders. Stage inputs (``prepared``, ``checkpoint``, ``artifact``, ``input``) are needed
    only when a stage runs on its own; ``medseg run`` wires them itself."""

    root: str = "."
    data_dir: str = "data"
    cache_dir: str = ".cache/medseg"
    output_dir: str = "."
    prepared: Optional[str] = None
    checkpoint: Optional[str] = None
    artifact: Optional[str] = None
    input: Optional[str] = None
    metrics: Optional[str] = None


#: Default SeriesDescription patterns of the four BraTS contrasts (MSD Task01 channel order), the
#: default of ``data.series_patterns``: hints only (see :mod:`medseg.data.contrasts`), worded for
#: Siemens, GE and Philips habits; a channel without a pattern is matched by its own name.
_POST = r"(gd|gad|ce\b|c\+|\+c|post|contrast)"
_T1 = r"(t1|mprage|tfe|spgr|bravo|vibe)"
DEFAULT_SERIES_PATTERNS: dict[str, str] = {
    "FLAIR": r"flair|dark.?fluid|tirm",
    "T1w": rf"^(?!ce[\s_]).*?{_T1}(?!.*{_POST})",
    "t1gd": rf"{_T1}.*{_POST}|^ce[\s_].*{_T1}",
    "T2w": r"t2(?!.*(flair|\*|star|swi|dark.?fluid|tirm))",
}


@dataclass
class DataConfig:
    """Dataset source, verification, planning and preprocessing.

    Source-specific keys are ignored by the other sources (see ``conf/data/*.yaml``).
    """

    source: SourceKind = SourceKind.msd
    root: str = MISSING
    convention: DataConvention = DataConvention.msd  # label coding of the label files
    # nifti: channel names, a {case} file pattern per channel and for the label, or a datalist
    channels: list[str] = field(default_factory=list)
    patterns: dict[str, str] = field(default_factory=dict)
    label_pattern: Optional[str] = None
    datalist: Optional[str] = None
    # dicom: SeriesDescription regex per channel (these replace the defaults channel by channel) or
    # a mapping file; NIfTI labels in label_dir
    series_patterns: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SERIES_PATTERNS))
    series_mapping: Optional[str] = None
    label_dir: Optional[str] = "labels"
    slice_gap_tol_mm: float = 0.05
    resample_channels: bool = True
    # xray: masks ({case}.png / .nii.gz) and whether to apply the stored VOI LUT / window
    mask_dir: Optional[str] = "masks"
    voi_lut: bool = False
    # verification
    skip_bad: bool = False  # true: quarantine bad cases and go on; false: any problem stops prepare
    max_voxels: int = 512 * 512 * 512 * 4  # refuse images whose header promises more (checked before decoding)
    affine_tol_mm: float = 1e-3  # tolerance when comparing the grids of channels and label
    # planning and preprocessing
    target_spacing: Optional[list[float]] = None  # mm along R, A, S; None: planned (median spacing)
    memory_budget_gb: float = 8.0  # the planned patch keeps one training step under this
    normalization: Normalization = Normalization.zscore_nonzero
    crop_foreground: bool = True
    val_fraction: float = 0.2
    test_fraction: float = 0.2  # used only when the dataset has no labelled test cases
    split_seed: int = 0
    workers: int = 2  # parallel processes for prepare


@dataclass
class ModelConfig:
    """MONAI U-Net with ReLU activations (the activation is not configurable); the defaults are
    ``model=unet3d``."""

    spatial_dims: int = 3
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    strides: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    num_res_units: int = 1
    norm: Norm = Norm.instance
    dropout: float = 0.0
    deep_supervision: bool = False  # true: MONAI DynUNet with deep supervision (nnU-Net architecture), ReLU
    deep_supr_num: int = 2


@dataclass
class AugmentConfig:
    """Random augmentation of training patches; each transform has its own probability
    (see :mod:`medseg.data.augment`)."""

    rotate_prob: float = 0.2
    rotate_deg: float = 30.0
    scale_prob: float = 0.2
    scale_range: float = 0.2
    elastic_prob: float = 0.0
    elastic_magnitude: float = 4.0
    flip_prob: float = 0.5
    intensity_scale_prob: float = 0.3
    intensity_scale: float = 0.15
    intensity_shift_prob: float = 0.3
    intensity_shift: float = 0.15
    contrast_prob: float = 0.15
    contrast_range: float = 0.25
    gamma_prob: float = 0.3
    gamma_range: float = 0.3
    blur_prob: float = 0.1
    blur_sigma_min: float = 0.5
    blur_sigma_max: float = 1.0
    lowres_prob: float = 0.1
    lowres_factor: float = 2.0
    noise_prob: float = 0.15
    noise_std: float = 0.1
    # share of patches with 1..channel_dropout_max contrasts zeroed (a no-op for one-channel models); on by
    # default since bench/missing_contrast.py measured no full-contrast cost (docs/performance.md)
    channel_dropout_prob: float = 0.5
    channel_dropout_max: int = 1  # most contrasts dropped at once (always at least one kept)

    def __post_init__(self) -> None:
        if not 0.0 <= self.channel_dropout_prob <= 1.0:
            raise ValueError(f"train.augment.channel_dropout_prob={self.channel_dropout_prob} must be in [0, 1]")
        if self.channel_dropout_max < 1:
            raise ValueError(f"train.augment.channel_dropout_max={self.channel_dropout_max} must be at least 1")


@dataclass
class TrainConfig:
    """Training loop."""

    max_epochs: int = 100
    iters_per_epoch: int = 50
    max_time_s: Optional[float] = None  # wall-clock training budget (s); see budget_schedule
    budget_schedule: bool = True  # with max_time_s: LR and validations follow the budget used (false: cut at it)
    batch_size: int = 2
    patch_size: Optional[list[int]] = None  # None: the planned patch (plan.json); 2 ints for a 2D model
    fg_oversample: float = 0.5  # share of patches centred on a foreground voxel of a random present class
    target: TargetMode = TargetMode.labels  # labels: softmax per label | regions: sigmoid per BraTS region
    loss: LossKind = LossKind.dice_ce
    dice_weight: float = 1.0
    ce_weight: float = 1.0  # weight of the voxel-wise term (cross-entropy or focal)
    focal_gamma: float = 2.0
    optimizer: OptimizerKind = OptimizerKind.adamw  # adamw (schedule=cosine) | sgd: Nesterov (schedule=poly, lr 0.01)
    lr: float = 3e-3
    momentum: float = 0.99  # sgd only
    weight_decay: float = 1e-5
    schedule: Schedule = Schedule.cosine
    warmup_iters: int = 50
    decay_fraction: float = 1.0  # share of the run over which the LR decays (1: all after warm-up; 0.3: peak held to 70 %)
    min_lr_ratio: float = 0.0  # the rate the decay ends at, as a share of lr (0: anneal to 0; 0.1: to lr / 10)
    grad_clip: float = 12.0
    precision: Precision = Precision.auto  # auto: bf16 on GPUs and CPUs with native bf16, else fp32
    compile: bool = False  # torch.compile the network for training
    seed: int = 0
    deterministic: bool = False  # same seed -> bit-identical weights on CPU
    resume: str = "auto"  # auto | never | PATH of a training state
    keep_states: int = 2  # training states kept in states/
    patience: Optional[int] = None  # early stopping: validations without improvement; None: off
    # best.pt and early stopping follow a moving average of the validation mean Dice,
    # ema = best_ema * ema + (1 - best_ema) * dice (nnU-Net's 0.9); 0: the raw Dice (a lucky validation
    # on a few cases picks the weights: docs/performance.md, "the checkpoint")
    best_ema: float = 0.9
    fold: Optional[int] = None  # cross-validation fold (0 .. folds-1); None: the prepared split
    folds: int = 5
    num_workers: int = 0  # data-loader worker processes (augmentation runs there)
    prefetch: Optional[int] = None  # batches prepared ahead in a helper thread; None: 2 on GPUs, 0 on CPU
    threads: Optional[int] = None  # torch intra-op threads; None: torch's default
    device: Device = Device.auto
    val_every: int = 1
    val_overlap: float = 0.25
    tensorboard: bool = True
    mlflow: bool = False  # log to MLflow (pip install 'medseg[mlflow]'); file store in the train folder
    mlflow_uri: Optional[str] = None
    mlflow_experiment: str = "medseg"
    progress: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"train.decay_fraction={self.decay_fraction} must be in (0, 1]")
        if not 0.0 <= self.min_lr_ratio < 1.0:
            raise ValueError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1)")
        if not 0.0 <= self.best_ema < 1.0:
            raise ValueError(f"train.best_ema={self.best_ema} must be in [0, 1)")
        if self.resume not in ("auto", "never") and not Path(self.resume).expanduser().exists():
            raise ValueError(f"train.resume={self.resume!r} must be auto, never or the path of a train folder "
                             "or a training state (not found)")


@dataclass
class InferenceConfig:
    """Sliding-window inference (shared by evaluate, predict and ``medseg-predict``).

    ``min_component_ml``: drop tumour components smaller than this (ml; 0 keeps all); ``None``
    takes the value recorded in the artifact. ``min_enhancing_ml``: relabel a case's predicted
    enhancing tumour as tumour core when it totals less than this (ml; 0: off;
    :mod:`medseg.inference.postprocess`); ``None`` takes the threshold fitted on the validation split
    (recorded in the artifact by ``export``, fitted again by ``evaluate``). ``max_memory_gb``: refuse a case whose estimated
    peak RSS exceeds this (``None``: no cap).
    """

    overlap: float = 0.5
    sw_batch_size: int = 2
    tta_flips: list[int] = field(default_factory=list)
    min_component_ml: Optional[float] = 0.5
    min_enhancing_ml: Optional[float] = None
    threads: Optional[int] = None
    device: Device = Device.auto
    precision: Precision = Precision.fp32
    max_memory_gb: Optional[float] = 4.0
    stitch_dtype: StitchDtype = StitchDtype.float32
    calibrate: bool = True  # apply the artifact's fitted temperature (false: raw probabilities; labels are the same)

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"inference.overlap={self.overlap} must be in [0, 1)")
        if self.sw_batch_size < 1:
            raise ValueError(f"inference.sw_batch_size={self.sw_batch_size} must be at least 1")
        if self.min_enhancing_ml is not None and self.min_enhancing_ml < 0:
            raise ValueError(f"inference.min_enhancing_ml={self.min_enhancing_ml} must be >= 0 (0: off) or null "
                             "(the threshold fitted on the validation split)")
        bad = [a for a in self.tta_flips if a not in (0, 1, 2)]
        if bad:
            raise ValueError(f"inference.tta_flips={list(self.tta_flips)}: axes must be 0, 1 or 2")


@dataclass
class EvaluateConfig:
    """Scoring against reference labels."""

    hd_percentile: float = 95.0
    nsd_tolerance_mm: float = 1.0  # tolerance of the normalised surface Dice
    detection_min_ml: float = 0.1  # a case is called tumour-positive from this predicted volume
    empty_convention: EmptyKind = EmptyKind.brats  # brats: both empty Dice 1 / HD 0, one empty Dice 0 / HD empty_hd_mm
    empty_hd_mm: float = 373.13
    n_figures: int = 5  # outline montages of the worst and of the best cases (each)
    split: EvalSplit = EvalSplit.test  # the prepared split scored (an empty one is an error, never a fallback)
    # scoring external predictions (no checkpoint): folders of label maps matched by case name
    predictions: Optional[str] = None
    references: Optional[str] = None
    images: Optional[str] = None  # optional images for the montages (<case>_0000.nii.gz or <case>.nii.gz)
    labels: LabelConvention = LabelConvention.msd  # label coding of both folders
    lesion_convention: LesionConvention = LesionConvention.brats2023  # lesion-wise rules: brats2023 | brats2025
    skip_bad: bool = False  # true: missing/bad predictions are scored as empty and listed as failures
    drop_channels: list[str] = field(default_factory=list)  # contrasts zeroed on purpose (a missing-contrast pattern)
    viewer: Optional[bool] = None  # NiiVue viewer in report.html; None: when installed (make viewer)
    viewer_case_mb: float = 4.0  # bound on one case's embedded volumes (MB); finer cases are downsampled
    viewer_max_mb: float = 60.0  # bound on all embedded volumes (MB); cases past it are listed, not embedded
    inference: InferenceConfig = field(default_factory=InferenceConfig)


@dataclass
class ExportConfig:
    """Exported artifact."""

    logit_tolerance: float = 1e-3  # max |eager - exported| logit difference accepted
    min_label_agreement: float = 0.9999  # fraction of voxels whose label must agree on a real case
    onnx: bool = True  # also write model.onnx (needs medseg[onnx]), checked with ONNX Runtime
    opset: int = 17
    int8: bool = False  # also write model.int8.onnx (predict.backend=onnxruntime-int8)
    bundle: bool = True  # also write a MONAI bundle folder (medseg_bundle/)


@dataclass
class CalibrationConfig:
    """Temperature scaling and QC thresholds, fitted on the validation split by ``export`` (recorded
    in the artifact) and by ``evaluate`` (to report them on the test cases); see
    :mod:`medseg.export.review`."""

    enabled: bool = True  # false: no temperature, no QC thresholds (QC records then carry signals only)
    band_mm: float = 5.0  # fitting and ECE use voxels within this distance (mm) of the reference or predicted tumour
    bins: int = 15  # equal-width probability bins of the ECE and the reliability diagram
    max_voxels: int = 2_000_000  # band voxels sampled (seeded) over all validation cases for the fit
    qc_quantile: float = 1.0  # a QC signal's threshold: this quantile of its validation values (1.0: the largest)
    qc_false_flag_rate: Optional[float] = 0.01  # ... or mean + z*sd of them for this one-sided rate, if larger
    review_dice: float = 0.8  # evaluate: a case is "bad" for the QC ranking (ROC AUC) below this Dice

    def __post_init__(self) -> None:
        if not 0.0 <= self.qc_quantile <= 1.0:
            raise ValueError(f"calibration.qc_quantile={self.qc_quantile} must be in [0, 1]")
        if self.qc_false_flag_rate is not None and not 0.0 < self.qc_false_flag_rate < 0.5:
            raise ValueError(f"calibration.qc_false_flag_rate={self.qc_false_flag_rate} must be in (0, 0.5)")
        if self.band_mm <= 0 or self.bins < 2 or self.max_voxels < 1:
            raise ValueError("calibration.band_mm must be > 0, calibration.bins >= 2, calibration.max_voxels >= 1")


@dataclass
class PredictConfig:
    """Batch prediction from an exported artifact."""

    source: PredictSource = PredictSource.files
    pattern: str = "*.nii.gz"
    layout: InputLayout = InputLayout.auto  # source=files: 4D NIfTI, BraTS 2023/2021 or nnU-Net per-contrast files, DICOM studies
    labels: OutputCoding = OutputCoding.auto  # label coding of the written <case>.nii.gz
    # layout dicom: SeriesDescription hints that replace the default hint of their channel (as
    # medseg-predict --series-pattern CHANNEL=REGEX), and a mapping JSON {case or StudyInstanceUID:
    # {channel: SeriesInstanceUID or SeriesDescription}} relative to the working folder (--series-map)
    series_patterns: dict[str, str] = field(default_factory=dict)
    series_mapping: Optional[str] = None
    cases: list[str] = field(default_factory=list)  # source=data: only these cases (empty: all)
    ensemble: list[str] = field(default_factory=list)  # more artifact folders: probabilities are averaged
    skip_existing: bool = True
    backend: Backend = Backend.torch
    shard: Optional[str] = None  # "i/n": the i-th of n interleaved parts of the sorted case list
    dicom_seg: Optional[bool] = None  # None: when highdicom is installed
    uncertainty: bool = False  # also write <case>_uncertainty.nii.gz (predictive entropy, bits) per case
    review: Optional[bool] = None  # write review.html (NiiVue viewer of the batch); None: when installed (make viewer)
    viewer_case_mb: float = 4.0  # bound on one case's embedded volumes in review.html (MB)
    viewer_max_mb: float = 60.0  # bound on all embedded volumes in review.html (MB); cases past it are listed only
    inference: InferenceConfig = field(default_factory=lambda: InferenceConfig(min_component_ml=None))

    def __post_init__(self) -> None:
        if self.shard is not None:
            parse_shard(self.shard)


@dataclass
class SynthDataConfig:
    """Built-in data generated by ``medseg run`` when ``synth.enabled`` (see ``medseg synth``)."""

    enabled: bool = False
    n: int = 24
    n_test: int = 6
    spacing: float = 1.5
    seed: int = 0
    layout: SynthLayout = SynthLayout.msd


@dataclass
class MedsegConfig:
    """Root of the configuration tree."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    synth: SynthDataConfig = field(default_factory=SynthDataConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    name: str = "medseg"
    seed: int = 0
    log_level: str = "INFO"
    optimized_metric: Optional[str] = None  # summary key (dots for nested) returned to a sweeper (hparams_search)
    extra: dict[str, Any] = field(default_factory=dict)


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ``None`` for no sharding."""
    if shard in (None, "", "null"):
        return None
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError as e:
        raise ValueError(f"predict.shard={shard!r} must look like i/n, e.g. 0/4") from e
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"predict.shard={shard!r}: need 0 <= i < n")
    return i, n


_Schema = TypeVar("_Schema")


def as_schema(node: Any, schema: type[_Schema]) -> _Schema:
    """A config (or a section of it) as its schema dataclass: an OmegaConf node is converted with
    ``OmegaConf.to_object`` (interpolations resolved, nothing mutated); an instance of ``schema`` is
    returned as it is.

    Raises:
        ConfigError: a value the schema's checks refuse, or a node of another schema.
    """
    if isinstance(node, schema):
        return node
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from medseg.errors import ConfigError

    try:
        obj = OmegaConf.to_object(node) if OmegaConf.is_config(node) else node
    except (ValueError, OmegaConfBaseException) as e:
        cause = e.__cause__ if isinstance(e, OmegaConfBaseException) and e.__cause__ else e
        raise ConfigError(" ".join(str(cause).split())) from e
    if not isinstance(obj, schema):
        raise ConfigError(f"expected the {schema.__name__} config, got {type(obj).__name__}")
    return obj


def to_typed(cfg: Any) -> MedsegConfig:
    """The composed config as :class:`MedsegConfig` dataclasses (see :func:`as_schema`)."""
    return as_schema(cfg, MedsegConfig)


def to_dictconfig(cfg: MedsegConfig) -> Any:
    """A typed config back as an OmegaConf node (for YAML records and Hydra)."""
    from omegaconf import OmegaConf

    return OmegaConf.structured(cfg)


def choice(value: Any) -> str:
    """The string of a choice-valued key, whether it arrives as an enum (from the typed config) or a
    plain string (from ``plain()`` dicts and tests)."""
    return str(getattr(value, "value", value))


def register_configs() -> None:
    """Store the root schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="medseg_schema", node=MedsegConfig)
