"""The Hydra configs compose, validate and stay consistent with the typed schema."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medseg.cli import check_overrides, compose_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def _compose(overrides):
    return compose_config(overrides)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = _compose([f"experiment={experiment}"])
    assert cfg.name == experiment
    container = OmegaConf.to_container(cfg.model, resolve=True)
    assert len(container["strides"]) == len(container["channels"]) - 1


def test_demo_preset():
    cfg = _compose(["experiment=demo"])
    assert cfg.synth.enabled and cfg.train.max_time_s is not None
    assert list(cfg.data.target_spacing) == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("override,fragment", [
    ("train.max_epoch=3", "Did you mean 'train.max_epochs'?"),
    ("data.sorce=msd", "Did you mean 'data.source'?"),
    ("train.schedule=linear", "expected one of [cosine, poly, constant]"),
    ("train.batch_size=two", "batch_size"),
    ("model=resnet", "Available options in 'model'"),
])
def test_bad_overrides_are_explained(override, fragment):
    message = check_overrides([override])
    assert message is not None and fragment in message
    assert "\n" not in message


def test_good_overrides_pass():
    assert check_overrides(["train.max_epochs=3", "model=unet3d_fast", "experiment=demo"]) is None


DATA_GROUPS = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml"))


@pytest.mark.parametrize("group", DATA_GROUPS)
def test_every_data_source_composes_and_builds_its_source(group, tmp_path):
    from medseg.data.sources import SOURCES
    from medseg.data.sources import source_options

    cfg = _compose([f"data={group}", f"data.root={tmp_path}"])
    kind = cfg.data.source.value
    assert kind == group and kind in SOURCES
    options = source_options(cfg.data)
    assert options["max_voxels"] > 0 and "skip_bad" not in options
    if kind == "dicom":
        import re

        patterns = {c: re.compile(p, re.IGNORECASE) for c, p in cfg.data.series_patterns.items()}
        picks = {c: [d for d in ("AX T2 FLAIR", "T1 SE AX", "T1 AX POST GD", "T2 TSE AX", "T1 MPRAGE C+", "T2*",
                                 "t2_tirm_tra_dark-fluid") if p.search(d)] for c, p in patterns.items()}
        assert picks == {"FLAIR": ["AX T2 FLAIR", "t2_tirm_tra_dark-fluid"], "T1w": ["T1 SE AX"],
                         "t1gd": ["T1 AX POST GD", "T1 MPRAGE C+"], "T2w": ["T2 TSE AX"]}
        # the Hydra group and the DICOM source use one set of hints (the schema's); one channel's
        # override replaces that channel's only
        from medseg.data.sources.dicom import DicomSource

        assert dict(cfg.data.series_patterns) == {c: p.pattern for c, p in DicomSource(tmp_path).patterns.items()}
        cfg = _compose(["data=dicom", f"data.root={tmp_path}", "data.series_patterns.FLAIR=dark"])
        source = DicomSource(tmp_path, cfg.data.channels, cfg.data.series_patterns)
        assert source.patterns["FLAIR"].pattern == "dark" and source.patterns["T2w"].search("T2 TSE AX")
        from medseg.errors import ConfigError

        # the predict stage's own keys, composed as the README writes them
        cfg = _compose(["+predict.series_patterns.FLAIR=dark.?fluid", "predict.series_mapping=map.json"])
        assert dict(cfg.predict.series_patterns) == {"FLAIR": "dark.?fluid"} and cfg.predict.series_mapping == "map.json"
        cfg = _compose(["data=dicom", f"data.root={tmp_path}", "data.series_patterns.FLAIR=''"])
        with pytest.raises(ConfigError, match="series pattern of channel 'FLAIR' is empty: it would match every"):
            DicomSource(tmp_path, cfg.data.channels, cfg.data.series_patterns)
