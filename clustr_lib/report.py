"""Book-facing: a chapter's banner, its JSON result, the values its prose glues, its
provenance table, and the summary page generated from every chapter's result and
:data:`clustr_lib.paper.CLAIMS`.

A chapter notebook opens a :class:`Chapter` (which shows where its numbers come from and makes
every table of the page readable: :func:`html_table`), draws its tables and figures, puts the
stand-in ones into one collapsed *pipeline check* (:meth:`Chapter.pipeline_check`), and ends
with :meth:`Chapter.finish` (the measurements, judged by :mod:`clustr_lib.verdicts`, recorded
and glued) and :meth:`Chapter.provenance`.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import numbers
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import HTML, Markdown, display
from myst_nb import glue

from .paper import CLAIMS, FOLLOWUP_AUTOATTACK_RANGE, ROBUSTBENCH_CLUSTR, TABLE1
from .protocol import CLUSTER_METHODS, FASHION32_STUDY, METHODS
from .records import device_name, provenance, save_json, to_plain
from .studies import ATTACK_LABELS, RULE_LABELS, eps_text
from .verdicts import chapter_results, criterion, judge, judge_all, lookup

SCALE_PROFILES = ("full",)  # profiles at the paper's settings (chapters without sources)
STAND_IN_WARNING = (
    "> **The paper's datasets were not run in this build.** {stand_ins} stand in for them: "
    "tiny runs that exercise the chapter's code end to end in seconds on a CPU. Their tables "
    "and figures are kept in the collapsed *pipeline check* further down the page; their "
    "numbers say nothing about the paper's, and no verdict is drawn from them."
)
STUDY_NOTE = (
    "The numbers of the *{label}* are **our measurement** on a real dataset at CPU scale "
    "({dataset}: a narrow ResNet-18, {seeds}, the paper's attack protocol on {points} "
    "attacked test images), recorded in `results/{folder}/` at the study's own scale, whatever "
    "the profile that builds the page; they are not the paper's numbers."
)
PIPELINE_NOTE = (
    "Stand-in runs ({stand_ins}, profile <code>{profile}</code>): the same code as at the "
    "paper's scale on a few hundred digits32 images, trained and attacked for seconds on a CPU. "
    "They check that the pipeline runs end to end; their numbers are not results, and no verdict "
    "is drawn from them. Run the chapter with the <code>full</code> profile on a GPU for the "
    "paper's datasets."
)


# ---------------------------------------------------------------------------------------
# Tables as the pages show them: readable headers, numbers with sensible figures, "—" for
# what is missing, yes/no for flags, never a dict repr.

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
COLUMN_NAMES = {  # snake-case column names of the library's frames, as a reader reads them
    "clean_accuracy": "clean (all test images)",
    "clean_attacked": "clean (attacked images)",
    "train_minutes": "training (min)",
    "train_seconds": "training (s)",
    "eps_255": "ε (× 1/255)",
    "accuracy_sd": "accuracy (sd over seeds)",
    "lipschitz_bound": "Lipschitz bound",
    "median_radius": "median certified radius",
    "median_exact": "median exact distance",
    "mean_area_gain": "mean area gain (points)",
    "seeds_clustr_higher": "seeds with ClusTR higher",
    "pgd20": "PGD-20",
    "pgd100": "PGD-100",
}
_EXPONENT = re.compile(r"^-?\d+(\.\d+)?e[+-]\d+$")  # "4.93e+00": a number a frame wrote out
_PGD_COLUMN = re.compile(r"^pgd(\d+)_([a-z]+)(?:_(official|any_restart|any_iterate))?$")


def scientific(value: float, digits: int = 2) -> str:
    """``1.389601e+09`` → ``1.4 × 10⁹`` (``digits`` significant figures)."""
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    if int(exponent) == 0:
        return mantissa
    return f"{mantissa} × 10{str(int(exponent)).translate(_SUPERSCRIPT)}"


def readable(label):
    """A column or index label as the page shows it: the library's snake-case names spelled
    out (``pgd100_ce_any_iterate`` → ``PGD-100, −log p_y (any iterate)``); others unchanged."""
    if not isinstance(label, str):
        return label
    if label in COLUMN_NAMES:
        return COLUMN_NAMES[label]
    match = _PGD_COLUMN.match(label)
    if match and match.group(2) in ATTACK_LABELS:
        steps, objective, rule = match.groups()
        name = ATTACK_LABELS[objective].replace("PGD", f"PGD-{steps}")
        return name + (f" ({RULE_LABELS[rule]})" if rule else "")
    if re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", label):
        return label.replace("_", " ")
    return label


def _missing(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isnan(value)


def column_style(values) -> str:
    """How a column's floats are written: ``"fixed"`` (2 decimals: accuracies, seconds),
    ``"small"`` (3 significant figures: every value below 1, e.g. radii) or ``"scientific"``
    (values beyond 10⁵ or below 10⁻³, e.g. Lipschitz bounds, radii of 10⁻¹²)."""
    sizes = [
        abs(float(v))
        for v in values
        if isinstance(v, (float, np.floating)) and math.isfinite(v) and v != 0
    ]
    if not sizes:
        return "fixed"
    if max(sizes) >= 1e5 or min(sizes) < 1e-3:
        return "scientific"
    return "small" if max(sizes) < 1 else "fixed"


def format_cell(value, style: str = "fixed") -> str:
    """One cell: ``—`` when missing or NaN, ``yes``/``no`` for flags, floats by ``style``
    (:func:`column_style`), mappings as ``key: value`` and lists joined, never a repr."""
    if isinstance(value, (list, tuple, set)):
        return ", ".join(format_cell(v, style) for v in value) or "—"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {format_cell(v, style)}" for k, v in value.items()) or "—"
    if _missing(value):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if style == "scientific":
            return "0" if value == 0 else scientific(value)
        if style == "small":
            return f"{value:.3g}"
        return f"{value:.2f}"
    return str(value)


def _label(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return f"{float(value):g}"
    return format_cell(readable(value), "small" if isinstance(value, float) else "fixed")


def _readable_index(index: pd.Index) -> pd.Index:
    names = [readable(n) if n is not None else None for n in index.names]
    if isinstance(index, pd.MultiIndex):
        return pd.MultiIndex.from_tuples(
            [tuple(_label(v) for v in values) for values in index], names=names
        )
    return pd.Index([_label(v) for v in index], name=names[0])


def html_table(frame: pd.DataFrame) -> str:
    """``frame`` as the page's HTML table: :func:`readable` headers, :func:`format_cell` cells
    (one :func:`column_style` per column)."""
    columns = [
        [float(v) if isinstance(v, str) and _EXPONENT.match(v) else v for v in frame.iloc[:, i]]
        for i in range(frame.shape[1])
    ]
    shown = pd.DataFrame(
        {
            i: [format_cell(v, column_style(values)) for v in values]
            for i, values in enumerate(columns)
        },
        index=range(len(frame)),
    )
    shown.index = _readable_index(frame.index)
    shown.columns = _readable_index(frame.columns)
    plain = isinstance(frame.index, pd.RangeIndex) and frame.index.name is None
    return shown.to_html(escape=True, border=0, na_rep="—", index=not plain)


def show_tables_readably() -> None:
    """Make the executing notebook display every DataFrame through :func:`html_table`
    (nothing outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the notebooks' stack
        return
    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, html_table)


def figure_html(fig, caption: str, alt: str | None = None) -> str:
    """A matplotlib figure as an HTML figure: an inline PNG with its alt text and caption."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure class="pipeline-figure"><img src="data:image/png;base64,{data}" '
        f'alt="{html.escape(alt or caption, quote=True)}" style="max-width: 100%">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def item_html(caption: str, item, stand_in: bool = True) -> str:
    """One table (DataFrame) or figure of a pipeline check (``stand_in``) or of a chapter at
    the paper's scale, with its caption."""
    if item is None:
        return ""
    if hasattr(item, "savefig"):
        alt = f"Pipeline check on stand-in data: {caption}" if stand_in else caption
        return figure_html(item, caption, alt)
    body = html_table(item) if isinstance(item, pd.DataFrame) else html.escape(str(item))
    return (
        f'<div class="pipeline-table"><p><strong>{html.escape(caption)}</strong></p>'
        f'<div class="pasted-table" style="overflow-x: auto">{body}</div></div>'
    )


def pipeline_check_html(stand_ins: str, profile: str, items) -> str:
    """The page's one collapsed *pipeline check* (a sphinx-design dropdown): the stand-in
    sources' tables and figures, ``items`` = ``[(caption, table or figure)]``."""
    body = "".join(item_html(caption, item) for caption, item in items)
    note = PIPELINE_NOTE.format(stand_ins=html.escape(stand_ins), profile=html.escape(profile))
    return (
        '<details class="sd-sphinx-override sd-dropdown sd-card sd-mb-3 pipeline-check">'
        '<summary class="sd-summary-title sd-card-header"><span class="sd-summary-text">'
        f"Pipeline check on stand-in data ({html.escape(stand_ins)}): not a result, "
        "click to open</span></summary>"
        f'<div class="sd-summary-content sd-card-body"><p>{note}</p>{body}</div></details>'
    )


def glue_all(values: dict) -> None:
    """Glue each ``key: value`` into the executing notebook for the page's prose.

    Values are converted to plain Python numbers and strings first: the book formats a
    glued ``np.float64(…)`` repr as text it cannot parse.
    """
    for key, value in values.items():
        glue(key, to_plain(value), display=False)


def flatten(values: dict, prefix: str = "") -> dict:
    """``{"a": {"b c": 1}}`` → ``{"a_b_c": 1}``: glue names, letters, digits and ``_`` only
    (``{"ClusTR + QTRADES": …}`` → ``ClusTR_QTRADES``)."""
    flat = {}
    for key, value in values.items():
        name = prefix + re.sub(r"[^0-9A-Za-z]+", "_", str(key)).strip("_")
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


def stand_ins(sources) -> list:
    """The sources standing in for a paper dataset, or running it at a reduced protocol."""
    return [s for s in sources if s.paper_dataset is not None and not s.at_scale]


def rows_of(frame: pd.DataFrame, sources) -> pd.DataFrame:
    """The rows of ``frame`` that belong to ``sources`` (a ``source`` column or index level):
    a chapter's frame split into its main flow (:attr:`Chapter.measured`) and its pipeline
    check (:attr:`Chapter.stand_ins`)."""
    labels = [s.label for s in sources]
    if "source" in frame.columns:
        return frame[frame["source"].isin(labels)]
    return frame[frame.index.get_level_values("source").isin(labels)]


def attacked_points(source):
    """How many test images a source's attacks use (its whole test set when ``eval_size`` is
    unset)."""
    size = source.settings.get("eval_size")
    if size is None and getattr(source, "data", None) is not None:
        size = len(source.data.y_test)
    return size


def banner(sources, profile: str) -> str:
    """Markdown naming what a chapter evaluates, with a warning when a paper dataset is
    replaced by a stand-in or the protocol is reduced."""
    lines = [f"Page built with profile `{profile}`. Evaluated:", ""]
    lines += [f"* {s.describe()}" for s in sources]
    replaced = stand_ins(sources)
    if replaced:
        names = ", ".join(f"*{s.label}*" for s in replaced)
        lines = [STAND_IN_WARNING.format(stand_ins=names), ""] + lines
    for s in sources:
        if s.paper_dataset is None:
            note = STUDY_NOTE.format(
                label=s.label,
                dataset=s.dataset,
                seeds=s.seeds_text,
                points=attacked_points(s),
                folder=Path(s.results_dir).name,
            )
            lines += ["", note]
    return "\n".join(lines)


def provenance_table(sources, profile: str) -> pd.DataFrame:
    """Where a chapter's numbers come from, one row per source: profile (for a recorded study,
    which has its own scale whatever the profile, "recorded"), dataset, seeds (recorded of
    planned while a study's recording is under way), the devices that trained the models and
    made the evaluations, and how many evaluations were read from the record or computed while
    building the page."""
    rows = [
        {
            "source": s.label,
            "profile": "recorded" if s.paper_dataset is None else profile,
            "dataset": s.dataset,
            "seeds": s.seeds_text,
            "attacked images": attacked_points(s),
            "paper's protocol": s.at_scale,
            "trained on": ", ".join(sorted(s.train_devices)) or "—",
            "evaluated on": ", ".join(sorted(s.eval_devices)) or "(recorded in the runs)",
            "evaluations read": len(s.loaded),
            "evaluations computed": len(s.computed),
        }
        for s in sources
    ]
    return pd.DataFrame(rows).set_index("source")


class Chapter:
    """One executing chapter: its name, profile, sources (or 2-D scopes) and start time.

    Args:
        name: the notebook's name (``"07_eps_ablation"``); its JSON is ``<output_dir>/<name>.json``.
        profile: the parameter profile that built the page.
        sources: the :class:`~clustr_lib.sources.Source` objects it reads (image chapters).
        scopes: for chapters without sources (the 2-D study), ``{scope: label}``: at the
            paper's scale exactly when the profile is one of :data:`SCALE_PROFILES`.
        show: display the banner now (image chapters).
    """

    def __init__(
        self, name: str, profile: str, output_dir=".", sources=(), scopes=None, show: bool = True
    ):
        self.name, self.profile, self.output_dir = name, profile, Path(output_dir)
        self.sources = list(sources)
        self.scopes = (
            {k: {"label": v, "at_scale": profile in SCALE_PROFILES} for k, v in scopes.items()}
            if scopes
            else {s.key: {"label": s.label, "at_scale": s.at_scale} for s in self.sources}
        )
        self.started = time.perf_counter()
        self.result = None  # what :meth:`finish` recorded
        show_tables_readably()
        if show and self.sources:
            display(Markdown(banner(self.sources, profile)))

    @property
    def measured(self) -> list:
        """The sources the page shows in its main flow: the digits32 study, and the paper's
        datasets when they ran at the paper's protocol."""
        return [s for s in self.sources if s not in stand_ins(self.sources)]

    @property
    def stand_ins(self) -> list:
        """The sources of the page's pipeline check: stand-ins for a paper dataset (or the
        paper's dataset at a reduced protocol)."""
        return stand_ins(self.sources)

    def pipeline_check(self, *items) -> None:
        """Display ``items`` (``(caption, table or figure)``, built from :attr:`stand_ins`) as
        the page's one collapsed pipeline check. A chapter whose sources all ran at the paper's
        protocol has none: its items are results and are shown open, each with its caption."""
        if not self.stand_ins:
            display(HTML("".join(item_html(caption, item, False) for caption, item in items)))
            return
        labels = ", ".join(s.label for s in self.stand_ins)
        display(HTML(pipeline_check_html(labels, self.profile, items)))

    @property
    def source(self):
        """The chapter's only source (chapters 3–6)."""
        if len(self.sources) != 1:
            raise ValueError(f"{self.name} reads {len(self.sources)} sources, not one")
        return self.sources[0]

    def finish(self, measurements: dict, **content) -> dict:
        """Record the chapter: ``measurements`` (``{scope: {name: value}}``), the verdicts of
        its claims, ``content`` (rows, frames as records) and the provenance, in
        ``<output_dir>/<name>.json``; glue ``profile``, every measurement as
        ``<scope>_<name>`` and every verdict as ``<claim id>_verdict``. Returns the result."""
        result = {
            "chapter": self.name,
            "profile": self.profile,
            "scopes": self.scopes,
            "measurements": to_plain(measurements),
            **content,
        }
        verdicts = {c.id: judge(c, result)["verdict"] for c in CLAIMS if c.chapter == self.name}
        result["verdicts"] = verdicts
        result["computed"] = [n for s in self.sources for n in s.computed]
        result["recorded"] = [n for s in self.sources for n in s.loaded]
        table = provenance_table(self.sources, self.profile) if self.sources else None
        result["provenance"] = provenance(
            wall_seconds=time.perf_counter() - self.started,
            computed_on=device_name(),
            sources=[] if table is None else table.reset_index().to_dict(orient="records"),
        )
        save_json(self.output_dir / f"{self.name}.json", to_plain(result))
        flat = flatten(result["measurements"])
        glue_all(
            {
                "profile": self.profile,
                **flat,
                # ``<name>_sci``: a number too large or too small for a fixed format, written
                # ``1.6 × 10¹²`` for the prose (never ``1.6e+12``)
                **{
                    f"{k}_sci": scientific(v)
                    for k, v in flat.items()
                    if isinstance(v, float)
                    and math.isfinite(v)
                    and v != 0
                    and not 1e-3 <= abs(v) < 1e5
                },
                **{f"{k}_verdict": v for k, v in verdicts.items()},
            }
        )
        self.result = result
        return result

    def provenance(self) -> pd.DataFrame:
        """The chapter's closing table: where its numbers come from — per source
        (:func:`provenance_table`), or for a chapter without sources (the 2-D study), per
        scope from what :meth:`finish` recorded: profile, paper's settings, seeds, device,
        commit and wall time."""
        if self.sources:
            return provenance_table(self.sources, self.profile)
        if self.result is None:
            raise RuntimeError(f"{self.name}: call finish() before provenance()")
        prov = self.result["provenance"]
        return pd.DataFrame(
            [
                {
                    "sets": scope["label"],
                    "profile": self.profile,
                    "paper's settings": scope["at_scale"],
                    "seeds": self.result["measurements"].get(key, {}).get("seeds"),
                    "computed on": prov["computed_on"],
                    "commit": prov["git_commit"],
                    "wall seconds": round(prov["wall_seconds"], 1),
                }
                for key, scope in self.scopes.items()
            ]
        ).set_index("sets")


# ---------------------------------------------------------------------------------------
# A study read as far as it is recorded (chapter 12; :func:`clustr_lib.plan.recorded_only`).


def recording_totals(progress: pd.DataFrame) -> dict:
    """Runs and evaluations recorded and needed, the hours they took and the estimate of the
    hours to go, over the sources of a progress table (:func:`clustr_lib.plan.recorded_only`)."""
    return {
        _total_key(c): round(float(v), 2) if c.startswith("hours") else int(v)
        for c, v in progress.sum().items()
    }


def _total_key(column: str) -> str:
    """``"hours to go (estimate)"`` → ``"hours_to_go"``: a progress column as a totals key."""
    return column.split(" (")[0].replace(" ", "_")


def recording_complete(totals: dict) -> bool:
    """Whether every run and evaluation of :func:`recording_totals` is recorded."""
    return all(
        totals.get(f"{k}_recorded") == totals.get(f"{k}_needed") for k in ("runs", "evaluations")
    )


TASK_HOURS = (  # what a recording's hours are
    "each run's and evaluation's own wall time, summed: tasks recorded side by side overlap, so "
    "the recording's wall time is less"
)


def recording_note(progress: pd.DataFrame, command: str) -> Markdown:
    """What the page can say about its study's recording: complete, or how far it has come
    and what the tables then show (``command``: the one that records the rest)."""
    t = recording_totals(progress)
    if recording_complete(t):
        return Markdown(
            f"The recording is complete: all {t['runs_needed']} runs and "
            f"{t['evaluations_needed']} evaluations are read from the record; they took "
            f"{t['hours_recorded']:.1f} task-hours ({TASK_HOURS})."
        )
    return Markdown(
        f"**The recording is under way** (`{command}`, which resumes where it stopped, seed "
        f"after seed): {t['runs_recorded']} of {t['runs_needed']} runs and "
        f"{t['evaluations_recorded']} of {t['evaluations_needed']} evaluations are recorded, "
        f"{t['hours_recorded']:.1f} task-hours so far ({TASK_HOURS}). "
        + _to_go(t["hours_to_go"], t["tasks_untimed"])
        + " "
        "The tables below show what has finished; a measurement that needs the rest is missing, "
        "and every mean is over the seeds recorded so far (the tables say how many)."
    )


def _to_go(hours: float, untimed: int) -> str:
    """The recording note's estimate of the work left (:func:`clustr_lib.plan.seed_estimates`)."""
    timed = f"{hours:.1f} task-hours for the missing tasks that a seed has recorded (timed there)"
    if not untimed:
        return f"About {timed} are still to go."
    return (
        f"Still to go: at least {timed}, and {untimed} tasks that no seed has recorded yet, so "
        "not timed."
    )


def when_recorded(frame: pd.DataFrame, make, what: str):
    """``make(frame)``, or a line saying that ``what`` is not recorded yet (empty frame)."""
    return make(frame) if len(frame) else Markdown(f"*Not recorded yet: {what}.*")


def dataset_reading(findings: dict, labels: dict, method: str = "ClusTR + QTRADES") -> Markdown:
    """Chapter 12's plain answer, per source (``labels``: scope → label) and radius, from
    :func:`clustr_lib.studies.dataset_findings`: ``method`` under the paper's PGD, PGD on
    −log p_y and AutoAttack (over the seeds at which all are recorded, counted), TRADES under
    AutoAttack where the source has TRADES (over its own seeds), and the masking sentence."""
    lines = []
    for scope, label in labels.items():
        found = findings.get(scope, {})
        radii = [k for k in found if k.startswith("eps") and found[k].get("seeds")]
        if not radii:
            lines.append(f"* **{label}**: {method} is not audited yet.")
            continue
        for key in radii:
            f = found[key]
            radius = eps_text(float(key.removeprefix("eps").replace("_", ".")) / 255)
            trades = (
                ""
                if _missing(f.get("trades_autoattack"))
                else f" (TRADES: {_pct(f['trades_autoattack'])}, {_seeds(f.get('trades_seeds'))})"
            )
            lines.append(
                f"* **{label}, ε = {radius}** ({_seeds(f['seeds'])}): {method} keeps "
                f"{_pct(f['paper'])} under PGD-100 with the paper's objective, {_pct(f['ce'])} "
                f"under PGD-100 on −log p_y and {_pct(f['autoattack'])} under AutoAttack"
                f"{trades}; {f['masking']}."
            )
    return Markdown("\n".join(lines))


def _seeds(n) -> str:
    n = int(n or 0)
    return f"{n} seed{'s' if n != 1 else ''}"


# ---------------------------------------------------------------------------------------
# The summary page, generated from the chapters' results and the claims registry.

STUDY_SHAPES = [  # (chapter, what) of the digits32 study's findings on the summary page
    ("07_eps_ablation", "Table 4's shape: PGD-100 (paper's objective) against ε"),
    ("08_d_ablation", "Fig. 4's shape: −log p_y at D = 1"),
    ("09_adaptive_attack", "The adaptive attack against PGD on −log p_y"),
    ("10_audit", "The audit: the paper's PGD against the strongest attack"),
    ("10_audit", "Theorem 1 at image scale"),
    ("11_kmeans_nominal", "k-means + Eq. 4 on nominal features"),
]


# How the summary names the values shown next to ours (the labels of ``Claim.also``): every one
# is our measurement, never the paper's
ALSO_LABELS = {
    "paper's PGD": "our PGD, paper's objective",
    "paper's objective": "our PGD, paper's objective",
    "−log p_y": "our PGD, −log p_y",
}
ALSO_UNITS = {"median radius": "", "radius needed": "", "at D": ""}  # not percentages
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN"}


def _display_names(text: str) -> str:
    """``… on cifar100`` → ``… on CIFAR-100`` in a claim's statement."""
    return re.sub(r"\b(cifar100|cifar10|svhn)\b", lambda m: DATASET_NAMES[m.group(1)], text)


def format_value(value, unit: str = "%") -> str:
    """A measurement for a table cell: numbers to 2 decimals, ``—`` when missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v, unit)}" for k, v in value.items())
    if isinstance(value, float) and value != 0 and not 1e-3 <= abs(value) < 1e5:
        return scientific(value) + unit  # a radius of 1e-12, a Lipschitz bound of 1e12
    if isinstance(value, (int, float)):
        return f"{value:.2f}{unit}" if isinstance(value, float) else f"{value}"
    return str(value)


def _claim_value(claim) -> str:
    if claim.value is None:
        return "—"
    return format_value(claim.value, claim.unit)


def summary_rows(results: dict) -> pd.DataFrame:
    """One row per claim: the paper's value, ours (at the paper's scale only, else ``—``),
    the digits32 study's value where a chapter measures it, and the verdict."""
    rows = []
    for claim, judged in judge_all(results):
        at_scale = judged["verdict"] in ("reproduced", "not reproduced") or (
            claim.rule is None
            and (results.get(claim.chapter) or {})
            .get("scopes", {})
            .get(claim.scope, {})
            .get("at_scale", False)
        )
        ours = format_value(judged["ours"], claim.unit) if at_scale else "—"
        if at_scale and judged["also"]:
            ours += (
                " ("
                + "; ".join(
                    f"{ALSO_LABELS.get(k, k)}: {format_value(v, ALSO_UNITS.get(k, claim.unit))}"
                    for k, v in judged["also"].items()
                )
                + ")"
            )
        study = judge(
            dataclasses.replace(claim, scope="study"),
            results.get(claim.study_chapter or claim.chapter),
        )
        rows.append(
            {
                "id": claim.id,
                "claim": _display_names(claim.statement) + (" *(audit)*" if claim.audit else ""),
                "where": claim.where,
                "paper": _claim_value(claim),
                "judged by": criterion(claim),
                "ours": ours,
                "digits32 study (ours)": format_value(study["ours"], claim.unit),
                "profile": judged["profile"] or "—",
                "verdict": judged["verdict"],
            }
        )
    return pd.DataFrame(rows)


def _get(results: dict, chapter: str, path: str, scope: str = "study"):
    """``measurements[scope][path]`` of a chapter's result (``None`` when absent)."""
    return lookup((results.get(chapter) or {}).get("measurements", {}).get(scope, {}), path)


def _pct(value, digits: int = 1) -> str:
    return "—" if _missing(value) else f"{float(value):.{digits}f}%"


def _scale_note(results: dict, chapter: str, scope: str) -> str:
    result = results.get(chapter) or {}
    if result.get("scopes", {}).get(scope, {}).get("at_scale"):
        return f"the paper's settings, profile `{result.get('profile')}`"
    return f"profile `{result.get('profile')}`, a reduced run: no verdict"


def _two_d_findings(results: dict) -> list[str]:
    lines = []
    if results.get("01_certificate_2d"):
        searched = _get(results, "01_certificate_2d", "searched", "2d")
        no_boundary = _get(results, "01_certificate_2d", "no_boundary", "2d") or 0
        tight = _get(results, "01_certificate_2d", "tight_product", "2d")
        lines.append(
            f"* **Theorem 1 in 2-D** (chapter 1; {_scale_note(results, '01_certificate_2d', '2d')}"
            f"; one seed, {format_cell(searched - no_boundary if searched else None)} test "
            "points searched exhaustively): the certificate is *sound*: the exact distance to "
            "the decision boundary is at least the certified radius on "
            f"{_pct(_get(results, '01_certificate_2d', 'sound_min', '2d'))} of them. It is "
            "*loose*: with the Lipschitz bound one can compute for a deep network, the "
            f"certified radius is a median {format_cell(tight, 'small')} of the exact distance."
        )
    if results.get("02_warm_start_2d"):
        sets = {
            k: v
            for k, v in (
                (results["02_warm_start_2d"].get("measurements") or {}).get("2d") or {}
            ).items()
            if isinstance(v, dict) and "certified" in v
        }
        runs = sum(v["certified"].get("seeds", 0) for v in sets.values())
        certified = sum(v["certified"].get("seeds_clustr_higher", 0) for v in sets.values())
        exact = sum(v["exact"].get("seeds_clustr_higher", 0) for v in sets.values())
        lines.append(
            f"* **Warm start in 2-D** (chapter 2; {_scale_note(results, '02_warm_start_2d', '2d')}"
            f"; {_get(results, '02_warm_start_2d', 'seeds', '2d')} seeds on each of "
            f"{len(sets)} sets): ClusTR's certified accuracy is above the randomly initialised "
            f"Magnet model's on {certified} of {runs} runs, as the paper's Fig. 3 shows, but "
            f"its *exact* robust accuracy (a search for the nearest adversarial point) only on "
            f"{exact} of {runs}: a larger certified radius "
            + ("did not always mean a more robust model." if exact < runs else "meant one here.")
        )
    return lines


def _study_findings(results: dict) -> list[str]:
    if not results.get("06_digits32_study"):
        return []
    label = results["06_digits32_study"].get("scopes", {}).get("study", {}).get("label")
    rows = [
        r
        for r in results["06_digits32_study"].get("runs", [])
        if r.get("method") == "ClusTR + QTRADES"
        and r.get("source", label) == label  # the study, not the recordings beside it
        and not _missing(r.get("pgd100_paper"))
    ]
    sources = results["06_digits32_study"].get("provenance", {}).get("sources", [])
    points = next((s.get("attacked images") for s in sources), None)
    seeds = _get(results, "06_digits32_study", "seeds")
    spread = (
        f" (seeds: {min(r['pgd100_paper'] for r in rows):.1f}–"
        f"{max(r['pgd100_paper'] for r in rows):.1f}%)"
        if len(rows) > 1
        else ""
    )
    per = "per_method.ClusTR + QTRADES."
    line = (
        "* **The digits32 study** (chapters 6–11; scikit-learn's real 8×8 digits upsampled to "
        f"32×32, a narrow ResNet-18, 7 methods × {seeds} seeds, {format_cell(points)} attacked "
        "test images, ε = 8/255, every method trained as the official code trains it): "
        "ClusTR + QTRADES keeps "
        f"{_pct(_get(results, '06_digits32_study', per + 'pgd100_paper'))} under PGD-100 with "
        f"the paper's objective{spread}, "
        f"{_pct(_get(results, '06_digits32_study', per + 'pgd100_ce'))} when PGD maximises "
        f"$-\\log p_y$ and {_pct(_get(results, '10_audit', 'autoattack'))} under AutoAttack"
    )
    at16 = (
        _get(results, "07_eps_ablation", "pgd100.paper.16"),
        _get(results, "07_eps_ablation", "pgd100.ce.16"),
    )
    if not all(_missing(v) for v in at16):
        line += f"; at ε = 16/255, {_pct(at16[0])} against {_pct(at16[1])}"
    shape = _get(results, "10_audit", "shape")
    if shape:
        line += f". Chapter 10's reading: {shape}"
        gap = _get(results, "10_audit", "gap")
        line += f" (by {gap:.1f} points)" if not _missing(gap) else ""
    masking = _get(results, "10_audit", "masking")
    if masking:
        line += f". Does it mask its gradients? On digits32, {masking}"
        variant = _get(results, "10_audit", "masking", scope="study_logprob")
        if variant:
            line += f"; with our logprob QTRADES term, {variant}"
    calibrated = _get(results, "07_eps_ablation", "calibrated_eps_text")
    if calibrated:
        line += (
            f". ε = 8/255 is a weak threat on digits32: nominal training keeps "
            f"{_pct(_get(results, '07_eps_ablation', 'nominal_pgd100.8'))} there, and falls "
            f"below 5% at {calibrated}"
        )
    certified = _get(results, "10_audit", "certified")
    if not _missing(certified):
        line += (
            f". Theorem 1, with an honest Lipschitz bound, certifies {_pct(certified)} of the "
            "attacked images at 8/255"
        )
    paired = [r for r in rows if not _missing(r.get("pgd100_ce"))]
    if points and paired:
        above = sum(r["pgd100_paper"] > r["pgd100_ce"] for r in paired)
        line += (
            f". Uncertainty: one image is {100 / points:.2f} accuracy points, and {seeds} seeds "
            "are few and spread widely; the paper's objective leaves more images standing than "
            f"$-\\log p_y$ on {above} of {len(paired)} seeds"
        )
    return [line + "."]


CLUSTER_NAMES = [METHODS[m] for m in CLUSTER_METHODS]  # classified by Eq. (4)
FASHION_METHODS = [METHODS[m] for m in FASHION32_STUDY["methods"]]  # chapter 12's, by name


def _fashion_findings(results: dict) -> list[str]:
    """The summary's line on chapter 12's Fashion-MNIST study, as far as it is recorded."""
    result = results.get("12_fashion32")
    if not result:
        return []
    p = result.get("progress", {})
    state = (
        "recorded in full"
        if recording_complete(p)
        else f"still being recorded: {p.get('runs_recorded')} of {p.get('runs_needed')} runs "
        f"and {p.get('evaluations_recorded')} of {p.get('evaluations_needed')} evaluations so far"
    )
    line = (
        "* **A real dataset** (chapter 12's Fashion-MNIST study: the 28×28 images padded to "
        "32×32, a width-8 ResNet-18 on 10,000 training images, 4 methods and our QTRADES term, "
        f"500 attacked test images, ε = 8/255 and 0.1; {state})"
    )
    measured = []
    for method in FASHION_METHODS:
        clean, paper, ce, seeds = (
            _get(results, "12_fashion32", f"per_method.{method}.{column}", "fashion32")
            for column in ("clean_accuracy", "pgd100_paper", "pgd100_ce", "seeds")
        )
        if not _missing(clean):
            text = f"{method} ({_seeds(seeds)}) {_pct(clean)} clean, {_pct(paper)} under the "
            text += "paper's PGD-100"
            if method in CLUSTER_NAMES:  # for a cross-entropy network the two are one
                text += f" and {_pct(ce)} under PGD-100 on −log p_y"
            measured.append(text)
    if measured:
        line += ". Means over the seeds recorded, at 8/255: " + "; ".join(measured)
    at_8 = {
        key: _get(results, "12_fashion32", f"eps8.{key}", scope="fashion32")
        for key in ("autoattack", "trades_autoattack", "masking", "seeds", "trades_seeds")
    }
    if not _missing(at_8["autoattack"]):
        line += (
            f". Under AutoAttack at 8/255 ClusTR + QTRADES keeps {_pct(at_8['autoattack'])} "
            f"({_seeds(at_8['seeds'])}; TRADES {_pct(at_8['trades_autoattack'])}, "
            f"{_seeds(at_8['trades_seeds'])}). Does it "
            "mask its gradients there? "
            f"{at_8['masking']}"
        )
    return [line + "."]


def findings_markdown(results: dict) -> str:
    """The summary's opening box: what the book measured (the 2-D study, the digits32 study,
    the audit) and what it could not test (the paper-scale claims), its numbers read from the
    chapters' ``results``."""
    paper_scale = [c.id for c in CLAIMS if c.scope in ("cifar10", "svhn", "cifar100")]
    untested = [
        c.id
        for c, v in judge_all(results)
        if c.id in paper_scale and v["verdict"] not in ("reproduced", "not reproduced")
    ]
    low, high = FOLLOWUP_AUTOATTACK_RANGE
    measured = _two_d_findings(results) + _study_findings(results) + _fashion_findings(results)
    measured.append(
        "* **The audit of text and code**: [the deviations page](../deviations.md) lists every "
        "difference we found between the paper's text, the official code and this library, "
        "which one the book follows, and its measured effect where there is one."
    )
    untested_line = (
        f"**Not tested here**: the paper's own numbers. {len(untested)} of the claims below "
        f"({untested[0]}–{untested[-1]}: Tables 1–5 and Fig. 4 on CIFAR-10, CIFAR-100 and SVHN) "
        "need a GPU and the datasets, which the machines that build this book do not have; "
        "their rows read “—” and *not run at this scale*. The book neither confirms nor refutes "
        f"the paper's {TABLE1['cifar10']['ClusTR + QTRADES']['pgd100']:.2f}% on CIFAR-10; the "
        "independent measurements we know of are RobustBench's "
        f"{ROBUSTBENCH_CLUSTR['autoattack']:.2f}% under AutoAttack for the authors' CIFAR-10 "
        f"model and a follow-up report's {low}–{high}% for QTRADES variants."
        if untested
        else "**Every paper-scale claim was run in this build**: see the verdicts below."
    )
    return "\n".join(
        [
            ":::{admonition} What we found, and what we could not test",
            ":class: important",
            "",
            "**Measured here**, on CPUs (the numbers are read from the chapters' results):",
            "",
            *measured,
            "",
            untested_line,
            ":::",
            "",
        ]
    )


def summary_markdown(results: dict) -> str:
    """The summary page (MyST Markdown) from the chapters' results: the findings box
    (:func:`findings_markdown`), then one row per claim."""
    table = summary_rows(results)
    header = (
        "# Summary: the paper's claims and our numbers\n\n"
        + findings_markdown(results)
        + "\n## Every claim\n\n"
        "Generated from the chapters' JSON results and the claims registry "
        "(`clustr_lib.paper.CLAIMS`); every verdict is computed by "
        "`clustr_lib.verdicts`. *Ours* is shown only where the chapter ran the paper's "
        "protocol on the paper's dataset; a stand-in build shows “—” there. The "
        "*digits32 study* column is our measurement on another dataset (chapter 6), never "
        "a reproduction of the paper's number. A claim is *reproduced* when our mean is "
        "within the tolerance of the paper's value (3 accuracy points for accuracies). "
        "Each chapter page states its device and seeds. Where the paper's text, the official "
        "code and this library differ, [the deviations page](../deviations.md) says how and "
        "which one the book follows.\n\n"
    )
    # seven columns fit the page: the claim with where the paper makes it, the verdict with the
    # profile it was drawn from
    shown = pd.DataFrame(
        {
            "id": table["id"],
            "claim (where)": table["claim"] + " (" + table["where"] + ")",
            "paper": table["paper"],
            "judged by": table["judged by"],
            "ours": table["ours"],
            "digits32 study (ours)": table["digits32 study (ours)"],
            "verdict (profile)": "**" + table["verdict"] + "** (" + table["profile"] + ")",
        }
    )
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += [
        "| " + " | ".join(str(row[c]).replace("|", "\\|") for c in shown.columns) + " |"
        for _, row in shown.iterrows()
    ]
    study = [
        "",
        "## The digits32 study's findings (chapters 7–11)",
        "",
        "Our measurement on the recorded digits32 study (7 methods × 3 seeds, CPU), "
        "ClusTR + QTRADES unless a row says otherwise.",
        "",
        "| chapter | finding |",
        "|---|---|",
    ]
    for chapter, what in STUDY_SHAPES:
        measured = (results.get(chapter) or {}).get("measurements", {}).get("study", {})
        key = "cert_shape" if what.startswith("Theorem") else "shape"
        study.append(f"| {chapter} | {what}: {measured.get(key, '—')} |")
    return header + "\n".join(lines + study) + "\n"


def write_summary(chapters_dir, target) -> Path:
    """Write the summary page ``target`` from the chapter results in ``chapters_dir``."""
    target = Path(target)
    target.write_text(summary_markdown(chapter_results(chapters_dir)))
    return target


show_tables_readably()  # a chapter imports this module before it shows its first table
