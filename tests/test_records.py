"""Results as data: atomic JSON writes, provenance, one key scheme, the typed run record."""

import json
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


FIRST_FORMAT = {  # a run as the digits32 study recorded it (flat metric keys)
    "config": {
        "dataset": "digits32",
        "method": "clustr_qtrades",
        "seed": 1,
        "pgd_steps": [20, 100],
        "pgd_objectives": ["paper", "ce"],
    },
    "metrics": {
        "clean_accuracy": 0.99,
        "test_size": 450,
        "eval_size": 80,
        "pgd20_paper": 0.65,
        "pgd100_paper": 0.6125,
        "clean_accuracy_eval_paper": 0.9875,
        "pgd20_ce": 0.5875,
        "pgd100_ce": 0.575,
        "clean_accuracy_eval_ce": 0.9875,
    },
    "training": {"seconds": 49.0},
    "attack_seconds": {"paper": 33.0},
    "provenance": {"created": "2026-11-22T02:09:57+00:00", "device": "CPU"},
}


def test_a_run_recorded_in_the_first_format_reads_into_the_typed_record():
    record = records.RunRecord.from_json(FIRST_FORMAT)
    assert record.pgd == {
        "paper": {"clean": 0.9875, "robust": {"20": 0.65, "100": 0.6125}},
        "ce": {"clean": 0.9875, "robust": {"20": 0.5875, "100": 0.575}},
    }
    assert record.pgd_accuracy("ce", 100) == 0.575 and record.seed == 1
    assert record.method == "clustr_qtrades" and record.created.startswith("2026-11-22")
    again = records.RunRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record  # the current format round-trips


def test_a_damaged_run_record_is_reported_and_treated_as_missing(tmp_path):
    config = FIRST_FORMAT["config"]
    path = records.record_path(tmp_path, config)
    assert records.load_run(config, tmp_path) is None  # nothing recorded: no warning
    records.save_json(path, FIRST_FORMAT)
    assert records.load_run(config, tmp_path).clean_accuracy == 0.99
    path.write_text(path.read_text()[:80])
    with pytest.warns(UserWarning, match="recomputing"):
        assert records.load_run(config, tmp_path) is None
    records.save_json(path, {**FIRST_FORMAT, "metrics": {"clean_accuracy": 1.0}})
    with pytest.warns(UserWarning, match=path.name):
        assert records.load_run(config, tmp_path) is None
    other = {**config, "seed": 1, "width": 8}  # a file under this name for another config
    records.save_json(records.record_path(tmp_path, other), FIRST_FORMAT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert records.load_run(other, tmp_path) is None
    assert "different config" in str(caught[0].message)
