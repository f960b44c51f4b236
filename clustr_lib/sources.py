"""The trained runs a chapter reads — a dataset at one protocol — and the evaluations made of
them, in one results cache with one key scheme (:func:`clustr_lib.records.record_path`).

A :class:`Source` never retrains what another chapter trained: :meth:`Source.runs` goes
through :func:`clustr_lib.runs.run`, which returns the recorded run (and the weights next to
it) when there is one, and trains only a run nobody has recorded yet (a chapter run on its own
on Colab). :meth:`Source.evaluate` records each measurement of :mod:`clustr_lib.evaluations`
as one JSON per (run, measurement, parameters) under ``<results_dir>/evaluations/``, with its
provenance; :meth:`Source.pgd` reads the protocol's PGD from the run record itself.

With a ``planner`` (:mod:`clustr_lib.plan`) a source trains and measures nothing: it tells the
planner every run and evaluation asked of it, recorded or not, and hands back only what is
recorded. With ``$CLUSTR_REQUEST_LOG`` set, every request is also appended to that file (one
JSON line each), which is how the tests check that a plan lists what the chapters ask for.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import clock, paper, protocol
from .data import DatasetUnavailable, load_images
from .evaluations import EVALUATIONS, SHARDED, merge_shards, shard_count, shard_range
from .records import (
    RunRecord,
    config_hash,
    device_name,
    load_json,
    load_run,
    provenance,
    record_path,
    resolve_device,
    save_json,
    to_plain,
)
from .runs import load_model, run_all, run_config

_DATA = {}


def images(name, data_dir=None, device="auto", train_size=None, test_size=None, download=True):
    """A dataset on the device, loaded once per process (the chapters read several sources);
    ``download=False``: never download (:class:`~clustr_lib.data.DatasetUnavailable`)."""
    device = resolve_device(device)
    key = (name, str(data_dir), str(device), train_size, test_size)
    if key not in _DATA:
        _DATA[key] = load_images(
            name,
            data_dir=data_dir,
            device=device,
            train_size=train_size,
            test_size=test_size,
            download=download,
        )
    return _DATA[key]


def _leaves(value) -> list:
    """The lists in a nested dict of per-point results."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    return [value]


def log_request(entry: dict) -> None:
    """Append ``entry`` to ``$CLUSTR_REQUEST_LOG`` (one JSON line) when it is set."""
    path = os.environ.get("CLUSTR_REQUEST_LOG")
    if path:
        with open(path, "a") as log:  # one short write per line: whole lines under O_APPEND
            log.write(json.dumps(to_plain(entry), sort_keys=True) + "\n")


def evaluation_key(record: RunRecord, name: str, params: dict) -> dict:
    """What identifies evaluation ``name`` with ``params`` of a recorded run (the run's hash
    and creation time: a retrained run is evaluated afresh)."""
    return {
        "run": config_hash(record.config),
        "run_created": record.created,
        "evaluation": name,
        "params": to_plain(params),
    }


@dataclass
class Source:
    """Trained runs of one dataset at one protocol.

    Attributes:
        label: how tables name it (``"cifar10"``, ``"digits32 for cifar10"``, ``"digits32 study"``).
        dataset: the dataset the models were trained on.
        paper_dataset: the paper's dataset whose numbers it is compared with (``None``: none).
        settings: the protocol (:func:`clustr_lib.protocol.settings`).
        seeds: runs per method; results_dir: where the runs are recorded.
        at_scale: the paper's protocol on the paper's dataset (only then a verdict).
        data: the images, on the device (``None`` only in a plan, for data not on disk).
        name: the source's key in a chapter's JSON (``None``: the paper dataset, else
            ``"study"``); the studies shown beside the paper protocol's have their own.
    """

    label: str
    dataset: str
    paper_dataset: str | None
    settings: dict
    seeds: int
    results_dir: Path
    at_scale: bool
    data: object
    record_only: bool = False  # raise instead of computing an evaluation that is not recorded
    only_methods: list | None = None  # a study (or its variant) trains only these
    variant: str | None = None  # a study's variant: its name (e.g. "logprob")
    planner: object = None  # a :class:`clustr_lib.plan.Planner`: list requests, compute none
    name: str | None = None  # key in a chapter's JSON (see :attr:`key`)
    train_devices: set = field(default_factory=set)  # devices that trained the runs read
    runs_read: set = field(default_factory=set)  # (seed, method) of the runs read
    eval_devices: set = field(default_factory=set)  # devices that made the evaluations read
    computed: list = field(default_factory=list)  # "label: file" of evaluations computed here
    loaded: list = field(default_factory=list)  # "label: file" of evaluations read
    announce: bool = False  # print a line for each evaluation computed (`record`)

    @property
    def key(self) -> str:
        """The source's name in a chapter's JSON measurements: its ``name``, else the paper
        dataset, else ``study``."""
        return self.name or self.paper_dataset or "study"

    @property
    def methods(self) -> list[str]:
        """Methods with runs here: those of the paper's table for its dataset (chapters 3–5
        train exactly those); for a study, its own (all seven for the digits32 study)."""
        if self.paper_dataset is None:
            return list(self.only_methods or protocol.METHODS)
        reported = paper.accuracy_table(self.paper_dataset)
        return [m for m, name in protocol.METHODS.items() if name in reported]

    @property
    def models_dir(self) -> Path:
        return Path(self.results_dir) / "models"

    def configs(self, method: str | None = None) -> list[dict]:
        """The run configs of ``method`` (default: every method here), seed by seed."""
        methods = self.methods if method is None else [method]
        return [
            run_config(self.dataset, m, s, self.settings, data=self.data)
            for s in range(int(self.seeds))
            for m in methods
        ]

    def runs(self, method: str | None = None, force: bool = False) -> list[RunRecord]:
        """The records of ``method`` (default: every method here) for every seed, trained
        only where missing (with a planner: the recorded ones, the others only listed)."""
        configs = self.configs(method)
        if self.planner is None:
            for config in configs:
                log_request({"kind": "run", "run": config_hash(config)})
        else:
            found = []
            for config in configs:
                record = load_run(config, self.results_dir) if self.data is not None else None
                self.planner.add_run(self, config, record)
                found += [record] if record is not None else []
            self._read(found)
            return found
        records = run_all(
            configs,
            self.data,
            results_dir=self.results_dir,
            models_dir=self.models_dir,
            force=force,
        )
        self._read(records)
        return records

    def _read(self, records) -> None:
        self.train_devices.update(r.provenance["device"] for r in records)
        self.runs_read.update((int(r.config["seed"]), r.config["method"]) for r in records)

    @property
    def seeds_recorded(self) -> list[int]:
        """The seeds at which a run of every method here has been read."""
        return [
            s for s in range(int(self.seeds)) if all((s, m) in self.runs_read for m in self.methods)
        ]

    @property
    def seeds_text(self) -> str:
        """The seeds as a page states them: ``"3 seeds"``, or, for a study read as far as it is
        recorded (:func:`clustr_lib.plan.recorded_only`, which reads every method's runs)
        before every method has a run at every seed, ``"2 of 3 seeds recorded"``."""
        planned = int(self.seeds)
        done = len(self.seeds_recorded)
        if self.planner is not None and self.runs_read and done < planned:
            return f"{done} of {planned} seeds recorded"
        return f"{planned} seed{'s' if planned != 1 else ''}"

    def model(self, record: RunRecord):
        """The trained evaluation model of a recorded run."""
        return load_model(record.config, self.data, self.models_dir, record.weights_sha256)

    def _check(self, method: str) -> None:
        if method not in self.methods:
            raise ValueError(
                f"{self.label} has no {method!r} runs; it has {', '.join(self.methods)}"
            )

    def evaluate(self, method: str, name: str, params: dict, force: bool = False) -> list[dict]:
        """Measurement ``name`` (a key of :data:`clustr_lib.evaluations.EVALUATIONS`) with
        ``params`` on every seed's model of ``method``: ``[{"seed", "metrics"}]``."""
        self._check(method)
        if name not in EVALUATIONS:
            raise ValueError(f"unknown evaluation {name!r}; known: {', '.join(EVALUATIONS)}")
        if self.planner is not None:
            return self._plan_evaluation(method, name, params)
        return [self.evaluate_run(record, name, params, force) for record in self.runs(method)]

    def _evaluation_path(self, record: RunRecord, key: dict, shard: int | None = None) -> Path:
        folder = Path(self.results_dir) / "evaluations"
        if shard is None:
            return record_path(folder, record.config, kind=key["evaluation"], key=key)
        return record_path(
            folder / "shards",
            record.config,
            kind=f"{key['evaluation']}-shard{shard}",
            key={**key, "shard": shard},
        )

    def _recorded_evaluation(self, path: Path, key: dict, points: int | None = None) -> dict | None:
        """The record at ``path`` if it is of ``key``; ``None`` when absent. An evaluation's
        record has its ``metrics``, a shard's (``points``: how many it attacked) a per-point
        result of that length for each of its measurements. A damaged record is ``None`` with
        a warning (recomputed), or, in record-only mode, an error."""
        if not path.exists():
            return None
        try:
            recorded = load_json(path)
            if recorded["key"] != key:
                return None
            float(recorded["provenance"]["wall_seconds"]), str(recorded["provenance"]["device"])
            if points is None:
                dict(recorded["metrics"])
            elif any(len(v) != points for v in _leaves(recorded["points"])):
                raise ValueError(f"per-point results of another length than {points}")
            return recorded
        except (ValueError, KeyError, TypeError) as err:
            if self.record_only:
                raise LookupError(
                    f"{self.label}: the evaluation record {path} is damaged ({err!r})"
                ) from err
            warnings.warn(
                f"ignoring the damaged evaluation record {path} ({err!r}); recomputing",
                stacklevel=4,
            )
            return None

    def _plan_evaluation(self, method: str, name: str, params: dict) -> list[dict]:
        """Tell the planner about evaluation ``name`` of every seed's run; the recorded ones."""
        found = []
        for config in self.configs(method):
            record = load_run(config, self.results_dir) if self.data is not None else None
            self.planner.add_run(self, config, record)  # an evaluation needs its run
            count = shard_count(name, self.data, params)
            if record is None:  # the run is still to be trained: its evaluation waits for it
                shards = [None] * count if count > 1 else []
                self.planner.add_evaluation(self, config, name, params, None, None, shards)
                continue
            key = evaluation_key(record, name, params)
            path = self._evaluation_path(record, key)
            recorded = self._recorded_evaluation(path, key)
            parts = []  # a large PGD or AutoAttack: its shards' records (None: to do)
            if recorded is None and count > 1:
                parts = [self._recorded_shard(record, key, params, s) for s in range(count)]
            self.planner.add_evaluation(self, config, name, params, path, recorded, parts)
            if recorded is not None:
                found.append({"seed": record.seed, "metrics": recorded["metrics"]})
                self.loaded.append(f"{self.label}: {path.name}")
                self.eval_devices.add(recorded["provenance"]["device"])
        return found

    def pgd(self, method: str, objective: str, **changes) -> list[dict]:
        """PGD ℓ∞ on every seed's model of ``method`` with the protocol's parameters and
        ``changes`` (:func:`clustr_lib.protocol.pgd_params`; ``rule=`` for another PGD rule):
        ``[{"seed", "metrics": {"clean", "robust": {steps: accuracy}}}]``. A request the runs
        recorded themselves (:func:`clustr_lib.protocol.at_protocol`) is read from them, never
        recomputed."""
        self._check(method)
        params = protocol.pgd_params(self.settings, method, objective, **changes)
        if not protocol.at_protocol(self.settings, method, params):
            return self.evaluate(method, "pgd", params)
        own = protocol.attack_objective(method, objective)
        return [
            {
                "seed": r.seed,
                "metrics": {
                    "clean": r.pgd[own]["clean"],
                    "robust": {
                        str(t): r.pgd_accuracy(own, t, params["rule"]) for t in params["steps"]
                    },
                },
            }
            for r in self.runs(method)
        ]

    def evaluate_run(self, record: RunRecord, name: str, params: dict, force: bool = False) -> dict:
        """Measurement ``name`` with ``params`` of one recorded run, read from its record when
        there is one, else computed and recorded: ``{"seed", "metrics"}``. A PGD or AutoAttack
        evaluation of more than one shard's points is made shard by shard
        (:meth:`evaluate_shard`; shards already recorded, e.g. by other tasks, are read)."""
        config = record.config
        key = evaluation_key(record, name, params)
        log_request(
            {"kind": "evaluation", "run": key["run"], "evaluation": name, "params": key["params"]}
        )
        path = self._evaluation_path(record, key)
        recorded = None if force else self._recorded_evaluation(path, key)
        if recorded is not None:
            self.loaded.append(f"{self.label}: {path.name}")
            self.eval_devices.add(recorded["provenance"]["device"])
            return {"seed": record.seed, "metrics": recorded["metrics"]}
        if self.record_only:
            raise LookupError(
                f"{self.label}: evaluation {name} {params} of {config['method']}, "
                f"seed {config['seed']} is not recorded ({path.name})"
            )
        start = clock.seconds()
        count = shard_count(name, self.data, params)
        if count > 1:
            load = functools.cache(lambda: self.model(record))  # only if a shard is to make
            parts = [
                self.evaluate_shard(record, name, params, s, force, load) for s in range(count)
            ]
            metrics = merge_shards([part["points"] for part in parts])
            seconds = sum(part["provenance"]["wall_seconds"] for part in parts)
            self.eval_devices.update(part["provenance"]["device"] for part in parts)
        else:
            metrics = to_plain(EVALUATIONS[name](self.model(record), self.data, **params))
            seconds = clock.seconds() - start
        save_json(
            path,
            {
                "key": key,
                "config": config,
                "metrics": metrics,
                "provenance": provenance(device=self.data.y_train.device, wall_seconds=seconds),
            },
        )
        self.computed.append(f"{self.label}: {path.name}")
        self.eval_devices.add(device_name(self.data.y_train.device))
        if self.announce:
            print(f"{self.label}: {path.name} ({seconds:.0f} s)", flush=True)
        return {"seed": record.seed, "metrics": metrics}

    def evaluate_shard(
        self, record: RunRecord, name: str, params: dict, shard: int, force=False, load=None
    ) -> dict:
        """Shard ``shard`` of evaluation ``name`` (PGD or AutoAttack) of one recorded run, read
        when recorded, else computed and recorded in ``evaluations/shards/``: the record, with
        the per-point results (``points``) that :func:`clustr_lib.evaluations.merge_shards`
        turns into the evaluation's metrics. ``load``: returns the run's network (default: load
        it), called only when the shard must be computed."""
        key = evaluation_key(record, name, params)
        recorded = None if force else self._recorded_shard(record, key, params, shard)
        if recorded is not None:
            return recorded
        start = clock.seconds()
        model = load() if load is not None else self.model(record)
        points = to_plain(SHARDED[name](model, self.data, shard=shard, **params))
        recorded = {
            "key": {**key, "shard": shard},
            "config": record.config,
            "points": points,
            "provenance": provenance(
                device=self.data.y_train.device, wall_seconds=clock.seconds() - start
            ),
        }
        save_json(self._evaluation_path(record, key, shard), recorded)
        return recorded

    def _recorded_shard(self, record: RunRecord, key: dict, params: dict, shard: int):
        """The record of shard ``shard`` of the evaluation ``key``, ``None`` if absent or
        damaged (its per-point results must cover the shard's points)."""
        start, stop = shard_range(self.data, params, shard)
        path = self._evaluation_path(record, key, shard)
        return self._recorded_evaluation(path, {**key, "shard": shard}, points=stop - start)

    def describe(self) -> str:
        """One line: what this source is, at which scale, and where its results are recorded."""
        scale = (
            "the paper's protocol"
            if self.at_scale
            else "**not a reproduction** (stand-in data or a reduced protocol)"
        )
        return (
            f"**{self.label}**: {self.dataset}, {self.seeds_text}, {scale}; "
            f"results in `{Path(self.results_dir).name}/`"
        )


def paper_source(
    dataset: str,
    *,
    stand_in=None,
    overrides=None,
    train_size=None,
    test_size=None,
    results_dir=None,
    data_dir=None,
    device="auto",
    seeds: int = 1,
    repo_root=".",
    download: bool = True,
) -> Source:
    """The runs of chapters 3–5 for ``dataset`` (or for ``stand_in`` in its place). The
    keyword arguments are a profile's ``scale`` (``notebooks/profiles.yml``). With
    ``download=False`` (a plan) data that is not on disk is not fetched: ``data`` is then
    ``None``."""
    used = stand_in or dataset
    at_scale = stand_in is None and not overrides and train_size is None and test_size is None
    try:
        data = images(used, data_dir, device, train_size, test_size, download=download)
    except DatasetUnavailable:
        if download:
            raise
        data = None
    return Source(
        label=dataset if used == dataset else f"{used} for {dataset}",
        dataset=used,
        paper_dataset=dataset,
        settings=protocol.settings(used, overrides),
        seeds=int(seeds),
        results_dir=Path(results_dir or Path(repo_root) / "results" / used),
        at_scale=at_scale,
        data=data,
    )


STUDIES = {  # the recorded studies and the GPU ones prepared: name → (definition, label, key)
    # the paper's protocol as the official code trains it: the study chapters 6–11 read
    "digits32-official": (protocol.DIGITS32_OFFICIAL, "digits32 study", "study"),
    # its first recording, with our variant of the recipe: shown beside it in chapter 6
    "digits32": (protocol.DIGITS32_STUDY, "digits32 study, our recipe", "study_ours"),
    # Fashion-MNIST at CPU scale (issue 14): 4 methods and the logprob variant, 3 seeds
    "fashion32": (protocol.FASHION32_STUDY, "fashion32 study", "fashion32"),
    # the same at the paper's full protocol, for a GPU (not recorded by this book's machines)
    "fashion32-paper": (protocol.FASHION32_PAPER, "fashion32, paper's protocol", "fashion32_paper"),
    # its first slice, for a short GPU slot: 2 methods, attacks on 500 test points
    "fashion32-paper-500": (
        protocol.FASHION32_PAPER_500,
        "fashion32, paper's protocol, 500 points attacked",
        "fashion32_paper_500",
    ),
}


def study_sources(name: str, repo_root=".", device="auto") -> list[Source]:
    """A recorded CPU study (:data:`STUDIES`) and each of its variants, as sources: our
    measurements at CPU scale, never a reproduction of a paper number. Each variant (e.g.
    ClusTR + QTRADES in our ``logprob`` form) is recorded in ``<results>-<variant>``."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; known: {', '.join(STUDIES)}")
    return study_sources_of(*STUDIES[name], repo_root=repo_root, device=device)


def study_sources_of(study: dict, label: str, key: str, repo_root=".", device="auto") -> list:
    """:func:`study_sources` of a study given by its entry of :data:`STUDIES`: its definition,
    its label and its key (a worker rebuilds a study's sources from it,
    :func:`clustr_lib.executors.do`)."""
    dataset = study.get("dataset", "digits32")
    main = {"overrides": {}, "methods": study.get("methods")}  # None: every method
    variants = {None: main, **study.get("variants", {})}
    return [
        Source(
            label=label if variant is None else f"{label}, {variant} QTRADES",
            name=key if variant is None else f"{key}_{variant}",
            dataset=dataset,
            paper_dataset=None,
            settings=protocol.settings(dataset, {**study["overrides"], **spec["overrides"]}),
            seeds=study["seeds"],
            results_dir=Path(repo_root)
            / "results"
            / (study["results"] if variant is None else f"{study['results']}-{variant}"),
            at_scale=False,
            data=images(dataset, device=device, train_size=study.get("train_size")),
            only_methods=spec["methods"],
            variant=variant,
        )
        for variant, spec in variants.items()
    ]


def digits32_study(repo_root=".", device="auto") -> Source:
    """Chapter 6's recorded study at the paper's protocol, the one chapters 6–11 read: 7
    methods x 3 seeds on digits32 (our measurement, not a reproduction of a paper number)."""
    return study_sources("digits32-official", repo_root, device)[0]


def digits32_studies(repo_root=".", device="auto", ours: bool = False) -> list[Source]:
    """The study at the paper's protocol, then ClusTR + QTRADES in our ``logprob`` form beside
    it (the same recipe otherwise), then (``ours``) the first recording with our variant of
    the recipe (``results/digits32``)."""
    found = study_sources("digits32-official", repo_root, device)
    return found + (study_sources("digits32", repo_root, device) if ours else [])


EVALUATION_CHAPTERS = {  # chapter → the paper datasets it reads, and whether it reads the
    # study's logprob QTRADES variant beside the study (the audit's question about it)
    "07_eps_ablation": (["cifar10", "svhn", "cifar100"], False),
    "08_d_ablation": (["cifar10", "svhn", "cifar100"], False),
    "09_adaptive_attack": (["cifar10", "svhn"], False),
    "10_audit": (["cifar10", "svhn", "cifar100"], True),
    "11_kmeans_nominal": (["cifar10"], False),
}


def chapter_sources(chapter: str, *, study: bool = True, repo_root=".", **scale) -> list[Source]:
    """The sources of an evaluation chapter (:data:`EVALUATION_CHAPTERS`): one per paper
    dataset it reads (at a profile's ``scale``), then (``study``) the digits32 study at the
    paper's protocol, and in the audit its ``logprob`` QTRADES variant beside it."""
    if chapter not in EVALUATION_CHAPTERS:
        raise ValueError(
            f"unknown evaluation chapter {chapter!r}; known: {', '.join(EVALUATION_CHAPTERS)}"
        )
    datasets, variants = EVALUATION_CHAPTERS[chapter]
    sources = [paper_source(d, repo_root=repo_root, **scale) for d in datasets]
    if study:
        found = digits32_studies(repo_root, scale.get("device", "auto"))
        sources += found if variants else found[:1]
    return sources
