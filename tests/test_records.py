"""Results as data: atomic JSON writes, provenance, one key scheme, the typed run record."""

import json
import os
import warnings

import numpy as np
import pytest
import torch

from clustr_lib import records


def test_save_json_converts_arrays_and_is_atomic(tmp_path):
    path = tmp_path / "r.json"
    records.save_json(path, {"a": np.float64(1.5), "b": torch.tensor([1, 2]), "c": np.arange(3)})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [1, 2], "c": [0, 1, 2]}
    with pytest.raises(TypeError):
        records.save_json(path, {"bad": object()})
    assert json.loads(path.read_text())["a"] == 1.5  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_provenance_names_commit_device_and_versions():
    prov = records.provenance(wall_seconds=1.0)
    assert prov["git_commit"] and prov["device"] == records.device_name()
    if not torch.cuda.is_available():
        assert prov["device"].startswith("CPU")
    assert {"torch", "numpy", "clustr_lib"} <= set(prov["versions"])
    assert prov["wall_seconds"] == 1.0


def test_the_hash_ignores_key_order_and_sees_every_value():
    a = {"dataset": "d", "method": "m", "seed": 0, "x": [1, 2], "y": 0.5}
    b = dict(reversed(list(a.items())))
    assert records.config_hash(a) == records.config_hash(b)
    assert records.config_hash(a) != records.config_hash({**a, "y": 0.25})
    assert records.config_hash({**a, "x": np.array([1, 2])}) == records.config_hash(a)


def test_runs_and_their_evaluations_share_one_naming_scheme(tmp_path):
    config = {"dataset": "digits32", "method": "clustr", "seed": 2, "width": 4}
    run = records.record_path(tmp_path, config)
    key = {"run": records.config_hash(config), "evaluation": "pgd", "params": {"eps": 0.1}}
    evaluation = records.record_path(tmp_path / "evaluations", config, kind="pgd", key=key)
    assert run.name == f"digits32-clustr-s2-{records.config_hash(config)}.json"
    assert evaluation.name == f"digits32-clustr-s2-pgd-{records.config_hash(key)}.json"
    assert records.record_path(tmp_path, config, suffix=".pt").suffix == ".pt"


RECORD = {  # a run record as runs.run writes it
    "config": {
        "dataset": "digits32",
        "method": "clustr_qtrades",
        "seed": 1,
        "pgd_steps": [20, 100],
        "pgd_objectives": ["paper", "ce"],
    },
    "format": 2,
    "metrics": {
        "clean_accuracy": 0.99,
        "test_size": 450,
        "eval_size": 80,
        "pgd": {
            "paper": {
                "clean": 0.9875,
                "robust": {
                    "official": {"20": 0.7, "100": 0.65},
                    "any_iterate": {"20": 0.6, "100": 0.55},
                },
            },
            "ce": {
                "clean": 0.9875,
                "robust": {
                    "official": {"20": 0.5, "100": 0.45},
                    "any_iterate": {"20": 0.4, "100": 0.35},
                },
            },
        },
    },
    "training": {"seconds": 49.0},
    "attack_seconds": {"paper": 33.0},
    "provenance": {"created": "2026-11-22T02:09:57+00:00", "device": "CPU"},
}


def test_the_typed_run_record_reads_each_objective_rule_and_step():
    record = records.RunRecord.from_json(RECORD)
    assert record.pgd_accuracy("ce", 100, "any_iterate") == 0.35
    assert record.pgd_accuracy("paper", 20, "official") == 0.7
    assert record.seed == 1 and record.method == "clustr_qtrades"
    assert record.created.startswith("2026-11-22") and record.clean_accuracy == 0.99
    again = records.RunRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record  # the format round-trips


def test_the_data_identity_tells_subsets_and_files_apart():
    from clustr_lib import data

    full = data.load_images("digits32")
    a = data.load_images("digits32", train_size=200, test_size=50, seed=0)
    b = data.load_images("digits32", train_size=200, test_size=50, seed=1)
    ids = [records.data_identity(d) for d in (full, a, b)]
    assert ids[0]["train_size"] == 1347 and ids[0]["test_size"] == 450
    assert ids[1]["train_size"] == 200 and ids[1]["dataset"] == "digits32"
    assert len({i["sha256"] for i in ids}) == 3  # same sizes, other subset seed: other data
    assert records.data_identity(data.load_images("digits32")) == ids[0]  # deterministic
    b.x_train[0, 0, 0, 0] += 1  # one pixel of one file changed (a fresh object: not cached)
    c = data.ImageData("digits32", b.x_train, b.y_train, b.x_test, b.y_test)
    assert records.data_identity(c)["sha256"] != ids[2]["sha256"]


def test_a_damaged_run_record_is_reported_and_treated_as_missing(tmp_path):
    config = RECORD["config"]
    path = records.record_path(tmp_path, config)
    assert records.load_run(config, tmp_path) is None  # nothing recorded: no warning
    records.save_json(path, RECORD)
    assert records.load_run(config, tmp_path).clean_accuracy == 0.99
    path.write_text(path.read_text()[:80])
    with pytest.warns(UserWarning, match="recomputing"):
        assert records.load_run(config, tmp_path) is None
    records.save_json(path, {**RECORD, "metrics": {"clean_accuracy": 1.0}})
    with pytest.warns(UserWarning, match=path.name):
        assert records.load_run(config, tmp_path) is None
    other = {**config, "seed": 1, "width": 8}  # a file under this name for another config
    records.save_json(records.record_path(tmp_path, other), RECORD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert records.load_run(other, tmp_path) is None
    assert "different config" in str(caught[0].message)


def test_records_are_readable_files_not_private_temporaries(tmp_path):
    import stat

    path = records.save_json(tmp_path / "r.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
