"""Executing a plan (issue 16): here one task after another, or as tasks on a real local Ray
instance; both record each run once, with the same weights and metrics."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from clustr_lib import evaluations, executors, files, plan, recording, sources, studies
from clustr_lib.train import Checkpoint

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
    free_replays=1,
    trades_steps=1,
)


def tiny_plan(folder, train_size=200, **overrides) -> plan.Plan:
    """Chapter 3's runs and chapter 7's evaluations of them on a tiny digits32 stand-in."""
    scale = dict(
        stand_in="digits32",
        train_size=train_size,
        test_size=40,
        overrides={**TINY, **overrides},
        results_dir=str(folder / "results"),
    )
    parameters = {
        "03_cifar10": {"scale": scale, "repo_root": "."},
        "07_eps_ablation": {
            "scale": scale,
            "repo_root": ".",
            "study": False,
            "eps_values": [2, 8],
            "objectives": ["ce"],
            "calibration_eps": [],
        },
    }
    planner = plan.Planner()
    for chapter, params in parameters.items():
        planner.chapter = chapter
        found = plan.chapter_sources(chapter, params)
        for source in found:
            source.planner = planner
        studies.chapter_measurements(chapter, found, params)
    return plan.Plan(
        "test", list(parameters), list(planner.tasks.values()), parameters, str(folder)
    )


def recorded(folder, results="results") -> dict:
    """Run → (a SHA-256 of its trained tensors, its metrics) for every run recorded in
    ``folder / results`` (the weights file's own hash also covers its wall-clock training
    time)."""
    out = {}
    for path in sorted((folder / results).glob("*.json")):
        record = json.loads(path.read_text())
        state = torch.load(folder / results / "models" / f"{path.stem}.pt", weights_only=True)
        digest = hashlib.sha256()
        for name, tensor in sorted(state["model"].items()):
            digest.update(name.encode() + tensor.cpu().contiguous().numpy().tobytes())
        out[path.stem] = (digest.hexdigest(), record["metrics"])
    return out


def evaluations_of(folder, results="results") -> dict:
    """Evaluation (its run and parameters) → metrics; the file's hash covers the run's
    creation time, so it is left out."""
    out = {}
    for path in sorted((folder / results / "evaluations").glob("*.json")):
        record = json.loads(path.read_text())
        what = (path.name.rsplit("-", 1)[0], json.dumps(record["key"]["params"], sort_keys=True))
        out[what] = record["metrics"]
    return out


def test_bad_requests_are_refused_before_any_task(tmp_path):
    found = tiny_plan(tmp_path)
    with pytest.raises(executors.ExecutionError, match="unknown executor 'slurm'"):
        executors.execute(found, "slurm")
    with pytest.raises(executors.ExecutionError, match="--address needs --executor ray"):
        executors.execute(found, "local", address="127.0.0.1:6379")
    dataless = plan.Plan("test", [], [plan.Task("run", "cifar10", "cifar10", "nominal", 0, None)])
    with pytest.raises(executors.ExecutionError, match="data not on disk.*cifar10"):
        executors.execute(dataless, "local")
    for address, problem in (("nowhere", "host:port"), ("127.0.0.1:9", "cannot reach")):
        with pytest.raises(executors.ExecutionError, match=problem):
            executors.execute(found, "ray", address=address)
    assert not (tmp_path / "results").exists()


def test_local_execution_records_every_planned_task_once(tmp_path):
    found = tiny_plan(tmp_path)
    runs = [t for t in found.tasks if t.kind == "run"]
    evaluations = [t for t in found.tasks if t.kind == "evaluation"]
    assert len(runs) == 7 and len(evaluations) == 1  # 2/255 on ClusTR + QTRADES, ce
    executors.execute(found, "local", threads=1, progress=False)
    assert len(recorded(tmp_path)) == 7 and len(evaluations_of(tmp_path)) == 1
    again = tiny_plan(tmp_path)
    assert all(t.recorded for t in again.tasks)  # the plan now finds everything recorded
    assert executors.execute(again, "local") == []  # and nothing is done twice


SHARDED = dict(eval_size=40, shard_size=16)  # 40 attacked points in shards of 16, 16 and 8


def test_a_large_evaluation_is_planned_as_shards_that_its_record_merges(tmp_path, monkeypatch):
    found = tiny_plan(tmp_path, **SHARDED)
    shards = [t for t in found.tasks if t.kind == "shard"]
    (evaluation,) = [t for t in found.tasks if t.kind == "evaluation"]
    assert [t.shard for t in shards] == [0, 1, 2] and evaluation.shards == 3
    assert all(t.after == evaluation.run == evaluation.after for t in shards)
    assert "(and 3 shards of large ones)" in found.summary()
    executors.execute(found, "local", threads=1, progress=False)
    (merged,) = evaluations_of(tmp_path).values()
    with plan.working_directory(tmp_path):
        chapter = plan.chapter_sources("07_eps_ablation", found.parameters["07_eps_ablation"])
        (source,) = [s for s in chapter if s.label == evaluation.source]
        (record,) = source.runs(evaluation.method)
    assert merged == evaluations.pgd_accuracy(
        source.model(record), source.data, **evaluation.params
    )
    # shards already recorded are read, never recomputed: drop the merged record, plan again
    (path,) = (tmp_path / "results" / "evaluations").glob("*.json")
    path.unlink()
    again = tiny_plan(tmp_path, **SHARDED)
    assert [t.kind for t in again.tasks if not t.recorded] == ["evaluation"]
    monkeypatch.setitem(evaluations.SHARDED, "pgd", lambda *a, **k: pytest.fail("recomputed"))
    executors.execute(again, "local", threads=1, progress=False)
    assert list(evaluations_of(tmp_path).values()) == [merged]
    # a shard record whose per-point results are of another length is damaged: redone
    path.unlink()
    first = sorted((tmp_path / "results" / "evaluations" / "shards").glob("*shard0-*.json"))[0]
    damaged = json.loads(first.read_text())
    damaged["points"]["clean"] = damaged["points"]["clean"][:3]
    first.write_text(json.dumps(damaged))
    with pytest.warns(UserWarning, match=first.name):
        redo = tiny_plan(tmp_path, **SHARDED)
    assert [(t.kind, t.shard) for t in redo.tasks if not t.recorded] == [
        ("shard", 0),
        ("evaluation", None),
    ]


@pytest.mark.slow
def test_paper_scale_tasks_on_a_ray_cluster_without_gpus_are_refused(tmp_path):
    ray = pytest.importorskip("ray")
    found = tiny_plan(tmp_path)
    for task in found.tasks:
        task.at_scale = True  # as if the paper's protocol on CIFAR-10
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(executors.ExecutionError, match="need GPUs.*has none"):
            executors.execute(found, "ray", progress=False)
    finally:
        ray.shutdown()
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_ray_execution_matches_local_execution(tmp_path):
    ray = pytest.importorskip("ray")
    local, distributed = tmp_path / "local", tmp_path / "ray"
    local.mkdir(), distributed.mkdir()
    executors.execute(tiny_plan(local, **SHARDED), "local", threads=1, progress=False)
    found = tiny_plan(distributed, **SHARDED)
    assert [t.shard for t in found.tasks if t.kind == "shard"] == [0, 1, 2]
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = executors.execute(found, "ray", threads=1, progress=False)
    finally:
        ray.shutdown()
    assert len(results) == 7 + 3 + 1  # runs, the evaluation's shards, the evaluation
    assert recorded(distributed) == recorded(local)  # same weights, same metrics, once each
    assert evaluations_of(distributed) == evaluations_of(local)
    assert len(list((distributed / "results" / "evaluations" / "shards").glob("*.json"))) == 3
    # the evaluation merged from shards made on two workers is the one this process makes
    torch.set_num_threads(1)
    (task,) = [t for t in found.tasks if t.kind == "evaluation"]
    with plan.working_directory(distributed):
        chapter = plan.chapter_sources("07_eps_ablation", found.parameters["07_eps_ablation"])
        (source,) = [s for s in chapter if s.label == task.source]
        (record,) = source.runs(task.method)
    here = evaluations.pgd_accuracy(source.model(record), source.data, **task.params)
    (merged,) = evaluations_of(distributed).values()
    assert merged == here


@pytest.mark.slow
def test_a_ray_worker_killed_mid_run_is_retried_and_resumes_from_its_checkpoint(tmp_path):
    ray = pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    local, distributed = tmp_path / "local", tmp_path / "ray"
    local.mkdir(), distributed.mkdir()

    def nominal_only(folder):
        found = tiny_plan(folder, train_size=1000, width=4, ce_epochs=30, ce_milestones=[20])
        found.tasks = [t for t in found.tasks if t.method == "nominal"]
        return found

    executors.execute(nominal_only(local), "local", threads=1, progress=False)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    outcome = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            results=executors.execute(nominal_only(distributed), "ray", threads=1, progress=False)
        )
    )
    try:
        worker.start()
        models = distributed / "results" / "models"
        deadline, killed = time.time() + 240, []
        while time.time() < deadline and not killed:
            ckpt = next(models.glob(".*.ckpt"), None) if models.exists() else None
            sidecar = ckpt and ckpt.with_name(ckpt.name + ".sha256")
            if sidecar and sidecar.exists() and Checkpoint(ckpt).load()["epoch"] >= 2:
                for proc in psutil.process_iter(["cmdline"]):
                    if (proc.info["cmdline"] or [""])[0].startswith("ray::do"):
                        proc.kill()  # SIGKILL of the worker running the task
                        killed.append(proc.pid)
            time.sleep(0.1)
        worker.join(timeout=300)
    finally:
        ray.shutdown()
    assert killed, "no worker was caught mid-run"
    assert len(outcome["results"]) == 1  # retried on another worker, completed
    assert recorded(distributed) == recorded(local)  # resumed to the same weights


def test_the_command_line_refuses_a_bad_executor_or_address_before_running():
    cmd = [sys.executable, "-m", "clustr_lib", "run", "--only", "06_digits32_study"]
    bad = subprocess.run([*cmd, "--executor", "slurm"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'slurm'" in bad.stderr
    stray = subprocess.run([*cmd, "--address", "auto"], capture_output=True, text=True)
    assert stray.returncode == 1 and "--address needs --executor ray" in stray.stderr
    unreachable = [*cmd, "--executor", "ray", "--address", "127.0.0.1:9"]
    gone = subprocess.run(unreachable, capture_output=True, text=True)
    assert gone.returncode == 1 and "cannot reach a Ray cluster" in gone.stderr


def test_a_cluster_run_on_a_filesystem_with_weak_locks_is_refused(tmp_path, monkeypatch):
    found = tiny_plan(tmp_path)
    monkeypatch.setattr(executors, "weak_locks", lambda path: "nfs4")
    with pytest.raises(executors.ExecutionError, match=r"locks may not hold.*\(nfs4\)"):
        executors.execute(found, "ray", address="127.0.0.1:9")
    monkeypatch.setenv("CLUSTR_TRUST_LOCKS", "1")  # then the address is what is refused
    with pytest.raises(executors.ExecutionError, match="cannot reach"):
        executors.execute(found, "ray", address="127.0.0.1:9")


def test_the_filesystem_of_a_path_is_its_longest_mount_point(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "server:/export /shared nfs4 rw 0 0\n"
        "server:/export/x /shared/local\\040disk ext4 rw 0 0\n"
    )
    assert files.filesystem_type("/shared/results/x.json", mounts) == "nfs4"
    assert files.filesystem_type("/shared/local disk/r", mounts) == "ext4"
    assert files.filesystem_type("/sharedother", mounts) == "ext4"  # not under /shared
    assert files.filesystem_type("/x", tmp_path / "absent") is None


def test_the_slurm_script_is_valid_bash_and_calls_the_real_commands():
    script = ROOT / "scripts" / "slurm" / "clustr_book.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "#SBATCH --gpus-per-task" in text and "ray start --head" in text
    for command in ("plan --profile", "run --profile", "build"):
        assert f"python -m clustr_lib {command}" in text
    assert "--executor ray --address" in text
    page = (ROOT / "book" / "cluster.md").read_text()
    assert "scripts/slurm/clustr_book.sbatch" in page and "CLUSTR_TRUST_LOCKS" in page


DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from test_executors import SHARDED, tiny_plan
from clustr_lib import executors
found = tiny_plan(Path(sys.argv[1]), **SHARDED)
results = executors.execute(found, sys.argv[3], threads=1, progress=False)
print(json.dumps({r["run"]: r["weights_sha256"] for r in results if "weights_sha256" in r}))
"""


@pytest.mark.slow
def test_two_drivers_started_together_on_one_plan_train_each_run_once(tmp_path):
    """One driver on its own Ray instance, one in its own process, on the same results."""
    pytest.importorskip("ray")
    tests = str(Path(__file__).resolve().parent)
    drivers = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(tmp_path), tests, executor],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"},
        )
        for executor in ("ray", "local")
    ]
    outs = [d.communicate(timeout=600) for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], [err[-2000:] for _, err in outs]
    first, second = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    on_disk = {
        path.stem.rsplit("-", 1)[1]: json.loads(path.read_text())["weights_sha256"]
        for path in (tmp_path / "results").glob("*.json")
    }
    assert len(on_disk) == 7 and set(first) | set(second) == set(on_disk)
    # a weights file's hash covers its training time, so a run trained twice would differ:
    # what each driver got is the one recorded run (a driver that planned after a run was
    # recorded skips it; one that reached it while it trained waited on its lock and read it)
    assert all(on_disk[run] == sha for run, sha in {**first, **second}.items())
    assert all(first[run] == second[run] for run in set(first) & set(second))
    assert len(list((tmp_path / "results" / "evaluations").glob("*.json"))) == 1


TINY_STUDY = {  # a recorded study in miniature: two methods, two seeds, one radius
    "dataset": "digits32",
    "train_size": 200,
    "seeds": 2,
    "results": "tiny",
    "methods": ["nominal", "clustr"],
    "overrides": {**TINY, "eval_size": 6},
    "variants": {"v": {"methods": ["clustr"], "overrides": {"qtrades_form": "logprob"}}},
    "audit": {
        "eps": [8 / 255],
        "rules": ["official", "any_restart"],
        "gradient_objectives": ["ce"],
    },
}
# Its evaluations per seed: PGD under the 2 rules with −log p_y and the margin on nominal and 4
# objectives on ClusTR, less those the runs record themselves (−log p_y, and the paper's on
# ClusTR, under the official rule); AutoAttack and Square alone on both; one input-gradient
# evaluation each; score underflow and the certificate on ClusTR. The variant (in
# results/tiny-v) has its own ClusTR run, from its own nominal warm start, and its audit.
TINY_STUDY_EVALUATIONS = (2 + 4) * 2 - 3 + 2 * 2 + 2 + 1 + 1
TINY_VARIANT_EVALUATIONS = 4 * 2 - 2 + 2 + 1 + 1 + 1


@pytest.fixture
def tiny_study(monkeypatch):
    monkeypatch.setitem(sources.STUDIES, "tiny", (TINY_STUDY, "tiny study", "tiny"))
    return "tiny"


def computed_now(output: str) -> list[int]:
    """The '(N computed now)' counts of a recording's per-seed lines."""
    return [
        int(line.rsplit("(", 1)[1].split()[0]) for line in output.splitlines() if "now)" in line
    ]


def test_a_study_plan_lists_everything_its_recording_makes(tmp_path, tiny_study):
    """A seed's plan, executed, leaves the recording's own pass of that seed nothing to make."""
    torch.set_num_threads(1)
    found = plan.study_plan(tiny_study, 1, tmp_path, "cpu")
    kinds = [t.kind for t in found.tasks]
    assert kinds.count("run") == 2 + 1  # the variant's ClusTR trains its own warm start
    assert kinds.count("evaluation") == TINY_STUDY_EVALUATIONS + TINY_VARIANT_EVALUATIONS
    assert not any(t.recorded for t in found.tasks)
    executors.execute(found, "local", progress=False)
    assert all(t.recorded for t in plan.study_plan(tiny_study, 1, tmp_path, "cpu").tasks)
    upto = [dataclasses.replace(s, seeds=1) for s in sources.study_sources(tiny_study, tmp_path)]
    studies.record_seed(upto, TINY_STUDY, {})
    assert [s.computed for s in upto] == [[], []]
    assert [len(s.loaded) for s in upto] == [TINY_STUDY_EVALUATIONS, TINY_VARIANT_EVALUATIONS]


def test_a_study_recorded_on_ray_is_the_one_recorded_here(
    tmp_path, tiny_study, capsys, monkeypatch
):
    pytest.importorskip("ray")
    local, distributed = tmp_path / "local", tmp_path / "ray"
    torch.set_num_threads(1)
    recording.record_study(tiny_study, {}, local, "cpu")
    per_seed = [TINY_STUDY_EVALUATIONS, TINY_VARIANT_EVALUATIONS]  # a line per seed and source
    assert computed_now(capsys.readouterr().out) == per_seed * 2
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    recording.record_study(tiny_study, {}, distributed, "cpu", executor="ray")
    assert computed_now(capsys.readouterr().out) == [0] * 4  # Ray's workers made them all
    for results, count in zip(("results/tiny", "results/tiny-v"), per_seed):
        assert recorded(distributed, results) == recorded(local, results)  # weights, metrics
        assert evaluations_of(distributed, results) == evaluations_of(local, results)
        assert len(evaluations_of(local, results)) == 2 * count
