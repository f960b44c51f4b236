"""Verdicts on the paper's claims (:data:`clustr_lib.paper.CLAIMS`), computed from the
chapters' JSON results (:meth:`clustr_lib.report.Chapter.finish`).

A claim is judged only from a measurement at the paper's scale (``scopes[scope].at_scale`` in
the chapter's result); a stand-in or a reduced protocol gives *not run at this scale*, and a
chapter that did not run gives *not run*.
"""

from __future__ import annotations

import math
from pathlib import Path

from .paper import CLAIMS, Claim
from .records import load_json

REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"
NOT_AT_SCALE, NOT_RUN, MEASURED = "not run at this scale", "not run", "measured (no verdict)"


def lookup(measurements: dict, path: str):
    """The value at a dotted ``path`` of nested ``measurements`` (``None`` when absent)."""
    value = measurements
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def holds(claim: Claim, ours) -> bool:
    """Whether ``ours`` satisfies ``claim`` by its rule (see :data:`clustr_lib.paper.CLAIMS`).
    A missing or NaN measurement never holds; a dict claim holds when every setting the paper
    reports and we measured holds, and at least one was measured."""
    if claim.rule == "true":
        return ours is True
    if isinstance(claim.value, dict):
        ours = {float(k): v for k, v in (ours or {}).items()}
        pairs = [(ours[float(k)], v) for k, v in claim.value.items() if float(k) in ours]
        return bool(pairs) and all(_holds_number(claim, o, v) for o, v in pairs)
    return _holds_number(claim, ours, claim.value)


def _holds_number(claim: Claim, ours, value: float) -> bool:
    ours = _number(ours)
    if math.isnan(ours):
        return False
    if claim.rule == "within":
        return abs(ours - value) <= claim.tolerance + 1e-9
    if claim.rule == "at_least":
        return ours >= value - claim.tolerance - 1e-9
    if claim.rule == "at_most":
        return ours <= value + claim.tolerance + 1e-9
    raise ValueError(f"claim {claim.id}: rule {claim.rule!r} judges no number")


def criterion(claim: Claim) -> str:
    """The rule of ``claim`` in words, for the summary table."""
    unit = claim.unit
    if claim.rule == "within":
        return f"ours within ±{claim.tolerance:g}{unit} of the paper's"
    if claim.rule == "at_least":
        return f"ours ≥ {claim.value - claim.tolerance:.2f}{unit}"
    if claim.rule == "at_most":
        return f"ours ≤ {claim.value + claim.tolerance:.2f}{unit}"
    if claim.rule == "true":
        return "holds on every seed and set"
    return "measured, no verdict"


def judge(claim: Claim, result: dict | None) -> dict:
    """The verdict on ``claim`` from its chapter's JSON ``result`` (``None``: not run):
    ``{"verdict", "ours", "also", "profile", "used"}``."""
    if result is None:
        return {"verdict": NOT_RUN, "ours": None, "also": {}, "profile": None, "used": None}
    scope = result.get("scopes", {}).get(claim.scope, {})
    measured = result.get("measurements", {}).get(claim.scope, {})
    ours = lookup(measured, claim.measurement)
    if claim.rule is None:
        verdict = MEASURED
    elif not scope.get("at_scale", False):
        verdict = NOT_AT_SCALE
    else:
        verdict = REPRODUCED if holds(claim, ours) else NOT_REPRODUCED
    return {
        "verdict": verdict,
        "ours": ours,
        "profile": result.get("profile"),
        "used": scope.get("label"),
        "also": {label: lookup(measured, path) for label, path in claim.also.items()},
    }


def chapter_results(directory) -> dict:
    """``{chapter: JSON result}`` of every chapter result in ``directory``."""
    return {p.stem: load_json(p) for p in sorted(Path(directory).glob("*.json"))}


def judge_all(results: dict, claims=CLAIMS) -> list[tuple[Claim, dict]]:
    """Every claim with its verdict from ``results`` (:func:`chapter_results`)."""
    return [(claim, judge(claim, results.get(claim.chapter))) for claim in claims]
