"""The plan of a build, readable before anything runs (``python -m clustr_lib plan``): every
training run and every evaluation that the selected chapters of a profile need, whether each is
recorded, and an estimate of its device time.

The needs are not a second list kept by hand: each chapter's sources are built as its notebook
builds them (:func:`chapter_sources`) and its measurements are the library calls its cells make
(:func:`clustr_lib.studies.chapter_measurements`), on sources that compute nothing but tell a
:class:`Planner` what is asked of them (``Source.planner``). ``tests/test_book.py`` checks that
the smoke book asks for nothing its plan did not list.

Estimates: a recorded task's own measured time (training plus the run's protocol PGD, or the
evaluation's wall time) on the device that made it; a missing run at the paper's protocol from
the benchmark recorded for this device (``benchmarks/``, :func:`clustr_lib.bench.training_seconds`);
a missing PGD evaluation from the benchmark's PGD rate at the paper's width; otherwise unknown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean

import pandas as pd

from . import bench, book, evaluations, sources, studies
from .records import config_hash, device_name, resolve_device, to_plain

PAPER_CHAPTERS = {"03_cifar10": "cifar10", "04_svhn": "svhn", "05_cifar100": "cifar100"}


def chapter_sources(chapter: str, params: dict, download: bool = True) -> list:
    """The sources ``chapter`` reads, built from its parameters as its notebook builds them
    (paths relative to the folder the notebook runs in). ``download=False``: a paper dataset
    that is not on disk gives a source without data."""
    scale = dict(params.get("scale") or {})
    repo_root = params.get("repo_root", ".")
    if chapter == "06_digits32_study":
        return sources.digits32_studies(repo_root, ours=True)
    if chapter in PAPER_CHAPTERS:
        return [
            sources.paper_source(
                PAPER_CHAPTERS[chapter], repo_root=repo_root, download=download, **scale
            )
        ]
    if chapter in sources.EVALUATION_CHAPTERS:
        return sources.chapter_sources(
            chapter,
            study=params.get("study", True),
            repo_root=repo_root,
            download=download,
            **scale,
        )
    # the 2-D chapters train their small models in the notebook, in minutes; chapter 12 reads
    # the fashion32 recording as far as it has come (`record fashion32` makes it)
    return []


@dataclass
class Task:
    """One training run or one evaluation of a run that a build needs."""

    kind: str  # "run", "evaluation" or "shard" (of a large evaluation's attacked points)
    source: str  # the source's label
    dataset: str
    method: str
    seed: int
    run: str | None  # the run's config hash (None: its data is not on disk, so not known yet)
    evaluation: str | None = None  # the evaluation's name (clustr_lib.evaluations)
    params: dict | None = None  # the evaluation's parameters
    after: str | None = None  # the run it waits for: a ClusTR variant's warm start, or its run
    recorded: bool = False
    seconds: float | None = None  # device seconds (measured if recorded, else projected)
    estimate: str = "unknown"  # where ``seconds`` comes from: recorded / benchmark / unknown
    device: str | None = None  # where it was recorded, or the device of the projection
    chapters: list = field(default_factory=list)  # the chapters that need it
    results_dir: str | None = None  # where its record goes (absolute)
    at_scale: bool = False  # the paper's protocol on a paper dataset (GPU-hours)
    shard: int | None = None  # a shard's number (clustr_lib.evaluations.shards)
    shards: int = 0  # an evaluation made of shards: how many (it waits for them, then merges)

    @property
    def key(self) -> tuple:
        run = self.run or f"{self.source}/{self.method}/s{self.seed}"
        return (self.kind, run, self.evaluation, self.params_text, self.shard)

    @property
    def across_seeds(self) -> tuple:
        """The task whatever its seed: its key with the source and method in place of the run."""
        return (self.kind, self.source, self.method, self.evaluation, self.params_text, self.shard)

    @property
    def params_text(self) -> str | None:
        return json.dumps(to_plain(self.params), sort_keys=True) if self.params else None


class Planner:
    """Collects the tasks that sources are asked for (``Source.planner``), once each."""

    def __init__(self, figures: dict | None = None, device: str | None = None):
        self.tasks: dict[tuple, Task] = {}
        self.chapter: str | None = None
        self.figures, self.device = figures, device

    def _add(self, task: Task) -> None:
        task = self.tasks.setdefault(task.key, task)
        if self.chapter and self.chapter not in task.chapters:
            task.chapters.append(self.chapter)

    def add_run(self, source, config: dict, record) -> None:
        """``config``'s run; ``record`` its record when there is one."""
        task = self._task("run", source, config)
        if config["method"] in ("clustr", "clustr_qtrades") and task.run is not None:
            task.after = config_hash({**config, "method": "nominal"})
        if record is not None:
            task.recorded, task.estimate = True, "recorded"
            # its own time: where the source trains the nominal run as a task of its own, a
            # ClusTR run's warm start is counted there (a variant that trains only ClusTR +
            # QTRADES trains its warm start inside this task)
            own = record.training["seconds"]
            if "nominal" in source.methods:
                own -= record.training["stages"].get("warm_start", 0)
            task.seconds = own + sum(record.attack_seconds.values())
            task.device = record.provenance["device"]
        elif source.at_scale and self.figures:
            with contextlib.suppress(KeyError):  # an older benchmark without this rate
                task.seconds = bench.training_seconds(self.figures, source.dataset)[
                    config["method"]
                ]
                task.estimate, task.device = "benchmark", self.device
        self._add(task)

    def add_evaluation(self, source, config, name, params, path, recorded=None, shards=()) -> None:
        """Evaluation ``name`` with ``params`` of ``config``'s run (``path``: its record's
        place, ``None`` while the run is not recorded; ``recorded``: the record, if any). A
        large PGD or AutoAttack not yet recorded is made of ``shards`` (each one's record, or
        ``None``): one task per shard, and the evaluation, which merges them, waits for them."""
        task = self._task("evaluation", source, config, name, params)
        task.after = task.run
        if recorded is not None:
            self._recorded(task, recorded)
        elif shards:
            task.shards, task.seconds, task.estimate = len(shards), 0.0, "merge"
            for number, record in enumerate(shards):
                part = self._task("shard", source, config, name, params)
                part.after, part.shard = task.run, number
                if record is not None:
                    self._recorded(part, record)
                else:
                    start, stop = evaluations.shard_range(source.data, params, number)
                    self._estimate(part, source, name, params, stop - start)
                self._add(part)
        else:
            self._estimate(task, source, name, params, self._points(source, params))
        self._add(task)

    @staticmethod
    def _points(source, params) -> int:
        return evaluations.attacked_count(source.data, params.get("eval_size"))

    @staticmethod
    def _recorded(task: Task, recorded: dict) -> None:
        task.recorded, task.estimate = True, "recorded"
        task.seconds = recorded["provenance"].get("wall_seconds")
        task.device = recorded["provenance"].get("device")

    def _estimate(self, task: Task, source, name: str, params: dict, points: int) -> None:
        """A PGD or AutoAttack evaluation at the paper's width, from the benchmark's rates
        (:func:`clustr_lib.bench.autoattack_seconds`)."""
        if name not in ("pgd", "autoattack") or not self.figures or not points:
            return
        if source.settings["width"] != 64:
            return
        rate = self.figures.get("pgd_every_iterate_image_iterations_per_s")
        if name == "pgd" and rate:
            task.seconds = points * params["restarts"] * max(params["steps"]) / rate
        elif name == "autoattack" and rate and self.figures.get("embedding_images_per_s"):
            task.seconds = bench.autoattack_seconds(self.figures, points, params["attacks"])
        if task.seconds is not None:
            task.estimate, task.device = "benchmark", self.device

    @staticmethod
    def _task(kind, source, config, name=None, params=None) -> Task:
        return Task(
            kind=kind,
            source=source.label,
            dataset=config["dataset"],
            method=config["method"],
            seed=config["seed"],
            run=config_hash(config) if source.data is not None else None,
            evaluation=name,
            params=to_plain(params) if params is not None else None,
            results_dir=str(Path(source.results_dir).resolve()),
            at_scale=bool(source.at_scale),
        )


def describe(evaluation: str | None, params: dict | None) -> str:
    """A short label of an evaluation: its name and the parameters that tell it apart."""
    if evaluation is None:
        return ""
    shown = []
    for key in ("objective", "eps", "rule", "num_nearest", "d_values", "attacks"):
        if params and key in params:
            value = params[key]
            if key == "eps":
                value = studies.eps_text(value)
            elif key == "d_values":
                value = f"{len(value)} values"
            elif key == "attacks":
                value = "+".join(value)
            shown.append(f"{key}={value}")
    return " ".join([evaluation, *shown])


@dataclass
class Plan:
    """The tasks of a build of ``chapters`` at ``profile`` (``parameters``: each chapter's,
    its notebook's defaults with the profile's values; ``output_dir``: where its notebooks
    run, which their relative paths start from). A recorded study's plan has no chapters: its
    tasks rebuild their sources from ``study`` (:func:`study_plan`)."""

    profile: str
    chapters: list
    tasks: list
    parameters: dict = field(default_factory=dict)
    output_dir: str = "."
    study: str | None = None  # a recorded study's plan (:func:`study_plan`): its name
    device: str = "auto"  # a study's plan: the device its tasks run on

    def frame(self) -> pd.DataFrame:
        """One row per task, in the order the chapters ask for them."""
        rows = []
        for t in self.tasks:
            rows.append(
                {
                    "kind": t.kind,
                    "chapters": ", ".join(c[:2] for c in t.chapters),
                    "source": t.source,
                    "method": t.method,
                    "seed": t.seed,
                    "run": t.run or "(needs the data)",
                    "evaluation": describe(t.evaluation, t.params)
                    + (f" (shard {t.shard})" if t.shard is not None else "")
                    + (f" (merges {t.shards} shards)" if t.shards else ""),
                    "recorded": t.recorded,
                    "minutes": None if t.seconds is None else t.seconds / 60,
                    "estimate": t.estimate,
                }
            )
        return pd.DataFrame(rows)

    def totals(self) -> dict:
        """Counts and device time: all tasks, recorded, still to do (known and unknown)."""
        todo = [t for t in self.tasks if not t.recorded]
        return {
            "tasks": len(self.tasks),
            "runs": sum(t.kind == "run" for t in self.tasks),
            "evaluations": sum(t.kind == "evaluation" for t in self.tasks),
            "shards": sum(t.kind == "shard" for t in self.tasks),
            "recorded": len(self.tasks) - len(todo),
            "to_do": len(todo),
            "to_do_hours_estimated": sum(t.seconds or 0.0 for t in todo) / 3600,
            "to_do_without_estimate": sum(t.seconds is None for t in todo),
            "recorded_hours": sum(t.seconds or 0.0 for t in self.tasks if t.recorded) / 3600,
        }

    def to_json(self) -> dict:
        return {
            "profile": self.profile,
            "output_dir": self.output_dir,
            "chapters": self.chapters,
            "totals": self.totals(),
            "tasks": [to_plain(asdict(t)) for t in self.tasks],
        }

    def summary(self) -> str:
        """The plan as text: a table of the tasks and the totals."""
        t = self.totals()
        sharded = f" (and {t['shards']} shards of large ones)" if t["shards"] else ""
        lines = [
            f"Plan of profile {self.profile!r}, chapters {', '.join(self.chapters)}: "
            f"{t['runs']} runs and {t['evaluations']} evaluations{sharded}, "
            f"{t['recorded']} recorded "
            f"({t['recorded_hours']:.2f} task-hours when they were made), {t['to_do']} to do "
            f"(estimated {t['to_do_hours_estimated']:.2f} task-hours; "
            f"{t['to_do_without_estimate']} without an estimate).",
        ]
        if any(task.run is None for task in self.tasks):
            lines.append(
                "Runs marked (needs the data) are of a dataset not on disk (a plan downloads "
                "nothing): their keys, and the evaluations made of them, are listed once it is."
            )
        todo = self.frame()
        if len(todo):
            todo = todo[~todo["recorded"]]
            if len(todo):
                lines += ["", "To do:", todo.drop(columns="recorded").to_string(index=False)]
        return "\n".join(lines)


def study_plan(name: str, seeds: int, repo_root=".", device="auto", chapter_params=None) -> Plan:
    """The plan of a recorded study's (:data:`clustr_lib.sources.STUDIES`) first ``seeds``
    seeds: what :func:`clustr_lib.studies.record_seed` makes of them, listed, not made — so
    that an executor can spread them over workers (``record --executor ray``)."""
    definition = sources.STUDIES[name][0]
    planner = Planner()
    upto = [
        dataclasses.replace(source, seeds=seeds, planner=planner)
        for source in sources.study_sources(name, repo_root, device)
    ]
    studies.record_seed(upto, definition, chapter_params or {})
    return Plan(
        profile=f"record {name}",
        chapters=[],
        tasks=list(planner.tasks.values()),
        output_dir=str(Path(repo_root).resolve()),
        study=name,
        device=str(device),
    )


def recorded_only(sources, measure):
    """``measure(sources)`` from what is recorded only — nothing is trained or attacked, what
    is missing is only listed — and how far the recording has come. For a study recorded over
    several sessions (``python -m clustr_lib record``), so that its chapter shows what has
    finished. Returns ``(measure's result, the sources it read, progress)``: per source, the
    runs and evaluations recorded of those needed, the task-hours they took (each task's own
    wall time: a run's training and attacks, an evaluation's, as their records give them), the
    hours
    still to go for the missing tasks that some seed has recorded (each timed as the mean of
    that task at those seeds, :func:`seed_estimates`), and how many missing tasks no seed has
    recorded yet (untimed: not in the estimate)."""
    planned = [dataclasses.replace(s, planner=Planner()) for s in sources]
    result = measure(planned)
    rows = []
    for source in planned:
        row = {"source": source.label}
        every = list(source.planner.tasks.values())
        for kind, name in (("run", "runs"), ("evaluation", "evaluations")):
            tasks = [t for t in every if t.kind == kind]
            row[f"{name} recorded"] = sum(t.recorded for t in tasks)
            row[f"{name} needed"] = len(tasks)
        row["hours recorded"] = sum(t.seconds or 0.0 for t in every if t.recorded) / 3600
        estimates = seed_estimates(every)
        row["hours to go (estimate)"] = sum(v for v in estimates.values() if v is not None) / 3600
        row["tasks untimed"] = sum(v is None for v in estimates.values())
        rows.append(row)
    return result, planned, pd.DataFrame(rows).set_index("source")


def seed_estimates(tasks: list) -> dict:
    """``{key: seconds}`` for each task of ``tasks`` not recorded: the mean device seconds of
    the same task (:attr:`Task.across_seeds`: kind, source, method, evaluation, parameters
    and shard) recorded at other seeds; ``None`` when no seed has recorded it."""
    done = {}
    for t in tasks:
        if t.recorded and t.seconds is not None:
            done.setdefault(t.across_seeds, []).append(t.seconds)
    return {
        t.key: fmean(done[t.across_seeds]) if t.across_seeds in done else None
        for t in tasks
        if not t.recorded
    }


@contextlib.contextmanager
def working_directory(path: Path):
    """Run in ``path`` as the notebooks do (their relative paths are relative to it)."""
    path.mkdir(parents=True, exist_ok=True)
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def make_plan(
    profile: str = book.DEFAULT_PROFILE,
    only=None,
    notebooks: Path = book.NOTEBOOKS,
    profiles_path: Path = book.PROFILES,
    output_dir: Path = book.EXECUTED,
    device: str = "auto",
) -> Plan:
    """The plan of running ``only`` (default: every chapter) at ``profile``
    (:func:`clustr_lib.book.plan` checks the request first). Trains, attacks and downloads
    nothing; data already on disk is loaded, to know the runs' keys."""
    steps = book.plan(profile, only, notebooks, profiles_path, output_dir)
    name = device_name(resolve_device(device))
    planner = Planner(bench.recorded_figures(name), name)
    parameters = {}
    with working_directory(Path(output_dir)):
        for chapter, params in steps:
            params = {**book.default_parameters(chapter, notebooks), **params}
            parameters[chapter] = params
            planner.chapter = chapter
            found = chapter_sources(chapter, params, download=False)
            for source in found:
                source.planner = planner
            with_data = [s for s in found if s.data is not None]
            for source in found:
                if source.data is None:  # its keys need the data: list its runs only
                    source.runs()
            if with_data:
                studies.chapter_measurements(chapter, with_data, params)
    return Plan(
        profile,
        [c for c, _ in steps],
        list(planner.tasks.values()),
        parameters,
        str(Path(output_dir).resolve()),
    )


def schedule(tasks: list, workers: int) -> dict:
    """The wall time of ``tasks`` (their ``seconds``; ``None`` counts as 0) on ``workers``
    identical devices: each free device takes the ready task (everything it waits for done:
    its run, a ClusTR variant's warm start, an evaluation's shards) that heads the longest
    chain of work still to come: an idealised list schedule with one device per task and no
    per-task overhead (Ray itself dispatches the ready tasks in the order they were submitted,
    and each task loads its data and model).
    Returns ``{"workers", "wall_seconds", "device_seconds", "critical_path_seconds"}``: the
    wall time lies between ``max(critical path, device seconds / workers)`` and their sum."""
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    todo = [t for t in tasks if not t.recorded]
    seconds = {i: float(t.seconds or 0.0) for i, t in enumerate(todo)}
    runs = {t.run: i for i, t in enumerate(todo) if t.kind == "run" and t.run is not None}
    shards: dict = {}
    for i, t in enumerate(todo):
        if t.kind == "shard":
            shards.setdefault((t.run, t.evaluation, repr(t.params)), []).append(i)
    needs = {}
    for i, t in enumerate(todo):
        waits = t.after is not None and t.after in runs and runs[t.after] != i
        needs[i] = {runs[t.after]} if waits else set()
        if t.kind == "evaluation":
            needs[i] |= set(shards.get((t.run, t.evaluation, repr(t.params)), []))
    after = {i: [j for j in needs if i in needs[j]] for i in needs}
    chain: dict = {}

    def rest(i):  # the longest chain of work from task i on
        if i not in chain:
            chain[i] = seconds[i] + max((rest(j) for j in after[i]), default=0.0)
        return chain[i]

    free = [0.0] * int(workers)  # when each device is next free
    done_at: dict = {}
    waiting = set(needs)
    while waiting:
        ready = [i for i in waiting if needs[i] <= done_at.keys()]
        start_of = {i: max((done_at[j] for j in needs[i]), default=0.0) for i in ready}
        device = min(range(len(free)), key=free.__getitem__)
        # of the tasks ready by the time this device is free (else the first to be ready),
        # the one heading the longest chain
        soon = [i for i in ready if start_of[i] <= free[device]] or [
            min(ready, key=start_of.__getitem__)
        ]
        i = max(soon, key=lambda k: (rest(k), -k))
        begin = max(free[device], start_of[i])
        done_at[i] = free[device] = begin + seconds[i]
        waiting.remove(i)
    return {
        "workers": int(workers),
        "wall_seconds": max(done_at.values(), default=0.0),
        "device_seconds": sum(seconds.values()),
        "critical_path_seconds": max((rest(i) for i in needs), default=0.0),
    }
