"""``python -m clustr_lib run|build``: the papermill batch and the book build."""

from __future__ import annotations

import argparse
import sys

from . import book


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
    build = sub.add_parser("build", help="build the Jupyter Book (warnings are errors)")
    build.add_argument("--no-strict", action="store_true", help="do not fail on warnings")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            book.run(args.profile, args.only)
            return 0
        return book.build(strict=not args.no_strict)
    except (book.PlanError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, book.PlanError) else 1


if __name__ == "__main__":
    sys.exit(main())
