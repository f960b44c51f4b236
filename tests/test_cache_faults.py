"""The results cache under faults (issue 13): kills, damaged files, two processes, an
unwritable folder. Tiny models; the subprocess tests are marked slow."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from clustr_lib import data, protocol, records, runs, sources
from clustr_lib.files import sha256_file
from clustr_lib.models import WithHead, resnet18_embedder
from clustr_lib.train import Checkpoint, train_cross_entropy

TINY = dict(
    width=2,
    ce_epochs=2,
    ce_milestones=[1],
    magnet_epochs=1,
    eval_size=8,
    pgd_restarts=1,
    pgd_steps=[1],
    batch_size=64,
    samples_per_cluster=5,
)


def tiny_run(tmp_path, method="nominal"):
    d = data.load_images("digits32", train_size=128, test_size=16)
    config = runs.run_config("digits32", method, 0, protocol.settings("digits32", TINY), data=d)
    dirs = dict(results_dir=tmp_path / "r", models_dir=tmp_path / "m", progress=False)
    return d, config, dirs


def refuse_training(*args, **kwargs):
    raise AssertionError("trained again")


def test_weights_of_a_run_killed_while_evaluated_are_evaluated_not_retrained(tmp_path, monkeypatch):
    d, config, dirs = tiny_run(tmp_path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after saving the weights

    with monkeypatch.context() as patch:
        patch.setattr(runs, "evaluate", killed)
        with pytest.raises(KeyboardInterrupt):
            runs.run(config, d, **dirs)
    assert runs.model_path(config, tmp_path / "m").exists()
    assert records.load_run(config, tmp_path / "r") is None
    monkeypatch.setattr(runs, "train_run", refuse_training)
    record = runs.run(config, d, **dirs)
    assert record.weights_sha256 == sha256_file(runs.model_path(config, tmp_path / "m"))
    assert record.training["seconds"] > 0  # carried in the weights file
    assert not list((tmp_path / "m").glob("*.tmp")) and not list((tmp_path / "r").glob("*.tmp"))


def test_changed_weights_of_a_recorded_run_never_load(tmp_path):
    d, config, dirs = tiny_run(tmp_path)
    record = runs.run(config, d, **dirs)
    path = runs.model_path(config, tmp_path / "m")
    runs.load_model(config, d, tmp_path / "m", record.weights_sha256)  # intact: loads
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)  # 64 bytes zeroed in the tensors
    path.write_bytes(bytes(raw))
    with pytest.raises(runs.DamagedWeights, match=path.name):
        runs.load_model(config, d, tmp_path / "m", record.weights_sha256)


def test_a_damaged_checkpoint_is_set_aside_and_the_previous_state_resumed(tmp_path):
    d = data.load_images("digits32", train_size=128, test_size=16)
    torch.manual_seed(0)
    net = WithHead(resnet18_embedder(2), 16, 10)
    ckpt = tmp_path / ".run.ckpt"
    train_cross_entropy(net, d, epochs=2, lr=1e-2, batch_size=64, checkpoint=ckpt, progress=False)
    for damage in ("flip", "truncate"):
        state = Checkpoint(ckpt).load()
        assert state is not None
        if damage == "flip":
            raw = bytearray(ckpt.read_bytes())
            raw[-200] ^= 0xFF
            ckpt.write_bytes(bytes(raw))
        else:
            ckpt.write_bytes(ckpt.read_bytes()[:1000])
        with pytest.warns(UserWarning, match="damaged"):
            resumed = Checkpoint(ckpt).load()
        assert resumed is not None and resumed["epoch"] == 1  # the epoch before
        assert list(tmp_path.glob(".run.ckpt.damaged*"))
        # training resumes from it and ends where it would have
        train_cross_entropy(
            net, d, epochs=2, lr=1e-2, batch_size=64, checkpoint=ckpt, progress=False
        )
    Checkpoint(ckpt).clear()
    assert Checkpoint(ckpt).load() is None


def test_a_damaged_evaluation_record_is_recomputed_or_named(tmp_path):
    d, config, dirs = tiny_run(tmp_path)
    runs.run(config, d, **{**dirs, "models_dir": tmp_path / "r" / "models"})
    source = sources.Source(
        "s",
        "digits32",
        None,
        protocol.settings("digits32", TINY),
        1,
        tmp_path / "r",
        False,
        d,
        only_methods=["nominal"],
    )
    source.results_dir, params = tmp_path / "r", {"clusters_per_class": 1, "num_nearest": 2}
    source.evaluate("nominal", "kmeans_nominal", params)
    (path,) = (tmp_path / "r" / "evaluations").glob("*.json")
    path.write_text('{"key": ')
    source.record_only = True
    with pytest.raises(LookupError, match=path.name):
        source.evaluate("nominal", "kmeans_nominal", params)
    source.record_only = False
    with pytest.warns(UserWarning, match=path.name):
        again = source.evaluate("nominal", "kmeans_nominal", params)
    assert json.loads(path.read_text())["metrics"] == again[0]["metrics"]
    whole = json.loads(path.read_text())  # the right key, but no metrics: damaged too
    path.write_text(json.dumps({k: v for k, v in whole.items() if k != "metrics"}))
    with pytest.warns(UserWarning, match=path.name):
        assert source.evaluate("nominal", "kmeans_nominal", params) == again
    assert json.loads(path.read_text())["metrics"] == again[0]["metrics"]


def test_an_unwritable_results_folder_is_refused_before_training(tmp_path, monkeypatch):
    d, config, dirs = tiny_run(tmp_path)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(runs, "train_run", refuse_training)
    with pytest.raises(PermissionError, match="a-file"):
        runs.run(config, d, results_dir=tmp_path / "a-file" / "r", models_dir=tmp_path / "m")


SCRIPT = textwrap.dedent("""
    import json, sys
    from clustr_lib import data, protocol, runs
    tiny = json.loads(sys.argv[2])
    d = data.load_images("digits32", train_size=128, test_size=16)
    config = runs.run_config("digits32", "nominal", 0, protocol.settings("digits32", tiny),
                             data=d)
    record = runs.run(config, d, results_dir=sys.argv[1] + "/r", models_dir=sys.argv[1] + "/m",
                      progress=False)
    print(json.dumps({"created": record.created, "sha": record.weights_sha256}))
""")


@pytest.mark.slow
def test_two_processes_on_one_run_train_it_once(tmp_path):
    tiny = json.dumps({**TINY, "ce_epochs": 4})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(tmp_path), tiny],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    first, second = (json.loads(o[0].strip().splitlines()[-1]) for o in outs)
    assert first == second  # the second read the first one's record
    assert len(list((tmp_path / "r").glob("*.json"))) == 1
    assert not list(tmp_path.rglob("*.tmp"))


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    from clustr_lib import data
    from clustr_lib.models import WithHead, resnet18_embedder
    from clustr_lib.train import train_cross_entropy
    d = data.load_images("digits32", train_size=128, test_size=16)
    torch.manual_seed(0)
    net = WithHead(resnet18_embedder(2), 16, 10)
    train_cross_entropy(net, d, epochs=int(sys.argv[2]), lr=1e-2, batch_size=64,
                        checkpoint=sys.argv[1], progress=False)
    torch.save(net.state_dict(), sys.argv[1] + ".final")
""")


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_to_the_same_weights(tmp_path):
    ckpt = tmp_path / ".run.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(ckpt), "40"])
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for a checkpoint past the first epoch
        state = Checkpoint(ckpt).load() if (tmp_path / ".run.ckpt.sha256").exists() else None
        if state is not None and state["epoch"] >= 2:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / ".run.ckpt.final").exists()  # killed before the end
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(ckpt), "40"], check=True)
    straight = tmp_path / "straight.ckpt"
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(straight), "40"], check=True)
    resumed = torch.load(str(ckpt) + ".final", weights_only=True)
    expected = torch.load(str(straight) + ".final", weights_only=True)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)


EVAL_KILL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from clustr_lib import data, protocol, runs
    tiny = json.loads(sys.argv[2])
    d = data.load_images("digits32", train_size=128, test_size=16)
    config = runs.run_config("digits32", "nominal", 0, protocol.settings("digits32", tiny),
                             data=d)
    evaluate = runs.evaluate

    def slow_evaluate(*args, **kwargs):  # the kill lands inside the evaluation
        time.sleep(600)
        return evaluate(*args, **kwargs)

    runs.evaluate = slow_evaluate
    runs.run(config, d, results_dir=sys.argv[1] + "/r", models_dir=sys.argv[1] + "/m",
             progress=False)
""")


@pytest.mark.slow
def test_a_run_killed_mid_evaluation_is_evaluated_from_its_weights(tmp_path, monkeypatch):
    proc = subprocess.Popen(
        [sys.executable, "-c", EVAL_KILL_SCRIPT, str(tmp_path), json.dumps(TINY)]
    )
    d, config, dirs = tiny_run(tmp_path)
    weights = runs.model_path(config, tmp_path / "m")
    deadline = time.time() + 120
    while not weights.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)  # well inside the (slowed) evaluation
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert weights.exists(), "the subprocess never saved its weights"
    assert records.load_run(config, tmp_path / "r") is None  # killed before the record
    monkeypatch.setattr(runs, "train_run", refuse_training)
    record = runs.run(config, d, **dirs)  # the lock of the killed process is free again
    assert record.weights_sha256 == sha256_file(weights)
    assert 0.0 <= record.clean_accuracy <= 1.0 and record.pgd
    assert records.load_run(config, tmp_path / "r").weights_sha256 == record.weights_sha256
    assert not list(tmp_path.rglob("*.tmp"))
