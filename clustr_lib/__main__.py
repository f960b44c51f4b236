"""``python -m clustr_lib run|plan|build|record``: the papermill batch, its plan (what it
would train and evaluate), the book build, and the recording of a CPU study: its runs, then
the evaluations its chapters make of them (resumable: recorded runs and evaluations are read,
an interrupted run resumes from its checkpoint)."""

from __future__ import annotations

import argparse
import json
import sys

from . import book
from .executors import EXECUTORS, check_executor, execute
from .plan import make_plan
from .recording import record_study
from .sources import STUDIES
from .studies import STUDY_CHAPTERS


def add_execution_options(command, executors_help: str) -> None:
    """``--executor``, ``--address`` and ``--threads`` of a command that executes tasks."""
    command.add_argument(
        "--executor",
        default="local",
        choices=EXECUTORS,
        help=f"{executors_help} (default: %(default)s)",
    )
    command.add_argument("--address", help="with --executor ray: a Ray cluster (e.g. auto)")
    command.add_argument(
        "--threads", type=int, help="torch threads per task (default: torch's; 1 on Ray's CPUs)"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clustr_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebooks with papermill")
    run.add_argument(
        "--profile",
        default=book.DEFAULT_PROFILE,
        help="parameter profile from notebooks/profiles.yml (default: %(default)s)",
    )
    run.add_argument("--only", nargs="+", metavar="CHAPTER", help="run only these chapters")
    add_execution_options(
        run,
        "local: the notebooks train and evaluate what they need, one after another; ray: first "
        "every missing run and evaluation of the plan as tasks on Ray",
    )
    plan = sub.add_parser(
        "plan", help="list the runs and evaluations a build needs, recorded or not (runs nothing)"
    )
    plan.add_argument("--profile", default=book.DEFAULT_PROFILE, help="(default: %(default)s)")
    plan.add_argument("--only", nargs="+", metavar="CHAPTER", help="plan only these chapters")
    plan.add_argument("--json", action="store_true", help="the plan as JSON on stdout")
    plan.add_argument("--device", default="auto", help="for the estimates (default: %(default)s)")
    build = sub.add_parser("build", help="build the Jupyter Book (warnings are errors)")
    build.add_argument("--no-strict", action="store_true", help="do not fail on warnings")
    record = sub.add_parser("record", help="train (or read) every run of a recorded study")
    record.add_argument("study", choices=sorted(STUDIES), help="the study")
    record.add_argument("--device", default="auto", help="cpu, cuda, … (default: %(default)s)")
    add_execution_options(
        record,
        "local: one task after another here; ray: each seed's tasks spread over Ray's workers, "
        "one CPU (or GPU) each",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            check_executor(args.executor, args.address)
            if args.executor != "local":
                execute(
                    make_plan(args.profile, args.only), args.executor, args.address, args.threads
                )
            book.run(args.profile, args.only)
            return 0
        if args.command == "plan":
            found = make_plan(args.profile, args.only, device=args.device)
            print(json.dumps(found.to_json(), indent=1) if args.json else found.summary())
            return 0
        if args.command == "record":
            params = {c: book.default_parameters(c) for c in STUDY_CHAPTERS}
            record_study(
                args.study,
                params,
                book.ROOT,
                args.device,
                args.executor,
                args.address,
                args.threads,
            )
            return 0
        return book.build(strict=not args.no_strict)
    except (book.PlanError, RuntimeError) as err:  # ExecutionError is a RuntimeError
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, book.PlanError) else 1


if __name__ == "__main__":
    sys.exit(main())
