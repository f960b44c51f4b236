"""The plan of a build (issue 16): every run and evaluation the chapters need, recorded or not,
listed without training, attacking, downloading or writing anything."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clustr_lib import book, evaluations, plan, protocol, records, runs, sources, studies

ROOT = Path(__file__).resolve().parent.parent

TINY = dict(
    width=2,
    ce_epochs=1,
    ce_milestones=[1],
    magnet_epochs=1,
    eval_size=8,
    pgd_restarts=1,
    pgd_steps=[2],
    samples_per_cluster=5,
)


def tiny_source(tmp_path):
    """Two seeds of tiny digits32 runs standing in for CIFAR-10, in ``tmp_path/results``."""
    return sources.paper_source(
        "cifar10",
        stand_in="digits32",
        train_size=200,
        test_size=40,
        overrides=TINY,
        seeds=2,
        results_dir=tmp_path / "results",
    )


def forbid(*args, **kwargs):
    raise AssertionError("a plan computed something")


def test_a_plan_lists_runs_and_evaluations_and_computes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "run", forbid)
    monkeypatch.setattr(runs, "train_run", forbid)
    for name in list(evaluations.EVALUATIONS):
        monkeypatch.setitem(evaluations.EVALUATIONS, name, forbid)
    src = tiny_source(tmp_path)
    planner = plan.Planner()
    src.planner = planner
    frames = studies.chapter_measurements(
        "07_eps_ablation",
        [src],
        {"eps_values": [2, 8, 16], "objectives": ["paper", "ce"], "calibration_eps": []},
    )
    assert len(frames["eps"]) == 0  # nothing recorded, nothing measured
    tasks = list(planner.tasks.values())
    ran = [t for t in tasks if t.kind == "run"]
    evaluated = [t for t in tasks if t.kind == "evaluation"]
    # ClusTR + QTRADES on 2 seeds; at 2 and 16/255 x 2 objectives x 2 seeds (8/255 is the
    # protocol's own PGD, recorded with the run)
    assert sorted((t.method, t.seed) for t in ran) == [("clustr_qtrades", 0), ("clustr_qtrades", 1)]
    assert len(evaluated) == 2 * 2 * 2
    eps = sorted({round(t.params["eps"] * 255) for t in evaluated})
    assert eps == [2, 16] and not any(t.recorded for t in tasks)
    for t in ran:  # each waits for its seed's warm start
        config = runs.run_config("digits32", "clustr_qtrades", t.seed, src.settings, src.data)
        assert t.run == records.config_hash(config)
        assert t.after == records.config_hash({**config, "method": "nominal"})
    assert all(t.after in {r.run for r in ran} for t in evaluated)
    assert not (tmp_path / "results").exists()  # nothing written


def test_the_recorded_study_plans_as_recorded_with_its_measured_time():
    """Every second of training in the study's folders counted once — a ClusTR run's warm
    start is its nominal run's, also where a variant's nominal run is no task of the plan —
    plus every planned run's attacks."""
    found = plan.make_plan("smoke", ["06_digits32_study"])
    shown = sources.digits32_studies(book.ROOT, ours=True)  # the study and the two beside it
    files = [
        json.loads(records.record_path(s.results_dir, c).read_text())
        for s in shown
        for c in s.configs()
    ]
    every_run = [
        json.loads(path.read_text()) for s in shown for path in Path(s.results_dir).glob("*.json")
    ]
    assert len(every_run) > len(files)  # the logprob variant's own nominal runs
    training = sum(
        r["training"]["seconds"] - r["training"]["stages"].get("warm_start", 0) for r in every_run
    )
    expected = training + sum(sum(f["attack_seconds"].values()) for f in files)
    study, logprob, ours = shown
    assert len(study.configs()) == len(ours.configs()) == len(protocol.METHODS) * study.seeds
    assert len(logprob.configs()) == logprob.seeds  # ClusTR + QTRADES only
    assert len(found.tasks) == len(files)
    assert all(t.recorded and t.estimate == "recorded" for t in found.tasks)
    assert found.totals()["recorded_hours"] == pytest.approx(expected / 3600)
    assert found.totals()["to_do"] == 0


def test_a_paper_dataset_not_on_disk_is_planned_without_downloading(monkeypatch, tmp_path):
    monkeypatch.setenv("CLUSTR_DATA", str(tmp_path))  # an empty data folder
    found = plan.make_plan("full", ["03_cifar10"])
    assert len(found.tasks) == len(sources.paper_source("cifar10", download=False).methods)
    assert all(t.run is None and not t.recorded for t in found.tasks)
    assert not any(tmp_path.iterdir())  # nothing downloaded
    assert "needs the data" in found.summary()


def test_the_command_line_prints_the_plan_and_refuses_bad_requests():
    cmd = [sys.executable, "-m", "clustr_lib", "plan"]
    out = subprocess.run(
        [*cmd, "--only", "06_digits32_study", "--json"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    parsed = json.loads(out.stdout)
    assert parsed["totals"]["runs"] == len(parsed["tasks"]) and parsed["profile"] == "smoke"
    bad = subprocess.run([*cmd, "--profile", "nope"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "unknown profile 'nope'" in bad.stderr


def task(kind, run, seconds, after=None, evaluation=None, shard=None):
    return plan.Task(
        kind, "s", "d", "m", 0, run, evaluation, None, after, seconds=seconds, shard=shard
    )


def test_a_schedule_of_independent_tasks_fills_every_device():
    tasks = [task("run", f"r{i}", 10.0) for i in range(6)]
    assert plan.schedule(tasks, 1)["wall_seconds"] == 60
    assert plan.schedule(tasks, 3)["wall_seconds"] == 20
    assert plan.schedule(tasks, 8)["wall_seconds"] == 10
    with pytest.raises(ValueError, match="workers"):
        plan.schedule(tasks, 0)


def test_a_schedule_waits_for_warm_starts_runs_and_shards():
    tasks = [
        task("run", "nominal", 30.0),
        task("run", "clustr", 20.0, after="nominal"),
        task("run", "qtrades", 20.0, after="nominal"),
        task("shard", "clustr", 4.0, after="clustr", evaluation="pgd", shard=0),
        task("shard", "clustr", 4.0, after="clustr", evaluation="pgd", shard=1),
        task("evaluation", "clustr", 1.0, after="clustr", evaluation="pgd"),
        task("run", "done", 99.0),
    ]
    tasks[-1].recorded = True  # a recorded task costs nothing
    two = plan.schedule(tasks, 2)
    assert two["critical_path_seconds"] == 30 + 20 + 4 + 1
    assert two["wall_seconds"] == 55 and two["device_seconds"] == 79
    assert plan.schedule(tasks, 1)["wall_seconds"] == 79


def test_a_run_whose_data_is_not_on_disk_holds_back_no_other_task():
    tasks = [task("run", None, 100.0), task("run", "a", 10.0), task("run", "b", 10.0)]
    assert plan.schedule(tasks, 3)["wall_seconds"] == 100  # not 110: nothing waits for it


def test_a_schedule_lies_between_the_lower_bounds_and_grahams_bound(rng):
    for _ in range(20):
        n = int(rng.integers(2, 30))
        tasks = [task("run", f"r{i}", float(rng.uniform(1, 10))) for i in range(n)]
        for i in range(1, n):  # a random forest of waits on earlier runs
            if rng.uniform() < 0.5:
                tasks[i].after = f"r{int(rng.integers(0, i))}"
        for workers in (1, 2, 4):
            out = plan.schedule(tasks, workers)
            path, work = out["critical_path_seconds"], out["device_seconds"]
            # no schedule beats either bound; a list schedule that never idles a device
            # while a task is ready is within Graham's bound of them
            graham = work / workers + (1 - 1 / workers) * path
            assert max(path, work / workers) - 1e-9 <= out["wall_seconds"] <= graham + 1e-9
        assert plan.schedule(tasks, 1)["wall_seconds"] == pytest.approx(out["device_seconds"])


def recorded_seconds(results_dir) -> float:
    """The device seconds written in a results folder's records, read straight from the JSON:
    a run's training and attacks, an evaluation's wall time."""
    total = 0.0
    for path in Path(results_dir).rglob("*.json"):
        record = json.loads(path.read_text())
        if "training" in record:
            total += record["training"]["seconds"] + sum(record["attack_seconds"].values())
        else:
            total += record["provenance"]["wall_seconds"]
    return total


def test_a_study_is_read_as_far_as_it_is_recorded_and_nothing_is_computed(tmp_path, monkeypatch):
    """A chapter of a study still being recorded shows what has finished (issue 14)."""
    src = tiny_source(tmp_path)
    src.only_methods, src.paper_dataset = ["nominal"], None
    params = {"objectives": ["ce"], "eval_size": 8, "alpha": None}
    one = dataclasses.replace(src, seeds=1)  # seed 0 is recorded, with one evaluation
    one.evaluate("nominal", "gradient_norms", params)
    monkeypatch.setattr(runs, "run", forbid)
    monkeypatch.setattr(runs, "train_run", forbid)
    for name in list(evaluations.EVALUATIONS):
        monkeypatch.setitem(evaluations.EVALUATIONS, name, forbid)

    def measure(srcs):
        (s,) = srcs
        return [e["seed"] for e in s.evaluate("nominal", "gradient_norms", params)], s.runs()

    (seeds, records), (read,), progress = plan.recorded_only([src], measure)
    assert seeds == [0] and [r.seed for r in records] == [0]
    row = progress.loc[src.label].to_dict()
    seed_0 = recorded_seconds(src.results_dir) / 3600
    assert seed_0 > 0 and row.pop("hours recorded") == pytest.approx(seed_0)
    assert row.pop("hours to go (estimate)") == pytest.approx(seed_0)  # seed 1: the same tasks
    assert row == {
        "runs recorded": 1,
        "runs needed": 2,
        "evaluations recorded": 1,
        "evaluations needed": 2,
        "tasks untimed": 0,
    }
    assert read.train_devices and read.eval_devices and len(read.loaded) == 1
    assert src.planner is None  # the sources given are left as they were


def test_a_missing_task_is_timed_as_the_same_task_at_the_seeds_recorded():
    def at(seed, seconds=None, evaluation="pgd", eps=0.1):
        t = plan.Task("evaluation", "s", "d", "clustr", seed, f"run{seed}", evaluation,
                      {"eps": eps}, recorded=seconds is not None, seconds=seconds)  # fmt: skip
        return t

    tasks = [at(0, 10.0), at(1, 20.0), at(2), at(2, eps=0.2), at(0, 5.0, "autoattack")]
    found = plan.seed_estimates(tasks)
    assert found == {at(2).key: 15.0, at(2, eps=0.2).key: None}  # no seed has eps 0.2 yet
