"""The papermill batch and the Jupyter Book build behind ``python -m clustr_lib``.

``notebooks/*.ipynb`` (outputs stripped, one ``parameters`` cell each) plus one
profile's parameters from ``notebooks/profiles.yml`` → papermill → executed copies in
``book/chapters/`` → ``jupyter-book build`` → ``_build/html``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import papermill
import yaml
from papermill.exceptions import PapermillExecutionError

from .report import write_summary

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PROFILES = NOTEBOOKS / "profiles.yml"
EXECUTED = ROOT / "book" / "chapters"
SUMMARY = EXECUTED / "summary.md"  # generated from the chapters' JSON results at every build
DEFAULT_PROFILE = "smoke"
# the runner passes `profile` and `output_dir` to every notebook, and these to those that
# declare them
OPTIONAL_RUNNER_PARAMETERS = {"repo_root": str(ROOT)}


class PlanError(ValueError):
    """A run request that cannot be carried out; raised before anything runs."""


def load_profiles(path: Path = PROFILES) -> dict:
    """``{profile: {chapter: {parameter: value}}}`` from the profiles file."""
    with open(path) as handle:
        profiles = yaml.safe_load(handle) or {}
    if not isinstance(profiles, dict):
        raise PlanError(f"{path} must map profile names to chapters")
    return profiles


def chapters(notebooks: Path = NOTEBOOKS) -> list[str]:
    """Names of the source notebooks, in book order."""
    return sorted(p.stem for p in notebooks.glob("*.ipynb"))


def declared_parameters(notebook: Path) -> set[str]:
    """Names defined in a notebook's ``parameters`` cell (via papermill)."""

    return set(papermill.inspect_notebook(str(notebook)))


def plan(
    profile: str,
    only=None,
    notebooks: Path = NOTEBOOKS,
    profiles_path: Path = PROFILES,
    output_dir: Path = EXECUTED,
) -> list[tuple[str, dict]]:
    """Check a request and return ``[(chapter, parameters)]``; raise :class:`PlanError`.

    Refuses an unknown profile, an unknown chapter, and parameters a notebook does
    not declare, before any notebook runs.
    """
    profiles = load_profiles(profiles_path)
    if profile not in profiles:
        raise PlanError(f"unknown profile {profile!r}; profiles: {', '.join(sorted(profiles))}")
    known = chapters(notebooks)
    selected = list(only) if only else known
    missing = [c for c in selected if c not in known]
    if missing:
        raise PlanError(f"unknown chapter(s) {', '.join(missing)}; chapters: {', '.join(known)}")
    settings = profiles[profile] or {}
    stray = sorted(set(settings) - set(known))
    if stray:
        raise PlanError(
            f"profile {profile!r} names chapter(s) with no notebook: {', '.join(stray)}"
        )
    steps = []
    for chapter in selected:
        params = dict(settings.get(chapter) or {})
        params.update(profile=profile, output_dir=str(output_dir))
        declared = declared_parameters(notebooks / f"{chapter}.ipynb")
        params.update({k: v for k, v in OPTIONAL_RUNNER_PARAMETERS.items() if k in declared})
        undeclared = sorted(set(params) - declared)
        if undeclared:
            raise PlanError(
                f"{chapter}.ipynb does not declare parameter(s) "
                f"{', '.join(undeclared)} in its 'parameters' cell"
            )
        steps.append((chapter, params))
    return steps


def run(
    profile: str = DEFAULT_PROFILE,
    only=None,
    notebooks: Path = NOTEBOOKS,
    profiles_path: Path = PROFILES,
    output_dir: Path = EXECUTED,
    out=None,
) -> list:
    """Execute the planned notebooks with papermill; one line per notebook with its wall time.

    Returns ``[(chapter, seconds)]``. On a failing cell, raises ``RuntimeError`` naming
    the notebook and the cell.
    """
    steps = plan(profile, only, notebooks, profiles_path, output_dir)
    out = sys.stdout if out is None else out
    output_dir.mkdir(parents=True, exist_ok=True)
    interactive = sys.stderr.isatty()
    timings = []
    # off a terminal the kernels inherit CLUSTR_PROGRESS=0: no progress-bar residue in the book
    with _environment(CLUSTR_PROGRESS="1" if interactive else "0"):
        for chapter, params in steps:
            timings.append(
                _execute(chapter, params, profile, notebooks, output_dir, interactive, out)
            )
    return timings


@contextlib.contextmanager
def _environment(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _execute(chapter, params, profile, notebooks, output_dir, interactive, out):
    """Run one notebook; return ``(chapter, seconds)`` or raise naming the failing cell."""

    target = output_dir / f"{chapter}.ipynb"
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebooks / f"{chapter}.ipynb"),
            str(target),
            parameters=params,
            kernel_name="python3",
            progress_bar=interactive,
            cwd=str(output_dir),
            log_output=False,
        )
    except PapermillExecutionError as err:
        first_line = (err.source or "").strip().splitlines()[:1]
        raise RuntimeError(
            f"{chapter}.ipynb failed in the cell starting `{first_line[0] if first_line else ''}` "
            f"(execution count {err.exec_count}): {err.ename}: {err.evalue}\n"
            f"the partly executed notebook is {target}"
        ) from None
    seconds = time.perf_counter() - start
    print(f"{chapter:<32} {profile:<8} {seconds:7.1f} s", file=out, flush=True)
    return chapter, seconds


def build(root: Path = ROOT, strict: bool = True) -> int:
    """Write the summary page from the chapters' results (:func:`clustr_lib.report.write_summary`),
    then ``jupyter-book build --all`` of the book at ``root`` (a full rebuild, so no warning
    hides in an incremental one); warnings are errors when ``strict``."""
    missing = [c for c in chapters() if not (EXECUTED / f"{c}.ipynb").exists()]
    if missing:
        raise PlanError(
            f"no executed copy of {', '.join(missing)}; run `python -m clustr_lib run` first"
        )
    write_summary(EXECUTED, SUMMARY)
    script = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(script) if script.exists() else "jupyter-book", "build", "--all", str(root)]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    return subprocess.call(cmd)
