"""Executing a plan (:mod:`clustr_lib.plan`): every task still to do, one after another in this
process (``local``) or as tasks on Ray (``ray``: a local instance, or a cluster at
``address``), before papermill runs the notebooks, which then find everything recorded (and, for
:mod:`clustr_lib.recording`, a recorded study's plan, seed by seed).

Every task writes into the one results cache through its per-run lock
(:func:`clustr_lib.runs.run`), so two tasks, two drivers or two machines never train the same
run twice, and a task whose worker dies is retried and resumes from the run's checkpoint. A
ClusTR variant waits for its seed's warm start, an evaluation for its run. Each task rebuilds
its source (and loads its data by name) on its own worker from the chapter and parameters
that asked for it, and checks that the run it builds is the one planned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import plan as planning
from .checks import progress_enabled
from .clock import count_suspensions
from .files import weak_locks
from .records import config_hash, load_run
from .runs import run, run_config
from .sources import STUDIES, study_sources_of

EXECUTORS = ("local", "ray")


class ExecutionError(RuntimeError):
    """A plan that cannot be executed, or tasks that failed (named by their run)."""


@dataclass(frozen=True)
class Job:
    """What a worker needs to do one task: the task, and the chapter, parameters and folder
    its source is rebuilt from."""

    task: dict
    chapter: str | None  # the chapter that asked for it (None: a recorded study's task)
    params: dict
    output_dir: str
    threads: int | None = None
    study: tuple | None = None  # a recorded study's task: its entry of STUDIES (definition,
    # label, key), which the worker rebuilds its source from
    device: str = "auto"  # a study's task: its device


def jobs_of(found: planning.Plan, threads: int | None = None) -> list[Job]:
    """The jobs of the tasks still to do, runs first (warm starts before the ClusTR variants
    that start from them), then evaluations."""
    todo = [t for t in found.tasks if not t.recorded]
    dataless = [t for t in todo if t.run is None]
    if dataless:
        names = sorted({t.dataset for t in dataless})
        raise ExecutionError(
            f"{len(dataless)} planned run(s) are of data not on disk ({', '.join(names)}); "
            "load the datasets once (e.g. run one of their chapters locally) and plan again"
        )
    order = {"run": 0, "shard": 2, "evaluation": 3}
    todo.sort(key=lambda t: order[t.kind] + (1 if t.kind == "run" and t.after else 0))
    return [
        Job(
            asdict(t),
            t.chapters[0] if t.chapters else None,
            found.parameters[t.chapters[0]] if t.chapters else {},
            found.output_dir,
            threads,
            STUDIES[found.study] if found.study else None,
            found.device,
        )
        for t in todo
    ]


def do(job: Job, *after) -> dict:
    """Do one task in this process (``after``: the results of the tasks it waits for, unused):
    train (or read) the run, make (or read) one shard of a large evaluation, or make (or read,
    or merge from its shards) the evaluation. Returns what was recorded."""
    if job.threads:
        torch.set_num_threads(int(job.threads))
    task = job.task
    with planning.working_directory(Path(job.output_dir)), count_suspensions():
        if job.study is not None:
            found = study_sources_of(*job.study, repo_root=".", device=job.device)
        else:
            found = planning.chapter_sources(job.chapter, job.params)
        source = next(s for s in found if s.label == task["source"])
        config = run_config(
            source.dataset, task["method"], task["seed"], source.settings, source.data
        )
        if config_hash(config) != task["run"]:
            raise ExecutionError(
                f"{task['source']} {task['method']} seed {task['seed']}: the run this worker "
                f"builds ({config_hash(config)}) is not the planned one ({task['run']}); "
                "plan again"
            )
        if task["kind"] == "run":
            record = run(
                config,
                source.data,
                results_dir=source.results_dir,
                models_dir=source.models_dir,
                progress=False,
            )
            return {"run": task["run"], "weights_sha256": record.weights_sha256}
        record = load_run(config, source.results_dir)
        if record is None:
            raise ExecutionError(f"the run {task['run']} of an evaluation is not recorded")
        if task["kind"] == "shard":
            source.evaluate_shard(record, task["evaluation"], task["params"], task["shard"])
            return {"run": task["run"], "evaluation": task["evaluation"], "shard": task["shard"]}
        measured = source.evaluate_run(record, task["evaluation"], task["params"])
        return {"run": task["run"], "evaluation": task["evaluation"], **measured}


def check_executor(executor: str, address: str | None = None) -> None:
    """Refuse an unknown executor, and a cluster address without the ``ray`` executor."""
    if executor not in EXECUTORS:
        raise ExecutionError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    if address and executor != "ray":
        raise ExecutionError("--address needs --executor ray")


def execute(
    found: planning.Plan,
    executor: str = "local",
    address: str | None = None,
    threads: int | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Do every task of ``found`` still to do, with ``threads`` torch threads per task
    (``None``: torch's default). Checks the executor, the address and the plan before any task
    starts. Returns the tasks' results; raises :class:`ExecutionError` naming every task that
    failed, after every other task has completed."""
    check_executor(executor, address)
    if executor == "ray" and address:  # other machines: the cache's locks must hold across them
        check_shared_locks(found)
    if executor == "ray":
        check_address(address)
    jobs = jobs_of(found, threads)
    progress = progress_enabled() if progress is None else progress
    if executor == "local":
        return _local(jobs, progress)
    return _ray(jobs, address, progress)


def _local(jobs: list[Job], progress: bool) -> list[dict]:
    results, failed = [], []
    for job in tqdm(jobs, desc="tasks", disable=not progress):
        try:
            results.append(do(job))
        except Exception as err:  # every other task still runs; the failures are reported
            failed.append((job, err))
    _raise_failures(failed)
    return results


def check_shared_locks(found: planning.Plan) -> None:
    """Refuse to spread a plan over machines when its results folders are on a filesystem
    whose locks may not hold across them (:func:`clustr_lib.files.weak_locks`): two machines
    could then train one run at once and interleave its files. ``CLUSTR_TRUST_LOCKS=1``
    overrides this for a filesystem known to have working ``fcntl`` locks (NFS with lockd)."""
    if os.environ.get("CLUSTR_TRUST_LOCKS") == "1":
        return
    folders = sorted({t.results_dir for t in found.tasks if not t.recorded and t.results_dir})
    weak = [(folder, kind) for folder in folders if (kind := weak_locks(folder))]
    if weak:
        where = ", ".join(f"{folder} ({kind})" for folder, kind in weak)
        raise ExecutionError(
            f"the results cache is on a filesystem whose locks may not hold between machines: "
            f"{where}. Put results/ on one with working fcntl locks, run on one machine (no "
            f"--address), or set CLUSTR_TRUST_LOCKS=1 if this one has them (NFS with lockd)"
        )


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Refuse a cluster address that does not answer within ``timeout`` seconds (``ray.init``
    itself would wait for minutes): ``host:port`` or ``ray://host:port``; ``auto`` is left to
    Ray, which fails at once when no cluster runs here."""
    if not address or address == "auto":
        return
    where = address.removeprefix("ray://")
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit():
        raise ExecutionError(
            f"a Ray address is host:port, ray://host:port or auto; got {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ExecutionError(f"cannot reach a Ray cluster at {address!r}: {err}") from None


@contextlib.contextmanager
def ray_session(address: str | None = None):
    """Ray, connected: to the cluster at ``address``, else a local instance started here (its
    files in a short temporary folder, for the socket paths) and shut down on leaving; an
    instance already connected is used as it is. Yields the ``ray`` module."""
    try:
        import ray
    except ImportError:
        raise ExecutionError(
            "the ray executor needs Ray: pip install -e '.[ray]' (make installs it)"
        ) from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                temp = os.environ.get("RAY_TMPDIR") or tempfile.mkdtemp(prefix="ray", dir="/tmp")
                ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=temp)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ExecutionError(f"cannot reach a Ray cluster at {address!r}: {err}") from None
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _ray(jobs: list[Job], address: str | None, progress: bool) -> list[dict]:
    with ray_session(address) as ray:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        heavy = sum(job.task.get("at_scale", False) for job in jobs)
        if heavy and not gpus and os.environ.get("CLUSTR_ALLOW_CPU") != "1":
            raise ExecutionError(
                f"{heavy} task(s) at the paper's protocol need GPUs, and this Ray cluster has "
                "none (CLUSTR_ALLOW_CPU=1 runs them on its CPUs: days, not hours)"
            )
        if not gpus:  # a CPU task asks for one CPU per torch thread (1 unless told otherwise)
            jobs = [dataclasses.replace(job, threads=job.threads or 1) for job in jobs]
        most_cpus = int(ray.cluster_resources().get("CPU", 1))  # more could never be granted
        remote = ray.remote(num_gpus=gpus, num_cpus=1, max_retries=3, retry_exceptions=False)(do)
        refs, by_key, shards = [], {}, {}
        for job in jobs:  # a task waits for what it needs (ObjectRef arguments): its run, and
            task = job.task  # an evaluation made of shards for its shards
            after = task.get("after")
            waits = [by_key[after]] if after in by_key else []
            evaluation = (task["run"], task["evaluation"], repr(task["params"]))
            if task["kind"] == "evaluation":
                waits += shards.get(evaluation, [])
            cpus = 1 if gpus else max(1, min(int(job.threads), most_cpus))
            ref = remote.options(num_cpus=cpus).remote(job, *waits)
            refs.append((job, ref))
            if task["kind"] == "run":
                by_key[task["run"]] = ref
            elif task["kind"] == "shard":
                shards.setdefault(evaluation, []).append(ref)
        return _collect(ray, refs, progress)


def _collect(ray, refs, progress: bool) -> list[dict]:
    """Wait for every task with one progress bar (done / failed, elapsed, estimate left);
    Ctrl-C cancels the tasks not yet done (their runs resume from their checkpoints)."""
    pending = {ref: job for job, ref in refs}
    results, failed = [], []
    bar = tqdm(total=len(pending), desc="tasks", disable=not progress)
    try:
        while pending:
            # a timeout, so that Python gets back control every second and Ctrl-C interrupts
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                job = pending.pop(ref)
                try:
                    results.append(ray.get(ref))
                except Exception as err:  # a failed task, or one whose dependency failed
                    failed.append((job, err))
                bar.update(1)
                bar.set_postfix(failed=len(failed), running=len(pending))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    _raise_failures(failed)
    return results


def _raise_failures(failed) -> None:
    if not failed:
        return
    lines = [
        f"{job.task['kind']} {job.task['source']} {job.task['method']} seed {job.task['seed']} "
        f"({job.task['run']}{', ' + job.task['evaluation'] if job.task['evaluation'] else ''}"
        f"{'' if job.task.get('shard') is None else ' shard ' + str(job.task['shard'])}): "
        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        for job, err in failed
    ]
    raise ExecutionError(f"{len(failed)} task(s) failed:\n" + "\n".join(lines))
