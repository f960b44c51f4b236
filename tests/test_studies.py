"""Findings computed from hand-made frames (the chapters' rules, checked by hand)."""

import dataclasses
import json
import signal

import pandas as pd
import pytest

from clustr_lib import clock, protocol, recording, studies


def calibration_frame(rows):
    return pd.DataFrame(
        [{"source": "s", "seed": seed, "eps_255": eps, "pgd100": acc} for eps, seed, acc in rows]
    )


def test_the_calibrated_eps_is_the_smallest_whose_seed_mean_is_below_five_percent():
    frame = calibration_frame(
        [(8, 0, 20.0), (8, 1, 10.0), (12, 0, 8.0), (12, 1, 3.0), (16, 0, 1.0), (16, 1, 2.0)]
    )
    # means: 15.0, 5.5, 1.5 -> 16 (5.5 is not below 5), although one seed is below at 12
    assert studies.calibrated_eps(frame) == 16.0
    assert studies.calibrated_eps(frame, below=6.0) == 12.0
    assert studies.calibrated_eps(frame, below=1.0) is None


def test_eps_findings_carry_the_calibration_when_given():
    eps = pd.DataFrame(
        [
            {"source": "s", "seed": 0, "objective": o, "eps_255": e, "pgd100": acc}
            for o, e, acc in [
                ("paper", 2, 90.0),
                ("paper", 8, 60.0),
                ("ce", 2, 80.0),
                ("ce", 8, 50.0),
            ]
        ]
    )
    found = studies.eps_findings(eps, calibration_frame([(8, 0, 4.0)]))
    assert found["calibrated_eps"] == 8.0 and found["nominal_pgd100"] == {"8": 4.0}
    assert found["falls"] and found["eps_max_ce"] == 50.0
    assert found["calibrated_eps_text"] == "8/255"
    assert found["at_calibrated_paper"] == 60.0 and found["at_calibrated_ce"] == 50.0
    assert "calibrated_eps" not in studies.eps_findings(eps)
    never = studies.eps_findings(eps, calibration_frame([(2, 0, 40.0)]))
    assert never["calibrated_eps"] is None and never["calibrated_eps_text"] == "none of the ε tried"
    assert never["at_calibrated_paper"] != never["at_calibrated_paper"]  # NaN


def test_masking_needs_autoattack_more_than_the_margin_below_a_pgd_that_left_something():
    margin = studies.MASKING_MARGIN
    assert studies.masked(ce=30.0, autoattack=30.0 - margin - 0.1) is True
    assert studies.masked(ce=30.0, autoattack=30.0 - margin) is False  # within the margin
    assert studies.masked(ce=margin, autoattack=0.0) is None  # too little left to break
    assert studies.masked(ce=float("nan"), autoattack=0.0) is None
    labels = studies.ATTACK_LABELS
    frame = pd.DataFrame(
        {"method": "A", "seed": 0, "attack": [labels["paper"], labels["ce"], labels["autoattack"]],
         "robust": [12.6, 0.0, 0.0]}
    )  # fmt: skip
    flags = studies.masking_flags(frame).iloc[0]  # the table says what the plain answer says
    assert flags["masking: AutoAttack beats PGD on −log p_y"] is None
    assert "too little left to break" in studies.masking_answer(12.6, 0.0, 0.0)["masking"]


def test_the_masking_answer_compares_autoattack_with_pgd_on_a_sound_objective():
    masked = studies.masking_answer(paper=74.0, ce=60.0, autoattack=0.0)
    assert masked["beyond_ce"] == 60.0 and "a sign of gradient masking" in masked["masking"]
    assert "more than the 2-point margin" in masked["masking"]
    sound = studies.masking_answer(paper=55.0, ce=48.7, autoattack=47.5)
    assert sound["beyond_paper"] == pytest.approx(7.5)
    assert sound["masking"].startswith("AutoAttack breaks no more than PGD on −log p_y")
    assert "over-states" not in sound["masking"]  # the audit's shape says that
    assert "not recorded" in studies.masking_answer(50.0, 49.0, float("nan"))["masking"]
    broken = studies.masking_answer(paper=15.0, ce=0.0, autoattack=0.0)  # nothing left to mask
    assert broken["beyond_paper"] == 15.0 and "too little left" in broken["masking"]
    assert "not masked" not in broken["masking"] and "gradient masking" not in broken["masking"]


def test_the_fashion32_study_is_four_methods_and_the_logprob_variant_at_its_cpu_scale(
    monkeypatch,
):
    from clustr_lib import sources

    asked = []
    monkeypatch.setattr(sources, "images", lambda name, **kw: asked.append((name, kw)) or name)
    main, logprob = sources.study_sources("fashion32", "/repo", device="cpu")
    assert asked == [("fashion32", {"device": "cpu", "train_size": 10_000})] * 2
    assert main.methods == ["nominal", "trades", "clustr", "clustr_qtrades"]
    assert logprob.methods == ["clustr_qtrades"] and logprob.variant == "logprob"
    assert main.variant is None and main.dataset == "fashion32" and not main.at_scale
    assert str(main.results_dir) == "/repo/results/fashion32"
    assert str(logprob.results_dir) == "/repo/results/fashion32-logprob"
    assert main.settings["width"] == 8 and main.settings["eval_size"] == 500
    assert main.settings["qtrades_form"] == "official"  # the paper's protocol otherwise
    assert logprob.settings["qtrades_form"] == "logprob"
    assert main.settings["flip"]  # fashion32 is augmented as CIFAR is, flips included
    asked.clear()
    paper, _ = sources.study_sources("fashion32-paper", "/repo", device="cuda")
    assert asked[0] == ("fashion32", {"device": "cuda", "train_size": None})  # all 60,000
    assert paper.settings["width"] == 64 and paper.settings["eval_size"] is None
    assert (paper.settings["ce_epochs"], paper.settings["magnet_epochs"]) == (90, 30)
    assert paper.methods == main.methods and str(paper.results_dir).endswith("fashion32-paper")
    asked.clear()
    (piece,) = sources.study_sources("fashion32-paper-500", "/repo", device="cuda")
    assert asked == [("fashion32", {"device": "cuda", "train_size": None})]  # no variant
    assert piece.methods == ["nominal", "clustr_qtrades"]
    assert str(piece.results_dir) == "/repo/results/fashion32-paper-500"
    assert piece.settings == {**paper.settings, "eval_size": 500}  # only fewer points attacked


def test_the_dataset_audit_asks_every_attack_at_both_radii_and_nothing_twice(tmp_path):
    """The audit of a study (issue 14), planned on one seed of 4 methods: counted by hand."""
    from clustr_lib import plan, sources

    src = sources.paper_source(
        "cifar10",
        stand_in="digits32",
        train_size=200,
        test_size=40,
        overrides={"width": 2, "eval_size": 8, "pgd_restarts": 1, "pgd_steps": [2]},
        seeds=1,
        results_dir=tmp_path / "results",
    )
    methods = ["nominal", "trades", "clustr", "clustr_qtrades"]  # as a study names them
    src = dataclasses.replace(src, paper_dataset=None, only_methods=methods, planner=plan.Planner())
    assert src.methods == methods
    frames = studies.dataset_audit(src, protocol.FASHION32_STUDY["audit"])
    assert set(frames) == {"runs", "attacks", "gradients", "underflow", "certificate"}
    evaluated = [t for t in src.planner.tasks.values() if t.kind == "evaluation"]
    by_name = {}
    for t in evaluated:
        by_name[t.evaluation] = by_name.get(t.evaluation, 0) + 1
    # PGD: a CE network has 2 objectives (−log p_y, margin), a cluster network 4, each under
    # 3 rules at 2 radii; at 8/255 the runs record −log p_y (and the paper's objective) under
    # the protocol's two rules themselves: (2 + 4) · 2 · 3 · 2 − (1 + 2) · 2 · 2 = 60.
    assert by_name == {
        "pgd": 60,
        "autoattack": 4 * 2 * 2,  # AutoAttack and Square alone, 4 methods, 2 radii
        "gradient_norms": 4,
        "score_underflow": 2,  # the cluster networks
        "certificate": 2 * 2,
    }
    keys = [(t.method, t.evaluation, json.dumps(t.params, sort_keys=True)) for t in evaluated]
    assert len(set(keys)) == len(keys)
    radii = {round(t.params["eps"] * 255, 1) for t in evaluated if t.evaluation == "pgd"}
    assert radii == {8.0, 25.5}


def test_a_study_is_recorded_seed_after_seed_runs_before_their_audit(tmp_path, monkeypatch):
    """So that a recording stopped at any time (they take several sessions) has whole seeds."""
    from clustr_lib import sources

    study = {
        "dataset": "digits32",
        "train_size": 200,
        "seeds": 2,
        "results": "tiny",
        "methods": ["nominal", "clustr"],
        "overrides": {"width": 2, "eval_size": 8},
        "variants": {"v": {"methods": ["clustr"], "overrides": {"qtrades_form": "logprob"}}},
        "audit": protocol.FASHION32_STUDY["audit"],
    }
    monkeypatch.setitem(sources.STUDIES, "tiny", (study, "tiny study", "tiny"))
    calls = []
    monkeypatch.setattr(
        sources.Source,
        "runs",
        lambda self, *a, **k: calls.append(
            ("runs", self.name, self.seeds, signal.getsignal(signal.SIGTSTP) is handler)
        ),
    )
    monkeypatch.setattr(
        studies,
        "dataset_audit",
        lambda srcs, audit: calls.append(("audit", *[(s.name, s.seeds) for s in srcs])),
    )
    with clock.count_suspensions():  # the handler the recording installs
        handler = signal.getsignal(signal.SIGTSTP)
    recording.record_study("tiny", {}, tmp_path, "cpu")
    assert calls == [  # each seed's audit takes every source at once (radius by radius)
        ("runs", "tiny", 1, True),  # True: SIGTSTP is caught (time suspended not counted)
        ("runs", "tiny_v", 1, True),
        ("audit", ("tiny", 1), ("tiny_v", 1)),
        ("runs", "tiny", 2, True),
        ("runs", "tiny_v", 2, True),
        ("audit", ("tiny", 2), ("tiny_v", 2)),
    ]


def test_complete_seeds_keeps_a_seed_only_where_it_has_every_attack_of_its_model():
    rows = [  # (method, seed, attack): seed 1 of A lacks "z"; B has only "x", at both seeds
        ("A", 0, "x"), ("A", 0, "z"), ("A", 1, "x"), ("B", 0, "x"), ("B", 1, "x"),
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["method", "seed", "attack"]).assign(robust=1.0)
    kept = studies.complete_seeds(frame)  # no "source" column: grouped by method alone
    assert sorted(map(tuple, kept[["method", "seed", "attack"]].to_numpy())) == sorted(
        [("A", 0, "x"), ("A", 0, "z"), ("B", 0, "x"), ("B", 1, "x")]
    )
    for _, group in kept.groupby("method"):  # the property: one attack set at every seed
        assert group.groupby("seed")["attack"].apply(frozenset).nunique() == 1
    assert studies.complete_seeds(frame.iloc[:0]).empty


def test_radii_are_written_in_units_of_1_255_only_when_whole():
    assert studies.eps_text(8 / 255) == "8/255" and studies.eps_text(16 / 255) == "16/255"
    assert studies.eps_text(0.1) == "0.1" and studies.eps_text(25.5 / 255) == "0.1"


def test_attacks_are_split_by_radius_with_an_empty_frame_where_none_is_recorded():
    frame = pd.DataFrame(
        {"eps_255": [8.0, 8.0, 25.5, 25.5, 25.5], "robust": [1.0, 2.0, 3.0, 4.0, 5.0],
         "attack": ["x", "y", "x", "y", "x"], "seed": [0, 0, 0, 0, 1], "method": "A"}
    )  # fmt: skip
    at = studies.by_radius(frame, [8 / 255, 0.1, 16 / 255])
    assert list(at) == [8.0, 25.5, 16.0]
    assert list(at[8.0]["robust"]) == [1.0, 2.0]
    assert list(at[25.5]["robust"]) == [3.0, 4.0]  # seed 1 lacks attack y at 0.1: left out
    assert at[16.0].empty
    assert all(f.empty for f in studies.by_radius(pd.DataFrame(), [8 / 255]).values())
