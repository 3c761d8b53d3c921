"""``PreparedDataset``: the one reader and writer of a prepare folder's JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.config import DataConfig, EvalSplit, MedsegConfig, ModelConfig, PathsConfig, TrainConfig
from medseg.data.labels import label_spec
from medseg.data.preprocess import PreprocessSpec
from medseg.data.prepared import PreparedDataset
from medseg.data.sources import MSDSource
from medseg.errors import DataError


def _entry(name: str) -> dict:
    return {"name": name, "image": f"/cache/{name}/image.npy", "label": f"/cache/{name}/label.npy",
            "source_images": [f"/data/{name}.nii.gz"], "source_label": None, "geometry": {}}


def _plan(root: Path, options: bool = True) -> dict:
    spec = PreprocessSpec(channels=("FLAIR", "T1w"), target_spacing=(1.0, 1.0, 2.0))
    source = {"kind": "msd", "root": str(root), "convention": "msd"}
    if options:
        source["options"] = {"convention": "msd", "max_voxels": 10**9}
    return {"target_spacing": [1.0, 1.0, 2.0], "patch_size": [32, 32, 16], "preprocessing": spec.to_json(),
            "labels": label_spec("msd").to_json(), "source": source, "cache": "/cache"}


def _dataset(folder: Path, root: Path, test: list[str] = ("c3",)) -> PreparedDataset:
    datalist = {"train": [_entry("c1"), _entry("c2")], "validation": [_entry("c4")],
                "test": [_entry(n) for n in test], "unlabelled": []}
    return PreparedDataset(folder, datalist, _plan(root), {"n_cases": 4})


def test_write_read_round_trip(tmp_path):
    written = _dataset(tmp_path / "prep", tmp_path / "data").write()
    assert {p.name for p in (tmp_path / "prep").iterdir()} == {"datalist.json", "plan.json", "fingerprint.json"}
    back = PreparedDataset.read(tmp_path / "prep")
    assert back == written
    assert back.channels == ("FLAIR", "T1w")
    assert back.preprocessing == PreprocessSpec(channels=("FLAIR", "T1w"), target_spacing=(1.0, 1.0, 2.0))
    assert back.labels == label_spec("msd")
    assert back.patch_size == [32, 32, 16]
    assert back.counts == {"train": 2, "validation": 1, "test": 1, "unlabelled": 0}
    assert back.fingerprint == {"n_cases": 4}
    assert [e["name"] for e in back.split("train")] == ["c1", "c2"]
    assert len(back.sha256()) == 64


def test_fingerprint_is_optional(tmp_path):
    PreparedDataset(tmp_path, {"train": [_entry("c1")]}, _plan(tmp_path)).write()
    assert not (tmp_path / "fingerprint.json").exists()
    assert PreparedDataset.read(tmp_path).fingerprint is None
    with pytest.raises(DataError, match="fingerprint.json"):
        PreparedDataset.read(tmp_path).sha256()


@pytest.mark.parametrize("missing", ["datalist.json", "plan.json"])
def test_missing_file_error_names_the_file(tmp_path, missing):
    _dataset(tmp_path, tmp_path).write()
    (tmp_path / missing).unlink()
    with pytest.raises(DataError) as e:
        PreparedDataset.read(tmp_path)
    assert e.value.path == tmp_path / missing
    assert "not found" in str(e.value) and "paths.prepared" in str(e.value)


@pytest.mark.parametrize("name, text", [("datalist.json", "{broken"), ("datalist.json", "[1, 2]"),
                                        ("datalist.json", '{"train": 3}'), ("plan.json", '{"patch_size": [8]}')])
def test_invalid_file_error_names_the_file(tmp_path, name, text):
    _dataset(tmp_path, tmp_path).write()
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError) as e:
        PreparedDataset.read(tmp_path)
    assert e.value.path == tmp_path / name


def test_empty_split_error_names_the_split_and_the_key(tmp_path):
    prepared = _dataset(tmp_path, tmp_path, test=[])
    with pytest.raises(DataError) as e:
        prepared.split("test")
    assert e.value.path == tmp_path / "datalist.json"
    assert "the test split is empty" in str(e.value) and "evaluate.split=validation" in str(e.value)
    assert [x["name"] for x in prepared.split(EvalSplit.validation)] == ["c4"]  # enums work too
    with pytest.raises(DataError, match="the unlabelled split is empty"):
        prepared.split("unlabelled")
    with pytest.raises(DataError, match="no split named 'tset'"):
        prepared.split("tset")


@pytest.mark.parametrize("options", [True, False])  # plans written before options were recorded
def test_source_is_rebuilt_from_the_plan(tiny_dataset, tmp_path, options):
    prepared = PreparedDataset(tmp_path, {"train": []}, _plan(tiny_dataset, options))
    source = prepared.source()
    assert isinstance(source, MSDSource) and Path(source.root) == tiny_dataset
    names = [r.name for r in source.cases()][:2]
    refs = prepared.refs(names)
    assert list(refs) == names and all(ref.name == n and src is refs[names[0]][0] for n, (src, ref) in refs.items())


def test_refs_of_unknown_names_name_the_dataset(tiny_dataset, tmp_path):
    prepared = PreparedDataset(tmp_path, {"train": []}, _plan(tiny_dataset))
    with pytest.raises(DataError) as e:
        prepared.refs(["no_such_case"])
    assert e.value.path == tiny_dataset and "no_such_case" in str(e.value)


def test_prepare_with_the_typed_config_writes_what_read_returns(tiny_dataset, tmp_path):
    from medseg.stages.prepare import prepare

    cfg = MedsegConfig(paths=PathsConfig(cache_dir=str(tmp_path / "cache")),
                       data=DataConfig(root=str(tiny_dataset), target_spacing=[4.0, 4.0, 4.0], workers=1),
                       model=ModelConfig(channels=[8, 16, 32], strides=[2, 2], num_res_units=0),
                       train=TrainConfig(patch_size=[32, 32, 32]))
    prepared = prepare(cfg, tmp_path / "out")
    assert prepared.report["reused_from_cache"] == 0 and prepared.report["quarantined"] == []
    back = PreparedDataset.read(tmp_path / "out")
    assert back == prepared and back.report is None
    assert back.plan["source"]["kind"] == "msd" and back.plan["source"]["options"]["convention"] == "msd"
    json.dumps(back.plan)  # plain JSON: no enums leaked in
    summary = prepared.summary()
    assert summary["cases"] == 6 and summary["split"]["test"] == 2 and summary["patch_size"] == [32, 32, 32]
    again = prepare(cfg, tmp_path / "out2")
    assert again.report["reused_from_cache"] == 6 and again.datalist == prepared.datalist
