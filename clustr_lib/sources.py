"""The trained runs an evaluation chapter (7–11) reads: a dataset at one protocol, as
chapters 3–6 recorded them, and the evaluations made of them, recorded the same way.

A :class:`Source` never retrains what another chapter trained: :meth:`Source.runs` goes
through :func:`clustr_lib.experiments.run`, which returns the recorded result (and the
weights next to it) when there is one, and trains only a run nobody has recorded yet (a
chapter run on its own on Colab). :meth:`Source.evaluate` records each measurement of
:mod:`clustr_lib.evaluations` as one JSON per (run, measurement, parameters) under
``<results_dir>/evaluations/``, with its provenance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from . import experiments, paper
from .evaluations import EVALUATIONS

# Chapter 6's digits32 study: 7 methods x 3 seeds at CPU scale, recorded in results/digits32.
DIGITS32_STUDY = {
    "seeds": 3,
    "overrides": {
        "width": 4,            # ResNet-18 base width (32-d embedding instead of 512)
        "batch_size": 128,     # cross-entropy batch (1,347 training images)
        "ce_epochs": 15,       # warm start and baselines (Free AT: 2 epochs of 8 replays)
        "ce_milestones": [8, 12],
        "magnet_epochs": 10,   # Magnet fine-tuning; Magnet from random init gets 15 + 10
        "eval_size": 80,       # test points attacked (clean accuracy uses all 450)
        "pgd_restarts_per_pass": 1,  # restarts one at a time, each on the points still robust
    },
}

_DATA = {}


def _images(name, data_dir, device, train_size, test_size):
    """Each dataset is loaded once per process (the chapters read several sources)."""
    from .data import load_images

    key = (name, str(data_dir), str(device), train_size, test_size)
    if key not in _DATA:
        _DATA[key] = load_images(name, data_dir=data_dir, device=device,
                                 train_size=train_size, test_size=test_size)
    return _DATA[key]


@dataclass
class Source:
    """Trained runs of one dataset at one protocol.

    Attributes:
        label: how tables name it (``"cifar10"``, ``"digits32 for cifar10"``, ``"digits32 study"``).
        dataset: the dataset the models were trained on.
        paper_dataset: the paper's dataset whose numbers it is compared with (``None``: none).
        settings: the protocol (:func:`clustr_lib.paper.settings`).
        seeds: runs per method; results_dir: where the runs are recorded.
        at_scale: the paper's protocol on the paper's dataset (only then a verdict).
        data: the images, on the device.
    """

    label: str
    dataset: str
    paper_dataset: str | None
    settings: dict
    seeds: int
    results_dir: Path
    at_scale: bool
    data: object
    record_only: bool = False   # raise instead of computing an evaluation that is not recorded
    train_devices: set = field(default_factory=set)  # devices that trained the runs read
    eval_devices: set = field(default_factory=set)  # devices that made the evaluations read
    computed: list = field(default_factory=list)   # "label: file" of evaluations computed here
    loaded: list = field(default_factory=list)     # "label: file" of evaluations read from the record

    @property
    def methods(self) -> list[str]:
        """Methods with runs here: those of the paper's table for its dataset (chapters 3–5
        train exactly those), all seven for the digits32 study."""
        if self.paper_dataset is None:
            return list(experiments.METHODS)
        reported = paper.accuracy_table(self.paper_dataset)
        return [m for m, name in experiments.METHODS.items() if name in reported]

    def verdict(self, holds: bool, profile: str) -> str:
        """The verdict on a paper claim from this source: only at the paper's scale."""
        return paper.verdict(holds, profile if self.at_scale else "stand-in")

    @property
    def models_dir(self) -> Path:
        return Path(self.results_dir) / "models"

    def runs(self, method: str, force: bool = False) -> list[dict]:
        """The recorded result of ``method`` for every seed (trained only if missing)."""
        results = experiments.run_methods(self.dataset, [method], self.seeds, self.settings,
                                          self.data, results_dir=self.results_dir,
                                          models_dir=self.models_dir, force=force)
        self.train_devices.update(r["provenance"]["device"] for r in results)
        return results

    def model(self, result: dict):
        """The trained evaluation model of a recorded run."""
        return experiments.load_model(result["config"], self.data, self.models_dir)

    def evaluate(self, method: str, name: str, params: dict, force: bool = False) -> list[dict]:
        """Measurement ``name`` (a key of :data:`clustr_lib.evaluations.EVALUATIONS`) with
        ``params`` on every seed's model of ``method``: ``[{"seed", "metrics"}]``."""
        if method not in self.methods:
            raise ValueError(f"{self.label} has no {method!r} runs; it has {', '.join(self.methods)}")
        if name not in EVALUATIONS:
            raise ValueError(f"unknown evaluation {name!r}; known: {', '.join(EVALUATIONS)}")
        return [self._evaluate_run(result, name, params, force) for result in self.runs(method)]

    def _evaluate_run(self, result, name, params, force):
        config = result["config"]
        key = {"run": experiments.config_hash(config), "run_created": result["provenance"]["created"],
               "evaluation": name, "params": experiments._plain(params)}
        path = (Path(self.results_dir) / "evaluations" /
                f"{config['dataset']}-{config['method']}-s{config['seed']}-{name}-"
                f"{experiments.config_hash(key)}.json")
        if not force and path.exists():
            recorded = experiments.load_json(path)
            if recorded.get("key") == key:
                self.loaded.append(f"{self.label}: {path.name}")
                self.eval_devices.add(recorded["provenance"]["device"])
                return {"seed": config["seed"], "metrics": recorded["metrics"]}
        if self.record_only:
            raise LookupError(f"{self.label}: evaluation {name} {params} of {config['method']}, "
                              f"seed {config['seed']} is not recorded ({path.name})")
        start = time.perf_counter()
        metrics = EVALUATIONS[name](self.model(result), self.data, **params)
        experiments.save_json(path, {
            "key": key, "config": config, "metrics": metrics,
            "provenance": experiments.provenance(device=self.data.y_train.device,
                                                 wall_seconds=time.perf_counter() - start)})
        self.computed.append(f"{self.label}: {path.name}")
        self.eval_devices.add(experiments.device_name(self.data.y_train.device))
        return {"seed": config["seed"], "metrics": experiments._plain(metrics)}

    def describe(self) -> str:
        """One line: what this source is, at which scale, and where its results are recorded."""
        scale = ("the paper's protocol" if self.at_scale else
                 "**not a reproduction** (stand-in data or a reduced protocol)")
        return (f"**{self.label}**: {self.dataset}, {self.seeds} seed(s), {scale}; "
                f"results in `{Path(self.results_dir).name}/`")


def paper_source(dataset: str, *, stand_in=None, overrides=None, train_size=None,
                 test_size=None, results_dir=None, data_dir=None, device="auto", seeds: int = 1,
                 repo_root=".") -> Source:
    """The runs of chapters 3–5 for ``dataset`` (or for ``stand_in`` in its place)."""
    used = stand_in or dataset
    at_scale = stand_in is None and not overrides and train_size is None and test_size is None
    return Source(
        label=dataset if used == dataset else f"{used} for {dataset}", dataset=used,
        paper_dataset=dataset, settings=paper.settings(used, overrides), seeds=int(seeds),
        results_dir=Path(results_dir or Path(repo_root) / "results" / used), at_scale=at_scale,
        data=_images(used, data_dir, experiments.resolve_device(device), train_size, test_size))


def digits32_study(repo_root=".", device="auto") -> Source:
    """Chapter 6's recorded study: 7 methods x 3 seeds on digits32 (our measurement, not a
    reproduction of a paper number)."""
    return Source(
        label="digits32 study", dataset="digits32", paper_dataset=None,
        settings=paper.settings("digits32", DIGITS32_STUDY["overrides"]),
        seeds=DIGITS32_STUDY["seeds"], results_dir=Path(repo_root) / "results" / "digits32",
        at_scale=False,
        data=_images("digits32", None, experiments.resolve_device(device), None, None))


def chapter_sources(datasets, *, study: bool, repo_root=".", **paper_args) -> list[Source]:
    """The sources of an evaluation chapter: one per paper dataset, then the digits32 study."""
    sources = [paper_source(d, repo_root=repo_root, **paper_args) for d in datasets]
    if study:
        sources.append(digits32_study(repo_root, paper_args.get("device", "auto")))
    return sources


def banner(sources: list[Source], profile: str) -> str:
    """Markdown naming what a chapter evaluates, with a warning when a paper dataset is
    replaced by a stand-in or the protocol is reduced."""
    lines = [f"Page built with profile `{profile}`. Evaluated:", ""]
    lines += [f"* {s.describe()}" for s in sources]
    if any(s.paper_dataset and not s.at_scale for s in sources):
        warning = ("> **Not a reproduction.** The paper's datasets are replaced by a stand-in or "
                   "the protocol is reduced in this build: those sections exercise the chapter's "
                   "code end to end, their numbers say nothing about the paper's, and no verdict "
                   "is drawn from them.")
        lines = [warning, ""] + lines
    if any(s.paper_dataset is None for s in sources):
        note = ("The digits32 study's numbers are **our measurement** on a stand-in dataset "
                "(chapter 6: narrow ResNet-18, 3 seeds, the paper's attack protocol on 80 test "
                "points), recorded in `results/digits32/evaluations/`; they are not the paper's.")
        lines += ["", note]
    return "\n".join(lines)


def provenance_table(sources: list[Source], profile: str):
    """Where a chapter's numbers come from, one row per source: profile, dataset, seeds, the
    devices that trained the models and made the evaluations, and how many evaluations were
    read from the record or computed while building the page."""
    import pandas as pd

    rows = []
    for s in sources:
        rows.append({"source": s.label, "profile": profile, "dataset": s.dataset,
                     "seeds": s.seeds, "paper's protocol": s.at_scale,
                     "trained on": ", ".join(sorted(s.train_devices)) or "—",
                     "evaluated on": ", ".join(sorted(s.eval_devices)) or "(recorded in the runs)",
                     "evaluations read": len(s.loaded), "evaluations computed": len(s.computed)})
    return pd.DataFrame(rows).set_index("source")


def save_chapter_result(output_dir, chapter: str, profile: str, sources: list[Source],
                        started: float, **content) -> Path:
    """Write an evaluation chapter's JSON result: ``content`` (verdicts, rows), the
    evaluations it read and computed, and its provenance (wall time since ``started``, a
    ``time.perf_counter()`` value, and :func:`provenance_table`)."""
    return experiments.save_json(Path(output_dir) / f"{chapter}.json", {
        "chapter": chapter, "profile": profile, **content,
        "computed": [n for s in sources for n in s.computed],
        "recorded": [n for s in sources for n in s.loaded],
        "provenance": experiments.provenance(
            wall_seconds=time.perf_counter() - started,
            sources=provenance_table(sources, profile).reset_index().to_dict(orient="records"))})
