"""Typed configuration schemas.

The YAML files under ``conf/`` are merged onto these dataclasses, so an unknown key or a value of
the wrong type fails when Hydra composes the config, before any data is read. Choice-valued keys
are enums: an invalid value is refused with the list of valid ones.

:func:`register_configs` stores the root schema in Hydra's ConfigStore as ``medseg_schema``;
``conf/config.yaml`` lists it first in its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING


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


class SynthLayout(str, Enum):
    """Layouts the built-in data generator writes."""

    msd = "msd"
    brats2021 = "brats2021"
    brats2023 = "brats2023"
    dicom = "dicom"
    xray = "xray"


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


@dataclass
class DataConfig:
    """Dataset source, verification, planning and preprocessing.

    Source-specific keys are ignored by the other sources (see ``conf/data/*.yaml``).
    """

    source: SourceKind = SourceKind.msd
    root: str = MISSING
    convention: str = "msd"
    # nifti: channel names, a {case} file pattern per channel and for the label, or a datalist
    channels: list[str] = field(default_factory=list)
    patterns: dict[str, str] = field(default_factory=dict)
    label_pattern: Optional[str] = None
    datalist: Optional[str] = None
    # dicom: SeriesDescription regex per channel or a mapping file; NIfTI labels in label_dir
    series_patterns: dict[str, str] = field(default_factory=dict)
    series_mapping: Optional[str] = None
    label_dir: Optional[str] = "labels"
    slice_gap_tol_mm: float = 0.05
    resample_channels: bool = True
    # xray: masks ({case}.png / .nii.gz) and whether to apply the stored VOI LUT / window
    mask_dir: Optional[str] = "masks"
    voi_lut: bool = False
    # verification
    skip_bad: bool = False
    max_voxels: int = 512 * 512 * 512 * 4
    affine_tol_mm: float = 1e-3
    # planning and preprocessing
    target_spacing: Optional[list[float]] = None
    memory_budget_gb: float = 8.0
    normalization: Normalization = Normalization.zscore_nonzero
    crop_foreground: bool = True
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    workers: int = 2


@dataclass
class ModelConfig:
    """MONAI U-Net with ReLU activations (the activation is not configurable)."""

    spatial_dims: int = 3
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = field(default_factory=lambda: [2, 2, 2])
    num_res_units: int = 1
    norm: Norm = Norm.instance
    dropout: float = 0.0
    deep_supervision: bool = False
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


@dataclass
class TrainConfig:
    """Training loop."""

    max_epochs: int = 100
    iters_per_epoch: int = 50
    max_time_s: Optional[float] = None
    batch_size: int = 2
    patch_size: Optional[list[int]] = None
    fg_oversample: float = 0.5
    target: TargetMode = TargetMode.labels
    loss: LossKind = LossKind.dice_ce
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    focal_gamma: float = 2.0
    optimizer: OptimizerKind = OptimizerKind.adamw
    lr: float = 3e-3
    momentum: float = 0.99
    weight_decay: float = 1e-5
    schedule: Schedule = Schedule.cosine
    warmup_iters: int = 50
    grad_clip: float = 12.0
    precision: Precision = Precision.auto
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    resume: str = "auto"
    keep_states: int = 2
    patience: Optional[int] = None
    fold: Optional[int] = None
    folds: int = 5
    num_workers: int = 0
    prefetch: Optional[int] = None
    threads: Optional[int] = None
    device: Device = Device.auto
    val_every: int = 1
    val_overlap: float = 0.25
    tensorboard: bool = True
    mlflow: bool = False
    mlflow_uri: Optional[str] = None
    mlflow_experiment: str = "medseg"
    progress: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class InferenceConfig:
    """Sliding-window inference (shared by evaluate and predict)."""

    overlap: float = 0.5
    sw_batch_size: int = 2
    tta_flips: list[int] = field(default_factory=list)
    min_component_ml: Optional[float] = None
    threads: Optional[int] = None
    device: Device = Device.auto
    precision: Precision = Precision.fp32
    max_memory_gb: Optional[float] = 4.0
    stitch_dtype: StitchDtype = StitchDtype.float32


@dataclass
class EvaluateConfig:
    """Scoring against reference labels."""

    hd_percentile: float = 95.0
    nsd_tolerance_mm: float = 1.0
    detection_min_ml: float = 0.1
    empty_convention: EmptyKind = EmptyKind.brats
    empty_hd_mm: float = 373.13
    n_figures: int = 5
    predictions: Optional[str] = None
    references: Optional[str] = None
    images: Optional[str] = None
    labels: str = "msd"
    skip_bad: bool = False
    inference: InferenceConfig = field(default_factory=InferenceConfig)


@dataclass
class ExportConfig:
    """Exported artifact."""

    logit_tolerance: float = 1e-3
    min_label_agreement: float = 0.9999
    onnx: bool = True
    opset: int = 17
    int8: bool = False
    bundle: bool = True


@dataclass
class PredictConfig:
    """Batch prediction from an exported artifact."""

    source: PredictSource = PredictSource.files
    pattern: str = "*.nii.gz"
    cases: list[str] = field(default_factory=list)
    ensemble: list[str] = field(default_factory=list)
    skip_existing: bool = True
    backend: str = "torch"
    shard: Optional[str] = None
    dicom_seg: str = "auto"
    inference: InferenceConfig = field(default_factory=InferenceConfig)


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
    name: str = "medseg"
    seed: int = 0
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict)


def choice(value: Any) -> str:
    """The string of a choice-valued key, whether it arrives as an enum (from the typed config) or a
    plain string (from ``plain()`` dicts and tests)."""
    return str(getattr(value, "value", value))


def register_configs() -> None:
    """Store the root schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="medseg_schema", node=MedsegConfig)
