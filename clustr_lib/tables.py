"""Tables of the image chapters: our runs next to the paper's Tables 1–3 and 2/5."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import paper
from .paper import FOLLOWUP_AUTOATTACK_RANGE, ROBUSTBENCH_CLUSTR
from .protocol import METHODS
from .studies import ATTACK_LABELS, attack_mean, mean_table

COLUMNS = {"natural": "clean_accuracy", "pgd20": "pgd20_paper", "pgd100": "pgd100_paper"}


def _mean_sd(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) == 0:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std():.2f}"


def paper_vs_ours(frame: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Table 1/3 layout (chapters 3–5): per method of the paper's table for ``dataset``, the
    paper's value, ours (mean ± sd over seeds of :func:`clustr_lib.studies.runs_frame`; "not
    run" where we have no run) and the difference of the means, for natural, PGD-20 and
    PGD-100 accuracy (the paper's objective), and where the paper's row comes from
    (:data:`clustr_lib.paper.BASELINE_SOURCES`; the warm start's accuracy of its footnote)."""
    rows = []
    sources = paper.BASELINE_SOURCES.get(dataset, {})
    for method, reported in paper.accuracy_table(dataset).items():
        ours = frame[frame["method"] == method]
        row = {"method": method}
        for name, column in COLUMNS.items():
            row[(name, "paper")] = reported[name]
            row[(name, "ours")] = _mean_sd(ours[column]) if len(ours) else "not run"
            row[(name, "Δ")] = (
                round(ours[column].mean() - reported[name], 2) if len(ours) else np.nan
            )
        row[("the paper's row", "source")] = sources.get(method, "the paper's ResNet-18")
        if method == "Nominal Training" and dataset in paper.WARM_START_ACCURACY:
            row[("the paper's row", "source")] += (
                f"; ClusTR's warm start: {paper.WARM_START_ACCURACY[dataset]:.0f}% "
                "(the paper's footnote)"
            )
        rows.append(row)
    table = pd.DataFrame(rows).set_index("method")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def paper_rows(dataset: str) -> pd.DataFrame:
    """Chapters 3–5: the paper's Table 1 (or 3) for ``dataset`` as it reports it — natural,
    PGD-20 and PGD-100 accuracy (%), the training minutes of Tables 2/5 where it gives them,
    and where each row comes from (:data:`clustr_lib.paper.BASELINE_SOURCES`; the warm start's
    accuracy of its footnote). No number of ours: the page's main flow in a stand-in build."""
    minutes = paper.TRAINING_MINUTES.get(dataset, {})
    sources = paper.BASELINE_SOURCES.get(dataset, {})
    rows = []
    for method, reported in paper.accuracy_table(dataset).items():
        source = sources.get(method, "the paper's own ResNet-18 run")
        if method == "Nominal Training" and dataset in paper.WARM_START_ACCURACY:
            source += (
                f"; ClusTR's warm start is another model: {paper.WARM_START_ACCURACY[dataset]:.0f}%"
                " (the paper's footnote)"
            )
        rows.append(
            {
                "method": method,
                "natural (%)": reported["natural"],
                "PGD-20 (%)": reported["pgd20"],
                "PGD-100 (%)": reported["pgd100"],
                "training (min, GTX 1080Ti)": minutes.get(method, np.nan),
                "where the row comes from": source,
            }
        )
    table = pd.DataFrame(rows).set_index("method")
    minutes = table["training (min, GTX 1080Ti)"]
    if minutes.isna().all():  # the paper times no run on this dataset (CIFAR-100)
        return table.drop(columns=minutes.name)
    table[minutes.name] = minutes.astype("Int64")
    return table


def objectives_table(frame: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Chapters 3–6: robust accuracy under the paper's PGD objective and under −log p_y, mean
    over seeds, with clean accuracy on the whole test set and on the attacked subset (columns
    of :func:`clustr_lib.studies.runs_frame`: the protocol's first PGD rule, then the others,
    e.g. ``pgd100_paper_any_iterate``), one row per ``by`` (``"method"``, or ``"source"`` to
    set one method's runs under several recipes side by side) in order of appearance; a first
    column ``seeds`` counts the runs' seeds."""
    cols = [c for c in frame if c.startswith(("pgd20_", "pgd100_"))]
    groups = frame.groupby(by, sort=False)
    means = groups[["clean_accuracy", "clean_attacked", *cols]].mean().round(2)
    means.insert(0, "seeds", groups["seed"].nunique())
    return means


def training_times(frame: pd.DataFrame, paper_minutes: dict) -> pd.DataFrame:
    """Table 2/5 layout (chapters 3, 4 and 6): the paper's minutes (GTX 1080Ti), ours (mean over
    seeds of ``train_minutes``) and ours as a multiple of our nominal training (from the
    unrounded means; NaN without a nominal run or without runs of the method)."""
    nominal = frame.loc[frame["method"] == METHODS["nominal"], "train_minutes"].mean()
    rows = []
    for method, minutes in paper_minutes.items():
        ours = frame.loc[frame["method"] == method, "train_minutes"].mean()
        rows.append(
            {
                "method": method,
                "paper (min, GTX 1080Ti)": minutes,
                "ours (min)": round(ours, 2),
                "ours / nominal": round(ours / nominal, 2),
            }
        )  # comparable across devices
    return pd.DataFrame(rows).set_index("method")


# ---------------------------------------------------------------------------------------
# The evaluation chapters (7-11): frames from clustr_lib.studies.


def eps_table(frame: pd.DataFrame, paper_points: dict | None = None, label=None) -> pd.DataFrame:
    """Table 4 layout: per ε (× 1/255), the paper's PGD-20/100 and ours per objective (mean
    over seeds); ``label(steps, objective)`` names our columns (default ``ours PGD100, paper``)."""
    ours = frame.pivot_table(
        index="eps_255", columns="objective", values=["pgd20", "pgd100"], aggfunc="mean", sort=False
    ).round(2)
    label = label or (lambda steps, objective: f"ours {steps.upper()}, {objective}")
    ours.columns = [label(steps, objective) for steps, objective in ours.columns]
    if paper_points:
        reported = [paper_points.get(e, (np.nan, np.nan)) for e in ours.index]
        ours.insert(0, "paper PGD-100", [v[1] for v in reported])
        ours.insert(0, "paper PGD-20", [v[0] for v in reported])
    ours.index.name = "ε (× 1/255)"
    return ours


def seed_means(frame: pd.DataFrame, index) -> pd.DataFrame:
    """Every numeric column's mean over seeds, per ``index`` (order of appearance), rounded
    to 3 decimals (chapter 12's underflow and certificate tables)."""
    means = frame.groupby(index, sort=False).mean(numeric_only=True)
    return means.drop(columns="seed", errors="ignore").round(3)


def mean_sd_table(
    frame: pd.DataFrame, index, columns: str, value: str, column_order=(), seeds: bool = False
) -> pd.DataFrame:
    """``value`` as ``mean ± sd`` over seeds, ``index`` × ``columns`` (order of appearance,
    except that the values of ``column_order`` present come first, in that order);
    ``index`` is a column or a list of them (``["source", "method"]``: a MultiIndex). With
    ``seeds``, a first column ``seeds`` counts each row's seeds."""
    keys = [index] if isinstance(index, str) else list(index)
    rows = list(dict.fromkeys(frame[keys].itertuples(index=False, name=None)))
    present = list(dict.fromkeys(frame[columns]))
    cols = [c for c in column_order if c in present] + [c for c in present if c not in column_order]
    labels = (
        pd.MultiIndex.from_tuples(rows, names=keys)
        if len(keys) > 1
        else pd.Index([r[0] for r in rows])
    )
    table = pd.DataFrame(index=labels, columns=cols, dtype=object)
    for key, group in frame.groupby([*keys, columns], sort=False):
        table.loc[key[:-1] if len(keys) > 1 else key[0], key[-1]] = _mean_sd(group[value])
    if seeds:
        counts = frame.groupby(keys, sort=False)["seed"].nunique()
        table.insert(0, "seeds", counts.reindex(labels).to_numpy())
    return table.fillna("—")


def external_records(comparison: pd.DataFrame, profile: str) -> pd.DataFrame:
    """Chapter 10: ClusTR + QTRADES on CIFAR-10 (ε = 8/255) as others recorded it, next to ours
    on every source of ``comparison`` (:func:`clustr_lib.studies.attack_comparison`, built
    with ``profile``): clean accuracy of the attacked points, PGD on the paper's objective and
    AutoAttack, means over seeds."""
    measured = (("paper", "clean"), ("paper", "robust"), ("autoattack", "robust"))
    ours = {
        f"ours: {label}, profile {profile}": tuple(
            attack_mean(rows, attack, column=column) for attack, column in measured
        )
        for label, rows in comparison.groupby("source", sort=False)
    }
    low, high = FOLLOWUP_AUTOATTACK_RANGE
    rows = {
        "paper (Table 1, PGD-100)": ("91.03", "74.04", "—"),
        "RobustBench entry": (
            f"{ROBUSTBENCH_CLUSTR['clean']:.2f}",
            f"{ROBUSTBENCH_CLUSTR['reported']:.2f}",
            f"{ROBUSTBENCH_CLUSTR['autoattack']:.2f}",
        ),
        "follow-up report (QTRADES variants)": ("—", "—", f"{low}–{high}"),
    }
    rows.update(
        {
            label: tuple(v if isinstance(v, str) else f"{v:.2f}" for v in values)
            for label, values in ours.items()
        }
    )
    columns = ["clean (%)", "PGD, paper's objective (%)", "AutoAttack (%)"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def _pgd_label(steps: str, objective: str) -> str:
    """``("pgd100", "paper")`` → ``"ours: PGD-100, paper's objective"``."""
    return "ours: " + ATTACK_LABELS[objective].replace("PGD", steps.upper().replace("PGD", "PGD-"))


def eps_ablation(frame: pd.DataFrame, sources) -> pd.DataFrame:
    """Chapter 7, Table 4 per source: :func:`eps_table` of each source's rows of
    :func:`clustr_lib.studies.eps_ablation`, indexed by (source, ε); the paper's PGD-20 /
    PGD-100 (Table 4, and Table 1/3 at 8/255) for the sources that have a paper dataset."""
    parts = {
        s.label: eps_table(
            frame[frame["source"] == s.label],
            paper.table4(s.paper_dataset) if s.paper_dataset else None,
            label=_pgd_label,
        )
        for s in sources
    }
    table = pd.concat(parts, names=["source"])
    paper_columns = [c for c in table if c.startswith("paper")]
    return table[paper_columns + [c for c in table if c not in paper_columns]]


def d_ablation(
    clean: pd.DataFrame, robust: pd.DataFrame, sources, column: str = "pgd20"
) -> pd.DataFrame:
    """Chapter 8, Fig. 4 as a table, indexed by (source, D): clean accuracy (whole test set)
    and ``column`` accuracy per objective (attacked points), mean over seeds, from
    :func:`clustr_lib.studies.d_ablation`; the paper's best PGD-20 (App. E.4) on its row (its D)
    for the sources that have a paper dataset."""
    labels = [s.label for s in sources]  # one block per source of ``sources``
    clean, robust = clean[clean["source"].isin(labels)], robust[robust["source"].isin(labels)]
    table = mean_table(robust, ["source", "D"], "objective", column)
    table.columns = [_pgd_label(column, o) for o in table.columns]
    clean_means = clean.groupby(["source", "D"])["clean"].mean().round(2)
    table.insert(0, "ours: clean", clean_means.reindex(table.index).to_numpy())
    best = {
        s.label: paper.D_ABLATION[s.paper_dataset]
        for s in sources
        if s.paper_dataset in paper.D_ABLATION
    }
    if best and column == "pgd20":
        table.insert(
            0,
            "paper: best PGD-20 (its D)",
            [
                best[src]["best_pgd20"] if src in best and d == best[src]["best_D"] else np.nan
                for src, d in table.index
            ],
        )
    return table


def adaptive_attack(frame: pd.DataFrame, sources, column: str = "pgd100") -> pd.DataFrame:
    """Chapter 9 (Sec. 4.2): ``column`` accuracy per (source, method) and objective of
    :func:`clustr_lib.studies.adaptive_attack`, mean ± sd over seeds; first the paper's
    PGD-100 and Magnet-loss values for ClusTR + QTRADES on the sources whose dataset it
    attacks so (``—`` elsewhere)."""
    frame = frame[frame["source"].isin([s.label for s in sources])]  # one block per source
    table = mean_sd_table(frame, ["source", "method"], "objective", column)
    table.columns = [_pgd_label(column, o) for o in table.columns]
    reported = {
        s.label: paper.ADAPTIVE[s.paper_dataset]
        for s in sources
        if s.paper_dataset in paper.ADAPTIVE
    }
    if reported:
        for i, (name, key) in enumerate(
            (
                ("paper: PGD-100, paper's objective", "pgd100"),
                ("paper: PGD-100, Magnet loss (adaptive)", "adaptive"),
            )
        ):
            table.insert(
                i,
                name,
                [
                    f"{reported[src][key]:.2f}"
                    if src in reported and method == "ClusTR + QTRADES"
                    else "—"
                    for src, method in table.index
                ],
            )
    return table


def autoattack_steps(comparison: pd.DataFrame) -> pd.DataFrame:
    """Chapter 10: robust accuracy (%) after each of AutoAttack's attacks in turn (each attacks
    the points the previous ones left), per (source, method), mean over seeds, from
    :func:`clustr_lib.studies.attack_comparison`; the attacked points' clean accuracy first."""
    rows = comparison[comparison["attack"] == ATTACK_LABELS["autoattack"]]
    steps = [c for c in rows if c.startswith("after_") and rows[c].notna().any()]
    table = rows.groupby(["source", "method"], sort=False)[["clean", *steps]].mean().round(2)
    table.columns = ["clean (attacked points)"] + [
        f"after {c.removeprefix('after_').upper()}" for c in steps
    ]
    return table


def kmeans_on_nominal(frame: pd.DataFrame, sources) -> pd.DataFrame:
    """Chapter 11 (App. B.1): per (source, seed), the nominal network's head against
    k-means + Eq. 4 on its features (:func:`clustr_lib.studies.kmeans_on_nominal`); the paper's
    CIFAR-10 values follow as a row ``paper (reported)`` of a cifar10 source only."""
    parts = []
    for s in sources:
        own = frame[frame["source"] == s.label].set_index(["source", "seed"]).round(2)
        parts.append(own)
        if s.paper_dataset == "cifar10":
            reported = paper.KMEANS_ON_NOMINAL
            row = pd.MultiIndex.from_tuples(
                [(s.label, "paper (reported)")], names=["source", "seed"]
            )
            parts.append(
                pd.DataFrame(
                    {
                        "linear head": [reported["nominal_accuracy"]],
                        "k-means + Eq. 4 (D in the tables)": [reported["kmeans_eq4_accuracy"]],
                    },
                    index=row,
                )
            )
    return pd.concat(parts)[[c for c in frame.columns if c not in ("source", "seed")]]
