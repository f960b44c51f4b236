"""Recording a study (``python -m clustr_lib record NAME``): seed after seed, its runs and the
evaluations made of them, resumably, here one task after another or spread over Ray's workers
(:mod:`clustr_lib.executors`)."""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from . import plan as planning
from .clock import count_suspensions
from .executors import check_address, check_executor, execute, ray_session
from .sources import STUDIES, study_sources
from .studies import record_seed


def record_study(
    name: str,
    chapter_params: dict,
    repo_root=".",
    device="auto",
    executor: str = "local",
    address: str | None = None,
    threads: int | None = None,
) -> None:
    """``python -m clustr_lib record NAME``: a recorded study (:data:`STUDIES`) seed after seed
    — every run of the study and of its variants, then the evaluations made of them
    (:func:`clustr_lib.studies.record_seed`) — so that a recording stopped at any time has
    whole seeds. What is recorded is read; an interrupted run resumes from its checkpoint.

    ``executor="ray"`` first spreads each seed's tasks still to do over Ray's workers
    (:func:`clustr_lib.plan.study_plan`, :func:`execute`: one CPU and, by default, one torch
    thread each — on 2 CPU cores, two single-threaded attacks do 1.9 × the work of one
    two-threaded one — or one GPU each); the seed's pass here then only reads them. Locally,
    each evaluation computed prints a line: its record's file and its wall time.

    Suspend a recording made here with SIGTSTP (Ctrl-Z, ``kill -TSTP``) rather than SIGSTOP:
    the time suspended is then not counted in the records' wall times
    (:func:`clustr_lib.clock.count_suspensions`). Under Ray, stop it and start it again instead:
    Ray takes a suspended worker for dead (its task is retried: a run resumes from its last
    epoch, an evaluation starts again)."""
    check_executor(executor, address)
    definition = STUDIES[name][0]
    every = study_sources(name, repo_root, device)
    if threads:
        torch.set_num_threads(int(threads))
    if executor == "ray":
        check_address(address)
    session = ray_session(address) if executor == "ray" else contextlib.nullcontext()
    with count_suspensions(), session:  # one Ray session for every seed
        for seeds in range(1, int(definition["seeds"]) + 1):
            if executor != "local":
                found = planning.study_plan(name, seeds, repo_root, device, chapter_params)
                execute(found, executor, address, threads)
            upto = [  # fresh lists of what each pass read and computed
                dataclasses.replace(source, seeds=seeds, announce=True, loaded=[], computed=[])
                for source in every
            ]
            record_seed(upto, definition, chapter_params)
            for source in upto:
                print(
                    f"{source.label}, seeds 0–{seeds - 1}: runs in {source.results_dir}; "
                    f"{len(source.loaded) + len(source.computed)} evaluations recorded "
                    f"({len(source.computed)} computed now)",
                    flush=True,
                )
