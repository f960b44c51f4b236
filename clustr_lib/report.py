"""Book-facing: a chapter's banner, its JSON result, the values its prose glues, its
provenance table, and the summary page generated from every chapter's result and
:data:`clustr_lib.paper.CLAIMS`.

A chapter notebook opens a :class:`Chapter` (which shows where its numbers come from), draws
its tables and figures, and ends with :meth:`Chapter.finish` (the measurements, judged by
:mod:`clustr_lib.verdicts`, recorded and glued) and :meth:`Chapter.provenance`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from .paper import CLAIMS
from .records import device_name, provenance, save_json, to_plain
from .verdicts import chapter_results, criterion, judge, judge_all

SCALE_PROFILES = ("full",)  # profiles at the paper's settings (chapters without sources)
STAND_IN_WARNING = (
    "> **Not a reproduction.** The paper's datasets are replaced by a stand-in or the protocol "
    "is reduced in this build: those sections exercise the chapter's code end to end, their "
    "numbers say nothing about the paper's, and no verdict is drawn from them."
)
STUDY_NOTE = (
    "The digits32 study's numbers are **our measurement** on a stand-in dataset (chapter 6: "
    "narrow ResNet-18, 3 seeds, the paper's attack protocol on 80 test points), recorded in "
    "`results/digits32/evaluations/`; they are not the paper's."
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


def banner(sources, profile: str) -> str:
    """Markdown naming what a chapter evaluates, with a warning when a paper dataset is
    replaced by a stand-in or the protocol is reduced."""
    lines = [f"Page built with profile `{profile}`. Evaluated:", ""]
    lines += [f"* {s.describe()}" for s in sources]
    if any(s.paper_dataset and not s.at_scale for s in sources):
        lines = [STAND_IN_WARNING, ""] + lines
    if any(s.paper_dataset is None for s in sources):
        lines += ["", STUDY_NOTE]
    return "\n".join(lines)


def provenance_table(sources, profile: str) -> pd.DataFrame:
    """Where a chapter's numbers come from, one row per source: profile, dataset, seeds, the
    devices that trained the models and made the evaluations, and how many evaluations were
    read from the record or computed while building the page."""
    rows = [
        {
            "source": s.label,
            "profile": profile,
            "dataset": s.dataset,
            "seeds": s.seeds,
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
        if show and self.sources:
            display(Markdown(banner(self.sources, profile)))

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
        glue_all(
            {
                "profile": self.profile,
                **flatten(result["measurements"]),
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
# The summary page, generated from the chapters' results and the claims registry.

STUDY_SHAPES = [  # (chapter, what) of the digits32 study's findings on the summary page
    ("07_eps_ablation", "Table 4's shape: PGD-100 (paper's objective) against ε"),
    ("08_d_ablation", "Fig. 4's shape: −log p_y at D = 1"),
    ("09_adaptive_attack", "The adaptive attack against PGD on −log p_y"),
    ("10_audit", "The audit: the paper's PGD against the strongest attack"),
    ("10_audit", "Theorem 1 at image scale"),
    ("11_kmeans_nominal", "k-means + Eq. 4 on nominal features"),
]


def format_value(value, unit: str = "%") -> str:
    """A measurement for a table cell: numbers to 2 decimals, ``—`` when missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v, unit)}" for k, v in value.items())
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
                    f"{k}: {format_value(v, claim.unit)}" for k, v in judged["also"].items()
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
                "claim": claim.statement + (" *(audit)*" if claim.audit else ""),
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


def summary_markdown(results: dict) -> str:
    """The summary page (MyST Markdown) from the chapters' results."""
    table = summary_rows(results)
    header = (
        "# Summary: the paper's claims and our numbers\n\n"
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
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join(str(row[c]).replace("|", "\\|") for c in table.columns) + " |"
        for _, row in table.iterrows()
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
