"""Runs: a config → a trained, cached record; read back, forced, or recomputed when damaged;
the protocol's PGD recorded in the run is what the sources read instead of attacking again."""

import pytest

from clustr_lib import data, protocol, records, runs, sources, studies

TINY = dict(
    width=2,
    ce_epochs=2,
    ce_milestones=[1],
    magnet_epochs=1,
    eval_size=20,
    pgd_restarts=2,
    pgd_steps=[2, 4],
    batch_size=64,
    samples_per_cluster=5,
)


def test_cached_result_is_reused_and_forced_recomputation_agrees(tmp_path):
    d = data.load_images("digits32", train_size=200, test_size=40)
    config = runs.run_config("digits32", "clustr", 0, protocol.settings("digits32", TINY), data=d)
    dirs = dict(results_dir=tmp_path / "r", models_dir=tmp_path / "m", progress=False)
    first = runs.run(config, d, **dirs)
    files = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert len(files) == 2 and any("nominal" in f for f in files)  # the warm start is a run too
    again = runs.run(config, d, **dirs)
    assert again == first  # read back, not recomputed
    forced = runs.run(config, d, force=True, **dirs)
    assert forced.pgd == first.pgd and forced.clean_accuracy == first.clean_accuracy
    assert forced.created >= first.created
    # the record holds the protocol's objectives and rules with every step, robust <= clean,
    # and the stronger rule never leaves more points robust
    assert set(first.pgd) == {"paper", "ce"}
    for entry in first.pgd.values():
        assert set(entry["robust"]) == {"official", "any_iterate"}
        for by_steps in entry["robust"].values():
            assert by_steps["4"] <= by_steps["2"] <= entry["clean"]
    assert first.config["data"] == records.data_identity(d)


def test_a_cross_entropy_run_records_its_pgd_once_under_ce(tmp_path):
    d = data.load_images("digits32", train_size=200, test_size=40)
    config = runs.run_config("digits32", "nominal", 0, protocol.settings("digits32", TINY))
    record = runs.run(
        config, d, results_dir=tmp_path / "r", models_dir=tmp_path / "m", progress=False
    )
    assert list(record.pgd) == ["ce"]  # the paper's objective is −log p_y for this network


def test_a_run_on_a_subset_is_never_returned_for_other_data(tmp_path):
    """Issue 13: the data's identity is in the key: 200 training images are not 150."""
    settings = protocol.settings("digits32", {**TINY, "eval_size": 5, "pgd_steps": [1]})
    dirs = dict(results_dir=tmp_path / "r", models_dir=tmp_path / "m", progress=False)
    small = data.load_images("digits32", train_size=150, test_size=40)
    other = data.load_images("digits32", train_size=200, test_size=40)
    first = runs.run(runs.run_config("digits32", "nominal", 0, settings, data=small), small, **dirs)
    config = runs.run_config("digits32", "nominal", 0, settings, data=other)
    assert records.load_run(config, tmp_path / "r") is None
    assert runs.run(config, other, **dirs).config["data"]["train_size"] == 200
    assert first.config["data"]["train_size"] == 150
    with pytest.raises(ValueError, match="cannot be trained on"):
        runs.run_config("cifar10", "nominal", 0, settings, data=small)


def test_corrupt_result_is_recomputed_with_a_warning(tmp_path):
    d = data.load_images("digits32", train_size=200, test_size=40)
    config = runs.run_config("digits32", "nominal", 0, protocol.settings("digits32", TINY))
    dirs = dict(results_dir=tmp_path / "r", models_dir=tmp_path / "m", progress=False)
    first = runs.run(config, d, **dirs)
    path = records.record_path(tmp_path / "r", config)
    path.write_text(path.read_text()[:50])  # a half-written file
    with pytest.warns(UserWarning, match="recomputing"):
        again = runs.run(config, d, **dirs)
    assert again.pgd == first.pgd


def test_free_at_with_few_epochs_still_learns(tmp_path):
    """Free AT gets ce_epochs / m epochs; its lr milestones must not collapse to epoch 0."""
    d = data.load_images("digits32", train_size=400, test_size=100)
    settings = protocol.settings(
        "digits32",
        {**TINY, "ce_epochs": 8, "ce_milestones": [4, 6], "free_replays": 8, "eval_size": 10},
    )  # one epoch
    config = runs.run_config("digits32", "free_at", 0, settings)
    result = runs.run(
        config, d, results_dir=tmp_path / "r", models_dir=tmp_path / "m", progress=False
    )
    assert result.training["final_train_accuracy"] > 0.3  # chance is 0.1
    assert result.clean_accuracy > 0.3


def test_milestones_scale_with_the_epochs_and_never_reach_zero():
    assert runs.scaled_milestones([30, 60], 90, 90) == [30, 60]
    assert runs.scaled_milestones([30, 60], 11, 90) == [4, 7]
    assert runs.scaled_milestones([1, 2], 1, 90) == [1]


def test_the_protocols_pgd_is_read_from_the_run_record_not_recomputed(tmp_path):
    """A hand-written record with known numbers: the sources read them; any other PGD
    request needs an evaluation (refused here: record_only, and no weights exist)."""
    settings = protocol.settings("digits32", TINY)
    config = runs.run_config("digits32", "clustr", 0, settings)
    pgd = {
        "paper": {
            "clean": 0.9,
            "robust": {"official": {"2": 0.7, "4": 0.6}, "any_iterate": {"2": 0.6, "4": 0.5}},
        },
        "ce": {
            "clean": 0.9,
            "robust": {"official": {"2": 0.5, "4": 0.25}, "any_iterate": {"2": 0.4, "4": 0.2}},
        },
    }
    record = records.RunRecord(config, 0.95, 40, 20, pgd, {"seconds": 1.0}, records.provenance())
    records.save_json(records.record_path(tmp_path, config), record.to_json())
    source = sources.Source(
        "hand-made", "digits32", None, settings, 1, tmp_path, False, None, record_only=True
    )
    rows = studies.pgd_rows(source, "clustr", "ce")
    assert rows[0]["pgd4"] == pytest.approx(25.0) and rows[0]["pgd2"] == pytest.approx(50.0)
    assert rows[0]["clean"] == pytest.approx(90.0)
    assert studies.pgd_rows(source, "clustr", "paper", steps=[4])[0]["pgd4"] == pytest.approx(60.0)
    iterate = studies.pgd_rows(source, "clustr", "ce", rule="any_iterate")[0]
    assert iterate["pgd4"] == pytest.approx(20.0) and iterate["rule"] == "any_iterate"
    assert not source.computed and not source.loaded
    with pytest.raises(LookupError, match="not recorded"):
        studies.pgd_rows(source, "clustr", "ce", eps=16 / 255)
    with pytest.raises(LookupError, match="not recorded"):
        studies.pgd_rows(source, "clustr", "ce", rule="any_restart")


def test_the_training_precision_keys_a_run_only_when_it_is_not_fp32(tmp_path):
    """Issue 11: the default ``"auto"`` trains a CPU run in fp32 under the keys recorded
    before the setting existed; another precision is keyed apart and recorded."""
    d = data.load_images("digits32", train_size=200, test_size=40)
    settings = {**TINY, "eval_size": 5, "pgd_steps": [1]}
    auto = runs.run_config("digits32", "nominal", 0, protocol.settings("digits32", settings), d)
    fp32 = runs.run_config(
        "digits32",
        "nominal",
        0,
        protocol.settings("digits32", {**settings, "precision": "fp32"}),
        d,
    )
    assert "precision" not in auto and auto == fp32
    bf16 = runs.run_config(
        "digits32",
        "nominal",
        0,
        protocol.settings("digits32", {**settings, "precision": "bf16"}),
        d,
    )
    assert bf16["precision"] == "bf16"
    assert records.config_hash(bf16) != records.config_hash(auto)
    assert protocol.training_precision("auto", "cuda:0") in ("bf16", "fp16")
    assert protocol.training_precision("auto", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        protocol.settings("digits32", {"precision": "fp8"})
    record = runs.run(
        bf16, d, results_dir=tmp_path / "r", models_dir=tmp_path / "m", progress=False
    )
    assert record.training["precision"] == "bf16"
    assert 0.0 <= record.clean_accuracy <= 1.0
