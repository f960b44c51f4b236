"""The papermill runner: requests refused up front, failures named, the real book built
and opened in a headless browser."""

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from clustr_lib import book

ROOT = Path(__file__).resolve().parent.parent


def write_notebook(path, parameters, body):
    nb = new_notebook()
    params = new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [new_code_cell(src) for src in body]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


@pytest.fixture
def tiny_book(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(
        notebooks / "01_ok.ipynb", 'profile = "full"\noutput_dir = "."\nn = 1', ["assert n == 2, n"]
    )
    write_notebook(
        notebooks / "02_fails.ipynb", 'profile = "full"\noutput_dir = "."', ["x = 1", "1 / 0"]
    )
    profiles = tmp_path / "profiles.yml"
    profiles.write_text("smoke:\n  01_ok:\n    n: 2\n  02_fails: {}\ntypo:\n  01_ok:\n    m: 3\n")
    return notebooks, profiles, tmp_path / "out"


def test_unknown_profile_chapter_and_parameter_are_refused_before_running(tiny_book):
    notebooks, profiles, out = tiny_book
    with pytest.raises(book.PlanError, match="unknown profile 'nope'.*smoke"):
        book.plan("nope", None, notebooks, profiles, out)
    with pytest.raises(book.PlanError, match="unknown chapter.*03_missing"):
        book.plan("smoke", ["03_missing"], notebooks, profiles, out)
    with pytest.raises(book.PlanError, match="01_ok.ipynb does not declare parameter.*m"):
        book.run("typo", None, notebooks, profiles, out)
    assert not out.exists()  # nothing ran
    steps = book.plan("smoke", ["01_ok"], notebooks, profiles, out)
    # paths relative to the folder the notebook runs in: no page shows the machine's paths
    assert steps == [("01_ok", {"n": 2, "profile": "smoke", "output_dir": "."})]


def test_a_chapter_can_borrow_another_profiles_parameters(tiny_book):
    """``{profile: full}`` runs a chapter exactly as ``full`` does, and says so (the 2-D
    chapters in the default build); nothing else may stand beside it."""
    notebooks, profiles, out = tiny_book
    profiles.write_text("smoke:\n  01_ok: {profile: full}\nfull:\n  01_ok: {n: 2}\n")
    assert book.plan("smoke", ["01_ok"], notebooks, profiles, out) == [
        ("01_ok", {"n": 2, "profile": "full", "output_dir": "."})
    ]
    for entry, problem in [
        ("{profile: nope}", "names no other profile"),
        ("{profile: smoke}", "names no other profile"),
        ("{profile: full, n: 3}", "takes no other parameters"),
    ]:
        profiles.write_text(f"smoke:\n  01_ok: {entry}\nfull:\n  01_ok: {{n: 2}}\n")
        with pytest.raises(book.PlanError, match=problem):
            book.plan("smoke", ["01_ok"], notebooks, profiles, out)
    real = dict(book.plan("smoke", ["01_certificate_2d", "02_warm_start_2d"]))
    assert {p["profile"] for p in real.values()} == {"full"}  # the 2-D chapters at full


def test_the_repository_address_is_one_setting(tiny_book):
    """Every Colab link of the pages is built from _config.yml; the notebooks' Colab cells
    clone the same address, and a notebook naming another one is refused before running."""
    repo = book.repository()
    assert book.colab_url("01_certificate_2d") == (
        f"https://colab.research.google.com/github/{repo['name']}/blob/{repo['branch']}"
        "/notebooks/01_certificate_2d.ipynb"
    )
    for name in book.chapters():
        path = book.NOTEBOOKS / f"{name}.ipynb"
        assert book.foreign_addresses(path) == [], name
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert "git clone" in first.source and repo["url"] in first.source, name
        assert "remove-cell" in first.metadata.get("tags", []), name
    notebooks, profiles, out = tiny_book
    write_notebook(
        notebooks / "01_ok.ipynb",
        'profile = "full"\noutput_dir = "."\nn = 1',
        ["!git clone -q https://github.com/someone/else /content/book"],
    )
    with pytest.raises(book.PlanError, match="01_ok.ipynb names the repository someone/else"):
        book.plan("smoke", ["01_ok"], notebooks, profiles, out)


def test_the_notebooks_declare_a_runtime_and_colab_metadata():
    for name in book.chapters():
        nb = nbformat.read(book.NOTEBOOKS / f"{name}.ipynb", as_version=4)
        assert "Runtime" in nb.cells[0].source, name
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert "remove-cell" in params.metadata["tags"], name
        if not name.startswith(("01", "02")):  # the 2-D chapters run on Colab's CPU
            assert nb.metadata.get("accelerator") == "GPU", name
            assert nb.metadata["colab"]["gpuType"], name


def test_runner_executes_and_names_the_failing_notebook_and_cell(tiny_book, capsys):
    notebooks, profiles, out = tiny_book
    timings = book.run("smoke", ["01_ok"], notebooks, profiles, out)
    assert [name for name, _ in timings] == ["01_ok"]
    assert "01_ok" in capsys.readouterr().out
    executed = nbformat.read(out / "01_ok.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "hide-cell" in injected[0].metadata["tags"]
    assert str(out) not in injected[0].source  # relative paths only
    with pytest.raises(
        RuntimeError, match=r"02_fails.ipynb failed in the cell starting `1 / 0`.*ZeroDivisionError"
    ):
        book.run("smoke", ["02_fails"], notebooks, profiles, out)


def test_cli_reports_plan_errors_without_a_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "clustr_lib", "run", "--profile", "nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "unknown profile 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_every_profile_matches_the_notebooks():
    for profile in book.load_profiles():
        assert book.plan(profile)  # raises on any mismatch


def test_source_notebooks_are_stripped_and_parameterised():
    for name in book.chapters():
        nb = nbformat.read(book.NOTEBOOKS / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.outputs for c in code), f"{name} has outputs"
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
        assert {"profile", "output_dir"} <= book.declared_parameters(
            book.NOTEBOOKS / f"{name}.ipynb"
        )


@pytest.fixture(scope="session")
def request_log(tmp_path_factory):
    """Where the smoke book's chapters log every run and evaluation they ask for."""
    return tmp_path_factory.mktemp("requests") / "requests.jsonl"


@pytest.fixture(scope="session")
def built_book(request_log):
    """Run the smoke profile and build the book, as the README's command does."""
    env = {**os.environ, "CLUSTR_PROGRESS": "0", "CLUSTR_REQUEST_LOG": str(request_log)}
    for command in (["run", "--profile", "smoke"], ["build"]):
        proc = subprocess.run(
            [sys.executable, "-m", "clustr_lib", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return ROOT / "_build" / "html"


def test_smoke_run_writes_results_with_provenance(built_book):
    import json

    for name in book.chapters():
        result = json.loads((book.EXECUTED / f"{name}.json").read_text())
        assert {"git_commit", "device", "versions", "wall_seconds"} <= set(result["provenance"])
        if name[:2] in ("01", "02"):  # the 2-D chapters run the paper's settings in every build
            assert result["profile"] == "full" and result["scopes"]["2d"]["at_scale"], name
            assert set(result["verdicts"].values()) <= {"reproduced", "not reproduced"}, name
            continue
        assert result["profile"] == "smoke"
        # a smoke build draws no verdict
        assert set(result["verdicts"].values()) <= {
            "not run at this scale",
            "measured (no verdict)",
        }
        if name[:2] in ("07", "08", "09", "10", "11"):  # the study's evaluations: read only
            assert not [n for n in result["computed"] if n.startswith("digits32 study:")], name
            assert any(n.startswith("digits32 study:") for n in result["recorded"]), name


def browser():
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (make test installs it as root)")
        pytest.skip("chromium is not installed")
    return path


STAND_IN_CHAPTERS = ("03", "04", "05", "07", "08", "09", "10", "11")  # smoke: a pipeline check
PAGE_CHECKS = """() => {
  const main = document.querySelector('main');
  const outputs = main.cloneNode(true);  // the page without its code and inline code
  outputs.querySelectorAll('.cell_input, pre, code').forEach(e => e.remove());
  const outside = main.cloneNode(true);  // the page without its pipeline check
  outside.querySelectorAll('.pipeline-check').forEach(e => e.remove());
  return {
    outputs: outputs.textContent,
    images: Array.from(main.querySelectorAll('img')).map(i => ({
      src: i.src.slice(0, 80), ok: i.complete && i.naturalWidth > 0,
      alt: i.getAttribute('alt') || '', inFigure: !!i.closest('figure')})),
    figures: Array.from(main.querySelectorAll('figure')).map(
      f => (f.querySelector('figcaption') || {textContent: ''}).textContent.trim()),
    checks: main.querySelectorAll('details.pipeline-check').length,
    standInTables: Array.from(outside.querySelectorAll('table'))  // the provenance may name them
      .filter(t => t.textContent.includes('digits32 for ')
                   && !t.textContent.includes('evaluations read')).length,
    math: main.querySelectorAll('.math').length,
    untypeset: Array.from(main.querySelectorAll('.math'))
      .filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 40)),
  };
}"""


def test_pages_render_in_a_headless_browser(built_book):
    """Every page, opened with the network cut off: no NaN, no dict repr, no path of the
    building machine; every image has alt text and sits in a figure with a caption; the maths
    is typeset by the MathJax shipped with the book; a stand-in build keeps its stand-in tables
    and figures inside one collapsed pipeline check per page."""
    from playwright.sync_api import sync_playwright

    chapter_pages = [f"book/chapters/{c}.html" for c in book.chapters()]
    pages = [
        "book/intro.html",
        *chapter_pages,
        "book/chapters/summary.html",
        "book/deviations.html",
    ]
    machine = [str(ROOT), os.path.expanduser("~") + "/"]
    with sync_playwright() as p:
        chrome = p.chromium.launch(
            executable_path=browser(),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        context = chrome.new_context()
        requested = []

        def offline(route):  # the built book must need nothing from the network
            if route.request.url.startswith(("file:", "data:")):
                return route.continue_()
            requested.append(route.request.url)
            return route.abort()

        context.route("**/*", offline)
        page = context.new_page()
        typeset = 0
        for rel in pages:
            source = (built_book / rel).read_text()
            assert not [m for m in machine if m in source], f"{rel}: an absolute path"
            page.goto((built_book / rel).as_uri())
            page.wait_for_load_state("load")
            if page.locator("main .math").count():
                page.wait_for_function(
                    "() => window.MathJax && MathJax.startup && MathJax.startup.promise"
                )
                page.evaluate("() => MathJax.startup.promise")
            found = page.evaluate(PAGE_CHECKS)
            images = found["images"]
            if rel.endswith("summary.html"):  # generated from the chapters' results
                assert page.locator("main table tr", has_text="C22").count() == 1, rel
                assert "What we found" in found["outputs"], rel
            elif rel in chapter_pages:
                assert len(images) >= 1, f"{rel}: figures missing"
            assert all(i["ok"] for i in images), f"{rel}: broken image {images}"
            bad_alt = [i for i in images if not i["alt"].strip() or i["alt"].endswith(".png")]
            assert not bad_alt, f"{rel}: images without alt text {bad_alt}"
            assert all(i["inFigure"] for i in images), f"{rel}: an image outside a figure"
            assert all(found["figures"]), f"{rel}: a figure without a caption"
            text = found["outputs"]
            assert not re.search(r"\b(NaN|nan)\b", text), f"{rel}: NaN shown"
            assert not re.search(r"\{['\"][^'\"]+['\"]: ", text), f"{rel}: a dict repr"
            assert "Traceback" not in text and "Error" not in text, rel
            assert not found["untypeset"], f"{rel}: maths not typeset {found['untypeset']}"
            typeset += found["math"]
            if rel in chapter_pages and rel.split("/")[-1][:2] in STAND_IN_CHAPTERS:
                assert found["checks"] == 1, f"{rel}: {found['checks']} pipeline checks"
                assert found["standInTables"] == 0, f"{rel}: a stand-in table in the main flow"
            assert page.locator("main .output.error, main .output.traceback").count() == 0, rel
            assert page.locator("main .output.stderr").count() == 0, f"{rel}: stderr output"
        assert typeset > 20  # the chapters' formulas, typeset offline
        assert not requested, f"the book asked the network for {requested[:3]}"
        chrome.close()


# --- Broken profiles, half-run notebooks and stale temp files (issue 13) -----------------


@pytest.mark.parametrize(
    "text, problem",
    [
        ("smoke:\n  01_ok: {n: 2\n", "not valid YAML"),
        ("- smoke\n- full\n", "must map profile names to chapters"),
        ("smoke:\n  - 01_ok\n", "profile 'smoke' must map chapters to parameters, got list"),
        ("smoke:\n  01_ok: [n, 2]\n", "'smoke', chapter '01_ok': .* a mapping .* got list"),
        ("smoke:\n  01_ok: 3\n", "'smoke', chapter '01_ok': .* a mapping .* got int"),
        ("smoke:\n  01_ok:\n    3: x\n", "'smoke', chapter '01_ok': parameter names .* 3"),
    ],
)
def test_a_broken_or_oddly_shaped_profiles_file_is_a_plan_error(tiny_book, text, problem):
    notebooks, profiles, out = tiny_book
    profiles.write_text(text)
    with pytest.raises(book.PlanError, match=rf"{re.escape(str(profiles))}.*{problem}"):
        book.run("smoke", None, notebooks, profiles, out)
    assert not out.exists()  # nothing ran
    missing = profiles.with_name("nope.yml")
    with pytest.raises(book.PlanError, match=rf"{re.escape(str(missing))}.*no such file"):
        book.load_profiles(missing)


def _executed(out, chapter):
    return nbformat.read(out / f"{chapter}.ipynb", as_version=4)


def test_build_refuses_a_notebook_left_half_run(tiny_book):
    """papermill writes the executed copy as it goes; a killed ``run`` leaves one whose
    ``end_time`` is unset, a dead kernel one with cells never executed, a failed cell one
    with ``exception`` set: each is refused, by chapter name, before anything is built."""
    notebooks, profiles, out = tiny_book
    (notebooks / "02_fails.ipynb").unlink()
    profiles.write_text("smoke:\n  01_ok:\n    n: 2\n")
    book.run("smoke", ["01_ok"], notebooks, profiles, out)
    good = _executed(out, "01_ok")
    assert book.unfinished_chapters(out, ["01_ok"]) == {}

    killed = nbformat.from_dict(good)  # as papermill saved it at the start of the last cell
    killed.metadata.papermill.end_time = None
    killed.cells[-1].execution_count = None
    killed.cells[-1].metadata.papermill.status = "running"
    nbformat.write(killed, out / "01_ok.ipynb")
    with pytest.raises(book.PlanError, match=r"01_ok.*did not finish.*run .*again"):
        book.build(out.parent, notebooks=notebooks, executed=out)

    dead = nbformat.from_dict(good)  # the kernel died: papermill still closes the notebook
    dead.cells[-1].execution_count = None
    nbformat.write(dead, out / "01_ok.ipynb")
    with pytest.raises(
        book.PlanError, match=r"01_ok.*cell 3 \(`assert n == 2, n`\) was never executed"
    ):
        book.build(out.parent, notebooks=notebooks, executed=out)

    failed = nbformat.from_dict(good)
    failed.metadata.papermill.exception = True
    nbformat.write(failed, out / "01_ok.ipynb")
    with pytest.raises(book.PlanError, match=r"01_ok.*failed"):
        book.build(out.parent, notebooks=notebooks, executed=out)
    assert not (out / "summary.md").exists()  # refused before writing anything


def test_run_removes_stale_temporary_files_of_killed_runs(tiny_book):
    notebooks, profiles, out = tiny_book
    stale = [out / ".01_ok.json.a1b2.tmp", out / "scratch" / "models" / ".x.pt.ckpt.tmp"]
    fresh = out / ".02_fails.json.c3d4.tmp"  # could be another process's write in flight
    keep = out / "scratch" / "notes.txt"
    for path in [*stale, fresh, keep]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    old = time.time() - 2 * book.STALE_TEMP_SECONDS
    for path in stale + [keep]:
        os.utime(path, (old, old))
    with pytest.raises(book.PlanError):
        book.run("nope", None, notebooks, profiles, out)
    assert all(p.exists() for p in stale)  # a refused request touches nothing
    out_lines = io.StringIO()
    book.run("smoke", ["01_ok"], notebooks, profiles, out, out=out_lines)
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and keep.exists()
    assert "removed 2 stale temporary file(s)" in out_lines.getvalue()


def test_a_dead_kernel_is_reported_with_the_chapter_and_left_unbuildable(tiny_book):
    notebooks, profiles, out = tiny_book
    write_notebook(
        notebooks / "01_ok.ipynb",
        'profile = "full"\noutput_dir = "."\nn = 1',
        ["import os\nos._exit(1)", "x = 2"],
    )
    (notebooks / "02_fails.ipynb").unlink()
    profiles.write_text("smoke:\n  01_ok: {}\n")
    with pytest.raises(RuntimeError, match=r"01_ok.ipynb: the kernel died.*\n.*01_ok.ipynb"):
        book.run("smoke", None, notebooks, profiles, out)
    assert set(book.unfinished_chapters(out, ["01_ok"])) == {"01_ok"}


def test_the_smoke_plan_is_exactly_what_the_smoke_book_asked_for(built_book, request_log):
    """Issue 16: every run and evaluation a chapter asks for is in the plan, and the plan lists
    nothing the chapters do not ask for."""
    import json

    from clustr_lib.plan import make_plan

    def key(kind, run, evaluation=None, params=None):
        return (kind, run, evaluation, json.dumps(params, sort_keys=True) if params else None)

    lines = request_log.read_text().splitlines()
    asked = {key(**json.loads(line)) for line in lines}
    listed = {key(t.kind, t.run, t.evaluation, t.params) for t in make_plan("smoke").tasks}
    assert asked, "the smoke book logged no request"
    assert not asked - listed, f"asked for but not planned: {sorted(asked - listed)[:5]}"
    assert not listed - asked, f"planned but never asked for: {sorted(listed - asked)[:5]}"
