"""Tables of the image chapters: our runs next to the paper's Tables 1–3 and 2/5."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .paper import FOLLOWUP_AUTOATTACK_RANGE, ROBUSTBENCH_CLUSTR
from .protocol import METHODS

COLUMNS = {"natural": "clean_accuracy", "pgd20": "pgd20_paper", "pgd100": "pgd100_paper"}


def _mean_sd(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) == 0:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std():.2f}"


def paper_vs_ours(frame: pd.DataFrame, paper_table: dict) -> pd.DataFrame:
    """Table 1/3 layout: per method, the paper's value, ours (mean ± sd over seeds) and the
    difference of the means, for natural, PGD-20 and PGD-100 accuracy (the paper's objective)."""
    rows = []
    for method, reported in paper_table.items():
        ours = frame[frame["method"] == method]
        row = {"method": method}
        for name, column in COLUMNS.items():
            row[(name, "paper")] = reported[name]
            row[(name, "ours")] = _mean_sd(ours[column]) if len(ours) else "not run"
            row[(name, "Δ")] = (round(ours[column].mean() - reported[name], 2) if len(ours) else np.nan)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("method")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def objectives_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Robust accuracy under the paper's PGD objective and under −log p_y, mean over seeds,
    with clean accuracy on the whole test set and on the attacked subset."""
    cols = [c for c in ("pgd20_paper", "pgd100_paper", "pgd20_ce", "pgd100_ce") if c in frame]
    return frame.groupby("method", sort=False)[["clean_accuracy", "clean_attacked", *cols]].mean().round(2)


def training_times(frame: pd.DataFrame, paper_minutes: dict) -> pd.DataFrame:
    """Table 2/5 layout (chapters 3, 4 and 6): the paper's minutes (GTX 1080Ti), ours (mean over
    seeds of ``train_minutes``) and ours as a multiple of our nominal training (from the
    unrounded means; NaN without a nominal run or without runs of the method)."""
    nominal = frame.loc[frame["method"] == METHODS["nominal"], "train_minutes"].mean()
    rows = []
    for method, minutes in paper_minutes.items():
        ours = frame.loc[frame["method"] == method, "train_minutes"].mean()
        rows.append({"method": method, "paper (min, GTX 1080Ti)": minutes,
                     "ours (min)": round(ours, 2),
                     "ours / nominal": round(ours / nominal, 2)})  # comparable across devices
    return pd.DataFrame(rows).set_index("method")


# ---------------------------------------------------------------------------------------
# The evaluation chapters (7-11): frames from clustr_lib.studies.


def eps_table(frame: pd.DataFrame, paper_points: dict | None = None) -> pd.DataFrame:
    """Table 4 layout: per ε (× 1/255), the paper's PGD-20/100 and ours per objective (mean
    over seeds)."""
    ours = frame.pivot_table(index="eps_255", columns="objective", values=["pgd20", "pgd100"],
                             aggfunc="mean", sort=False).round(2)
    ours.columns = [f"ours {steps.upper()}, {objective}" for steps, objective in ours.columns]
    if paper_points:
        ours.insert(0, "paper PGD-100", [paper_points.get(e, (np.nan, np.nan))[1] for e in ours.index])
        ours.insert(0, "paper PGD-20", [paper_points.get(e, (np.nan, np.nan))[0] for e in ours.index])
    ours.index.name = "ε (× 1/255)"
    return ours


def mean_sd_table(frame: pd.DataFrame, index: str, columns: str, value: str) -> pd.DataFrame:
    """``value`` as ``mean ± sd`` over seeds, ``index`` × ``columns`` (order of appearance)."""
    rows = list(dict.fromkeys(frame[index]))
    cols = list(dict.fromkeys(frame[columns]))
    table = pd.DataFrame(index=rows, columns=cols, dtype=object)
    for (r, c), group in frame.groupby([index, columns]):
        table.loc[r, c] = _mean_sd(group[value])
    return table.fillna("—")


def external_records(ours: dict) -> pd.DataFrame:
    """ClusTR + QTRADES on CIFAR-10 (ε = 8/255) as others recorded it, next to ``ours``:
    ``{row label: (clean, PGD as reported, AutoAttack)}``."""
    low, high = FOLLOWUP_AUTOATTACK_RANGE
    rows = {"paper (Table 1, PGD-100)": ("91.03", "74.04", "—"),
            "RobustBench entry": (f"{ROBUSTBENCH_CLUSTR['clean']:.2f}",
                                  f"{ROBUSTBENCH_CLUSTR['reported']:.2f}",
                                  f"{ROBUSTBENCH_CLUSTR['autoattack']:.2f}"),
            "follow-up report (QTRADES variants)": ("—", "—", f"{low}–{high}")}
    rows.update({label: tuple(v if isinstance(v, str) else f"{v:.2f}" for v in values)
                 for label, values in ours.items()})
    return pd.DataFrame.from_dict(rows, orient="index",
                                  columns=["clean (%)", "PGD, paper's objective (%)", "AutoAttack (%)"])
