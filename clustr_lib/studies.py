"""The evaluation chapters' measurements over a :class:`~clustr_lib.sources.Source`, as tidy
DataFrames (one row per seed and setting): Table 4 (ε ablation, ch. 7), Fig. 4 (D ablation,
ch. 8), the adaptive attack (Sec. 4.2, ch. 9), the attack audit and Theorem 1 at image scale
(ch. 10), and k-means on nominal features (App. B.1, ch. 11).

Accuracies are percentages. Every PGD uses the run's own protocol (step, restarts, attacked
points) unless a row says otherwise; a value the run already recorded (PGD at ε = 8/255 with
the paper's objective and −log p_y) is read from its result, never recomputed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .evaluations import tiny_share
from .experiments import CLUSTER_METHODS, METHODS


def pgd_params(settings: dict, **changes) -> dict:
    """The PGD parameters of a run's protocol, with ``changes``."""
    return {"eps": settings["eps"], "step_size": settings["pgd_step"],
            "steps": list(settings["pgd_steps"]), "restarts": settings["pgd_restarts"],
            "restarts_per_pass": settings["pgd_restarts_per_pass"],
            "eval_size": settings["eval_size"], **changes}


def magnet_alpha(settings: dict, method: str) -> float:
    """α of the Magnet loss the run was trained with (the adaptive attack's margin)."""
    return settings["alpha_qtrades" if method == "clustr_qtrades" else "alpha"]


def _recorded_pgd(source, method, objective, steps=None):
    """PGD at the protocol's ε as the run recorded it: ``[{"seed", "metrics"}]``."""
    steps = source.settings["pgd_steps"] if steps is None else steps
    return [{"seed": r["config"]["seed"],
             "metrics": {"clean": r["metrics"][f"clean_accuracy_eval_{objective}"],
                         "robust": {str(t): r["metrics"][f"pgd{t}_{objective}"] for t in steps}}}
            for r in source.runs(method)]


def pgd_rows(source, method: str, objective: str, **changes) -> list[dict]:
    """PGD robust accuracy per seed (recorded value when the run has it, else measured)."""
    settings = source.settings
    params = pgd_params(settings, objective=objective, **changes)
    if objective == "magnet":
        params["alpha"] = magnet_alpha(settings, method)
    recorded = (objective in settings["pgd_objectives"] and params["eps"] == settings["eps"]
                and params.get("num_nearest") in (None, settings["num_nearest"])
                and set(params["steps"]) <= set(settings["pgd_steps"])
                and set(changes) <= {"eps", "num_nearest", "steps"})
    evaluated = (_recorded_pgd(source, method, objective, params["steps"]) if recorded
                 else source.evaluate(method, "pgd", params))
    rows = []
    for e in evaluated:
        row = {"source": source.label, "method": METHODS[method], "seed": e["seed"],
               "objective": objective, "clean": 100 * e["metrics"]["clean"]}
        row.update({f"pgd{t}": 100 * v for t, v in e["metrics"]["robust"].items()})
        rows.append(row)
    return rows


def eps_ablation(source, eps_values, objectives, method: str = "clustr_qtrades") -> pd.DataFrame:
    """Table 4: PGD-20/100 at each ε (in units of 1/255), per objective and seed."""
    rows = []
    for eps in eps_values:
        for objective in objectives:
            for row in pgd_rows(source, method, objective, eps=float(eps) / 255):
                rows.append({**row, "eps_255": float(eps)})
    return pd.DataFrame(rows)


def d_ablation(source, d_values, objectives, method: str = "clustr_qtrades", steps: int = 20):
    """Fig. 4: clean accuracy (whole test set) for every D, and PGD-``steps`` accuracy at
    each D of ``d_values``, per objective and seed. Returns ``(clean, robust)`` frames."""
    total = source.settings["clusters_per_class"] * source.data.num_classes
    clean_rows = []
    for e in source.evaluate(method, "clean_by_d", {"d_values": list(range(1, total + 1))}):
        clean_rows += [{"source": source.label, "seed": e["seed"], "D": int(d), "clean": 100 * acc}
                       for d, acc in e["metrics"]["accuracy"].items()]
    robust_rows = []
    for d in sorted({min(int(d), total) for d in d_values}):
        for objective in objectives:
            for row in pgd_rows(source, method, objective, num_nearest=d, steps=[steps]):
                robust_rows.append({**row, "D": d})
    return pd.DataFrame(clean_rows), pd.DataFrame(robust_rows)


def adaptive_attack(source, methods=("clustr_qtrades", "clustr")) -> pd.DataFrame:
    """Sec. 4.2: PGD on the paper's objective vs PGD maximising the Magnet loss (and
    −log p_y for reference), per method and seed."""
    methods = [m for m in methods if m in source.methods]
    rows = []
    for method in methods:
        for objective in ("paper", "magnet", "ce"):
            rows += pgd_rows(source, method, objective)
    return pd.DataFrame(rows)


ATTACK_LABELS = {"paper": "PGD, paper's objective", "ce": "PGD, −log p_y",
                 "margin": "PGD, margin", "magnet": "PGD, Magnet loss (adaptive)",
                 "autoattack": "AutoAttack (standard)", "square": "Square alone (black-box)"}


def attack_comparison(source, methods, autoattack_methods) -> pd.DataFrame:
    """The audit: robust accuracy of the same models under every attack, per seed (PGD-100
    for the PGD rows; AutoAttack's four attacks in sequence; Square alone)."""
    last = str(max(source.settings["pgd_steps"]))
    methods = [m for m in methods if m in source.methods]
    rows = []
    for method in methods:
        cluster = method in CLUSTER_METHODS
        for objective in ("paper", "ce", "margin") + (("magnet",) if cluster else ()):
            if objective == "paper" and not cluster:
                continue  # for a CE network the paper's objective is −log p_y
            rows += [{**r, "attack": ATTACK_LABELS[objective], "robust": r[f"pgd{last}"]}
                     for r in pgd_rows(source, method, objective)]
        if method in autoattack_methods:
            eps, size = source.settings["eps"], source.settings["eval_size"]
            for label, attacks in (("autoattack", ["apgd-ce", "apgd-t", "fab-t", "square"]),
                                   ("square", ["square"])):
                for e in source.evaluate(method, "autoattack",
                                         {"eps": eps, "attacks": attacks, "eval_size": size}):
                    after = e["metrics"]["robust_after"]
                    rows.append({"source": source.label, "method": METHODS[method],
                                 "seed": e["seed"], "attack": ATTACK_LABELS[label],
                                 "clean": 100 * after["clean"],
                                 "robust": 100 * after[attacks[-1]],
                                 **{f"after_{a}": 100 * after[a] for a in attacks}})
    return pd.DataFrame(rows)


def attack_mean(comparison: pd.DataFrame, attack: str, method: str = "ClusTR + QTRADES",
                column: str = "robust") -> float:
    """Mean over seeds of ``column`` for one attack (a key of :data:`ATTACK_LABELS`) and method
    of an :func:`attack_comparison` frame (NaN when absent)."""
    return mean_of(comparison, column, method=method, attack=ATTACK_LABELS[attack])


def gradient_norms(source, method: str, objectives) -> pd.DataFrame:
    """Per point and objective, ``‖∇_x loss‖₂`` at the clean input (long format)."""
    params = {"objectives": list(objectives), "eval_size": source.settings["eval_size"],
              "alpha": magnet_alpha(source.settings, method)}
    rows = []
    for e in source.evaluate(method, "gradient_norms", params):
        correct = e["metrics"]["clean_correct"]
        for objective, norms in e["metrics"]["norms"].items():
            rows += [{"source": source.label, "method": METHODS[method], "seed": e["seed"],
                      "objective": objective, "norm": n, "clean_correct": c}
                     for n, c in zip(norms, correct)]
    return pd.DataFrame(rows)


def gradient_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Shares (%) of points whose gradient norm is exactly zero or below float32's resolution,
    and the median norm, per method and objective."""
    def summarise(group):
        shares = tiny_share(group["norm"])
        return pd.Series({"points": len(group), "zero (%)": round(100 * shares["zero"], 2),
                          "< 1.2e-7 (%)": round(100 * shares["tiny"], 2),
                          "median norm": f"{group['norm'].median():.2e}"}, dtype=object)
    return frame.groupby(["method", "objective"], sort=False)[["norm"]].apply(summarise)


def attack_paths(source, method: str, objectives, steps: int | None = None) -> pd.DataFrame:
    """One PGD run per objective with every iterate recorded: mean loss and accuracy (%) per
    iteration, per seed (long format)."""
    settings = source.settings
    steps = int(steps or max(settings["pgd_steps"]))
    rows = []
    for objective in objectives:
        params = {"eps": settings["eps"], "step_size": settings["pgd_step"], "steps": steps,
                  "objective": objective, "eval_size": settings["eval_size"]}
        if objective == "magnet":
            params["alpha"] = magnet_alpha(settings, method)
        for e in source.evaluate(method, "attack_path", params):
            m = e["metrics"]
            rows += [{"source": source.label, "method": METHODS[method], "seed": e["seed"],
                      "objective": objective, "iteration": t, "mean_loss": loss,
                      "accuracy": 100 * acc}
                     for t, (loss, acc) in enumerate(zip(m["mean_loss"], m["accuracy"]))]
    return pd.DataFrame(rows)


def certificate(source, methods=("clustr_qtrades", "clustr")) -> pd.DataFrame:
    """Theorem 1 on the image models, per method and seed (see
    :func:`clustr_lib.evaluations.image_certificate`)."""
    methods = [m for m in methods if m in source.methods]
    rows = []
    for method in methods:
        params = {"eps_linf": source.settings["eps"], "eval_size": source.settings["eval_size"]}
        for e in source.evaluate(method, "certificate", params):
            m = e["metrics"]
            rows.append({"source": source.label, "method": METHODS[method], "seed": e["seed"],
                         "L (upper bound)": m["lipschitz_upper_bound"],
                         "median radius (sound)": m["sound"]["median_radius"],
                         "median radius (paper)": m["paper"]["median_radius"],
                         "ℓ2 radius needed": m["l2_radius_needed"],
                         "median ℓ∞ radius certified": m["median_linf_certified"],
                         "certified at 8/255 (%)": 100 * m["sound"]["certified_share"],
                         "certified at 8/255, paper's reduction (%)": 100 * m["paper"]["certified_share"],
                         "nearest-cluster accuracy (%)": 100 * m["nearest_cluster_accuracy"]})
    return pd.DataFrame(rows)


def kmeans_on_nominal(source) -> pd.DataFrame:
    """App. B.1: the nominal network's head vs k-means + Eq. (4) on its features, per seed."""
    settings = source.settings
    rows = []
    for e in source.evaluate("nominal", "kmeans_nominal",
                             {"clusters_per_class": settings["clusters_per_class"],
                              "num_nearest": settings["num_nearest"]}):
        m = e["metrics"]
        rows.append({"source": source.label, "seed": e["seed"],
                     "linear head": 100 * m["head_accuracy"],
                     f"k-means + Eq. 4 (D = {settings['num_nearest']})": 100 * m["eq4_d"],
                     "k-means + Eq. 4 (all clusters)": 100 * m["eq4_all"],
                     "nearest cluster": 100 * m["nearest_cluster"],
                     "σ²": m["variance"]})
    return pd.DataFrame(rows)


def mean_table(frame: pd.DataFrame, index, columns, values) -> pd.DataFrame:
    """Mean over seeds, pivoted (rounded to 2 decimals)."""
    return frame.pivot_table(index=index, columns=columns, values=values, aggfunc="mean",
                             sort=False).round(2)


def seeds_of(frame: pd.DataFrame) -> int:
    """Number of seeds in a frame (0 when empty)."""
    return int(frame["seed"].nunique()) if len(frame) else 0


def mean_of(frame: pd.DataFrame, column: str, **where) -> float:
    """Mean of ``column`` over the rows matching ``where`` (NaN when none)."""
    mask = np.ones(len(frame), dtype=bool)
    for key, value in where.items():
        mask &= (frame[key] == value).to_numpy()
    return float(frame.loc[mask, column].mean()) if mask.any() else float("nan")


def masking_flags(comparison: pd.DataFrame, gradients: pd.DataFrame | None = None,
                  tolerance: float = 2.0) -> pd.DataFrame:
    """Signs that PGD with the paper's objective over-states robustness, per method (mean
    over seeds; a sign is raised when an attack beats that PGD by more than ``tolerance``
    accuracy points):

    * another white-box PGD objective does better (the paper's objective is weak);
    * AutoAttack does better;
    * black-box Square alone does better (gradients mislead white-box attacks);
    * the paper's objective has an exactly zero input gradient at some clean points.
    """
    labels = ATTACK_LABELS
    rows = []
    for method, group in comparison.groupby("method", sort=False):
        mean = group.groupby("attack")["robust"].mean()
        reference = mean.get(labels["paper"], mean.get(labels["ce"]))
        white = min(mean[labels[o]] for o in ("paper", "ce", "margin", "magnet") if labels[o] in mean)
        row = {"method": method, "PGD, paper's objective": reference, "strongest PGD": white,
               "a PGD objective beats the paper's": white < reference - tolerance}
        for key, name in (("autoattack", "AutoAttack"), ("square", "Square alone")):
            if labels[key] in mean:
                row[name] = mean[labels[key]]
                row[f"{name} beats the paper's PGD"] = mean[labels[key]] < reference - tolerance
        if gradients is not None and len(gradients):
            own = gradients[(gradients["method"] == method) & (gradients["objective"] == "paper")]
            if len(own):
                row["zero gradients, paper's objective (%)"] = 100 * float((own["norm"] == 0).mean())
        rows.append(row)
    return pd.DataFrame(rows).set_index("method").round(2)
