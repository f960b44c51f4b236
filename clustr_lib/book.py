"""The papermill batch and the Jupyter Book build behind ``python -m clustr_lib``.

``notebooks/*.ipynb`` (outputs stripped, one ``parameters`` cell each) plus one
profile's parameters from ``notebooks/profiles.yml`` → papermill → executed copies in
``book/chapters/`` → ``jupyter-book build`` → ``_build/html``.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import papermill
import yaml
from nbclient.exceptions import DeadKernelError
from papermill.exceptions import PapermillExecutionError

from .report import write_summary

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PROFILES = NOTEBOOKS / "profiles.yml"
EXECUTED = ROOT / "book" / "chapters"
SUMMARY = EXECUTED / "summary.md"  # generated from the chapters' JSON results at every build
DEFAULT_PROFILE = "smoke"
CONFIG = ROOT / "_config.yml"  # the book's settings: its repository address among them
MATHJAX = ROOT / "_mathjax" / "mathjax" / "tex-chtml.js"  # `make mathjax` fetches it from npm
# the runner passes `profile` and `output_dir` to every notebook, and `repo_root` to those that
# declare it: paths relative to the folder the notebook runs in, so that no page shows the
# building machine's absolute paths
OPTIONAL_RUNNER_PARAMETERS = ("repo_root",)
# a chapter's entry in a profile may borrow another profile's parameters: ``{profile: full}``
# runs it exactly as that profile does, and its page and result name that profile
BORROW = "profile"
# the repository a notebook names: its Colab links and its Colab cell's clone command
_ADDRESSES = (
    re.compile(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/"),
    re.compile(r"git clone[^\n]*?https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?(?=[\s\"']|$)"),
)
# ``run`` removes ``*.tmp`` files under the output folder not modified for this long: temporary
# files of killed runs (``.<name>.<random>.tmp`` of an atomic write, a checkpoint's
# ``.<name>.tmp``); a younger one may be another process's write in flight
STALE_TEMP_SECONDS = 600


class PlanError(ValueError):
    """A run request that cannot be carried out; raised before anything runs."""


def load_profiles(path: Path = PROFILES) -> dict:
    """``{profile: {chapter: {parameter: value}}}`` from the profiles file.

    A file that cannot be read, is not YAML, or is not shaped so (a profile that is a list, a
    chapter's parameters that are not a mapping, names that are not strings) is a
    :class:`PlanError` naming the file and what is wrong. An empty profile or chapter is ``{}``.
    """
    try:
        with open(path) as handle:
            profiles = yaml.safe_load(handle)
    except FileNotFoundError:
        raise PlanError(f"{path}: no such file (the profiles file)") from None
    except OSError as err:
        raise PlanError(f"{path}: cannot read the profiles file ({err})") from None
    except yaml.YAMLError as err:
        raise PlanError(f"{path} is not valid YAML: {err}") from None
    profiles = {} if profiles is None else profiles
    if not isinstance(profiles, dict):
        raise PlanError(f"{path} must map profile names to chapters, got {type(profiles).__name__}")
    checked = {}
    for name, settings in profiles.items():
        if not isinstance(name, str):
            raise PlanError(f"{path}: profile names must be strings, got {name!r}")
        settings = {} if settings is None else settings
        if not isinstance(settings, dict):
            raise PlanError(
                f"{path}: profile {name!r} must map chapters to parameters, "
                f"got {type(settings).__name__}"
            )
        checked[name] = {}
        for chapter, params in settings.items():
            where = f"{path}: profile {name!r}, chapter {chapter!r}"
            if not isinstance(chapter, str):
                raise PlanError(f"{path}: profile {name!r}: chapter names must be strings")
            params = {} if params is None else params
            if not isinstance(params, dict):
                raise PlanError(
                    f"{where}: parameters must be a mapping of names to values, "
                    f"got {type(params).__name__}"
                )
            bad = [key for key in params if not isinstance(key, str)]
            if bad:
                raise PlanError(f"{where}: parameter names must be strings, got {bad[0]!r}")
            checked[name][chapter] = params
    return checked


def repository(config: Path = CONFIG) -> dict:
    """``{"url", "branch", "name"}`` of the book's repository: ``_config.yml``'s
    ``repository`` section, the one setting the pages' Colab links are built from."""
    try:
        settings = yaml.safe_load(Path(config).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PlanError(f"{config}: cannot read the book's settings ({err})") from None
    repo = settings.get("repository") or {}
    url = str(repo.get("url", "")).rstrip("/")
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", url)
    if not match:
        raise PlanError(
            f"{config}: repository.url must be https://github.com/OWNER/NAME, got {url!r}"
        )
    return {"url": url, "branch": str(repo.get("branch", "main")), "name": match.group(1)}


def colab_url(chapter: str, config: Path = CONFIG) -> str:
    """The Colab address of a chapter's *source* notebook (its parameters: the `full` values)."""
    repo = repository(config)
    return (
        f"https://colab.research.google.com/github/{repo['name']}/blob/{repo['branch']}"
        f"/notebooks/{chapter}.ipynb"
    )


def foreign_addresses(notebook: Path, config: Path = CONFIG) -> list[str]:
    """The GitHub repositories a notebook names (its Colab cell's clone command, its links)
    other than the book's own (:func:`repository`)."""
    own = repository(config)["name"]
    nb = nbformat.read(notebook, as_version=4)
    found = {
        m.group(1)
        for cell in nb.cells
        for pattern in _ADDRESSES
        for m in pattern.finditer(cell.source)
    }
    return sorted(name for name in found if name != own)


def chapters(notebooks: Path = NOTEBOOKS) -> list[str]:
    """Names of the source notebooks, in book order."""
    return sorted(p.stem for p in notebooks.glob("*.ipynb"))


def default_parameters(chapter: str, notebooks: Path = NOTEBOOKS) -> dict:
    """The values a chapter's ``parameters`` cell sets (its ``full`` defaults), as Python
    literals: what the chapter asks of a study when a profile changes nothing."""
    nb = nbformat.read(notebooks / f"{chapter}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(cell.source).body
        if isinstance(node, ast.Assign)
    }


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
        params, borrowed = _chapter_parameters(profiles, profile, chapter, profiles_path)
        params.update(profile=borrowed, output_dir=".")  # the notebook runs in output_dir
        declared = declared_parameters(notebooks / f"{chapter}.ipynb")
        runner = {"repo_root": os.path.relpath(ROOT, output_dir)}
        params.update({k: runner[k] for k in OPTIONAL_RUNNER_PARAMETERS if k in declared})
        undeclared = sorted(set(params) - declared)
        if undeclared:
            raise PlanError(
                f"{chapter}.ipynb does not declare parameter(s) "
                f"{', '.join(undeclared)} in its 'parameters' cell"
            )
        foreign = foreign_addresses(notebooks / f"{chapter}.ipynb")
        if foreign:
            raise PlanError(
                f"{chapter}.ipynb names the repository {', '.join(foreign)}, but _config.yml's "
                f"repository.url is {repository()['url']}: change the notebook's Colab cell"
            )
        steps.append((chapter, params))
    return steps


def _chapter_parameters(profiles: dict, profile: str, chapter: str, path) -> tuple[dict, str]:
    """A chapter's parameters in ``profile`` and the profile they are (``{profile: full}``
    borrows that profile's parameters of the chapter, and nothing else may stand beside it)."""
    params = dict(profiles[profile].get(chapter) or {})
    if BORROW not in params:
        return params, profile
    borrowed = params.pop(BORROW)
    where = f"{path}: profile {profile!r}, chapter {chapter!r}"
    if borrowed not in profiles or borrowed == profile:
        raise PlanError(f"{where}: `profile: {borrowed}` names no other profile")
    if params:
        raise PlanError(f"{where}: `profile: {borrowed}` takes no other parameters")
    if BORROW in (profiles[borrowed].get(chapter) or {}):
        raise PlanError(f"{where}: profile {borrowed!r} borrows again")
    return dict(profiles[borrowed].get(chapter) or {}), borrowed


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
    removed = remove_stale_temporaries(output_dir)
    if removed:
        print(f"removed {len(removed)} stale temporary file(s) under {output_dir}", file=out)
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


def remove_stale_temporaries(folder: Path, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete the ``*.tmp`` files under ``folder`` (recursively) not modified for
    ``older_than`` seconds: what killed runs left behind. Returns the paths removed."""
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    for path in sorted(folder.rglob("*.tmp")):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if path.is_file() and now - path.stat().st_mtime > older_than:
                path.unlink()
                removed.append(path)
    return removed


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
    except DeadKernelError as err:
        raise RuntimeError(
            f"{chapter}.ipynb: the kernel died ({err}), out of memory or killed?\n"
            f"the partly executed notebook is {target}"
        ) from None
    seconds = time.perf_counter() - start
    finalise(target, chapter)
    print(f"{chapter:<32} {params['profile']:<8} {seconds:7.1f} s", file=out, flush=True)
    return chapter, seconds


COLAB_LINK = (
    "[Open this chapter in Colab]({url}) — its source notebook, whose parameters are the "
    "`full` profile's (*Runtime → Run all*); the notebook's first cell clones the book's "
    "repository, {repo}, and works in it."
)


def finalise(path: Path, chapter: str) -> None:
    """Make an executed copy read as a page: papermill's cell of injected parameters is
    folded away (it stays in the notebook), and a link to the chapter's source notebook on
    Colab, built from ``_config.yml`` (:func:`colab_url`), follows the title cell."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "hide-cell" not in tags:
            tags.append("hide-cell")
            cell.metadata.setdefault("mystnb", {})["code_prompt_show"] = (
                "Show the parameters of this build"
            )
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), None)
    if first is not None and not any("colab-link" in c.metadata.get("tags", []) for c in nb.cells):
        link = nbformat.v4.new_markdown_cell(
            COLAB_LINK.format(url=colab_url(chapter), repo=repository()["url"])
        )
        link.metadata["tags"] = ["colab-link"]
        nb.cells.insert(first + 1, link)
    nbformat.write(nb, path)


def _unfinished(path: Path) -> str | None:
    """Why the executed copy at ``path`` is not a complete run (``None``: it is)."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:  # a truncated write of a killed run: any parse error
        return f"cannot be read ({type(err).__name__}: {err})"
    meta = nb.metadata.get("papermill")
    if not meta:
        return "was not executed by the runner (no papermill metadata)"
    if meta.get("exception"):
        return "failed (a cell raised an error)"
    if meta.get("end_time") is None:
        return "did not finish (papermill's end_time is unset: the run was killed)"
    for number, cell in enumerate(nb.cells, 1):
        if (
            cell.cell_type == "code"
            and cell.source.strip()
            and "skip-execution" not in cell.metadata.get("tags", [])
            and cell.get("execution_count") is None
        ):
            first = cell.source.strip().splitlines()[0]
            return f"stopped early: cell {number} (`{first}`) was never executed (the kernel died?)"
    return None


def unfinished_chapters(executed: Path, names) -> dict[str, str]:
    """``{chapter: why}`` for the executed copies of ``names`` in ``executed`` that a killed,
    failed or crashed ``run`` left behind (papermill writes the copy as it goes).

    From papermill's own records in the notebook: ``metadata.papermill.exception`` (a failing
    cell), ``metadata.papermill.end_time`` (set only when the run ends), and every non-empty
    code cell's ``execution_count`` (``None`` for a cell never reached, e.g. after the kernel
    died, when papermill still closes the notebook).
    """
    found = {name: _unfinished(executed / f"{name}.ipynb") for name in names}
    return {name: why for name, why in found.items() if why is not None}


def build(
    root: Path = ROOT,
    strict: bool = True,
    notebooks: Path = NOTEBOOKS,
    executed: Path = EXECUTED,
) -> int:
    """Write the summary page from the chapters' results (:func:`clustr_lib.report.write_summary`),
    then ``jupyter-book build --all`` of the book at ``root`` (a full rebuild, so no warning
    hides in an incremental one); warnings are errors when ``strict``.

    Refuses (:class:`PlanError`, before writing anything) a chapter with no executed copy or
    with one a killed, failed or crashed run left (:func:`unfinished_chapters`)."""
    names = chapters(notebooks)
    missing = [c for c in names if not (executed / f"{c}.ipynb").exists()]
    if missing:
        raise PlanError(
            f"no executed copy of {', '.join(missing)}; run `python -m clustr_lib run` first"
        )
    unfinished = unfinished_chapters(executed, names)
    if unfinished:
        raise PlanError(
            "; ".join(f"{c}.ipynb {why}" for c, why in unfinished.items())
            + f" — run `python -m clustr_lib run --only {' '.join(unfinished)}` again"
        )
    if not MATHJAX.exists():
        raise PlanError(
            f"MathJax is missing ({MATHJAX.relative_to(ROOT)}): run `make mathjax` (it fetches "
            "MathJax 3 from npm), so that the book's formulas render without a network"
        )
    write_summary(executed, executed / SUMMARY.name)
    script = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(script) if script.exists() else "jupyter-book", "build", "--all", str(root)]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    return subprocess.call(cmd)
