"""Chapter 12's whole audit (issue 14) computed on two tiny runs, then read as the chapter
reads it: so that a recording that reaches a new kind of evaluation cannot break the chapter."""

import dataclasses

import matplotlib
import numpy as np
import pytest

from clustr_lib import plan, plots, protocol, report, sources, studies, tables

matplotlib.use("Agg")


def test_a_whole_audit_of_a_tiny_study_reads_as_chapter_12_reads_it(tmp_path):
    """Every measurement of the audit computed on two tiny runs, then every reading chapter 12
    makes of it (so that a recording that reaches a new kind of evaluation cannot break the
    chapter), with properties any audit must have."""
    tiny = {"width": 2, "eval_size": 6, "pgd_restarts": 1, "pgd_steps": [2], "ce_epochs": 1,
            "ce_milestones": [1], "magnet_epochs": 1, "samples_per_cluster": 5}  # fmt: skip
    src = sources.paper_source(
        "cifar10", stand_in="digits32", train_size=200, test_size=40, overrides=tiny, seeds=1,
        results_dir=tmp_path / "results",
    )  # fmt: skip
    src = dataclasses.replace(src, paper_dataset=None, only_methods=["nominal", "clustr_qtrades"])
    audit = protocol.FASHION32_STUDY["audit"]
    frames = studies.dataset_audit(src, audit)

    attacks = frames["attacks"]
    assert set(attacks["eps_255"]) == {8.0, 25.5} and attacks["robust"].between(0, 100).all()
    steps = attacks[attacks["attack"] == studies.ATTACK_LABELS["autoattack"]]
    sequence = steps[["clean", "after_apgd-ce", "after_apgd-t", "after_fab-t", "after_square"]]
    assert len(steps) == 4 and (sequence.diff(axis=1).iloc[:, 1:] <= 1e-9).all().all()
    assert frames["underflow"].filter(like="(%)").stack().between(0, 100).all()
    certificate = frames["certificate"]
    assert list(certificate["eps_255"]) == [8.0, 25.5]
    needed = certificate["ℓ2 radius needed"]  # the ℓ2 ball holding the ℓ∞ ball: ε·√d
    assert needed.to_numpy() == pytest.approx(np.array([8, 25.5]) / 255 * np.sqrt(3 * 32 * 32))

    findings = studies.dataset_findings(
        frames["runs"], attacks, frames["gradients"], frames["underflow"], certificate
    )
    assert findings["seeds"] == 1 and {"eps8", "eps25_5"} <= set(findings)
    for key in ("eps8", "eps25_5"):
        assert all(0 <= findings[key][a] <= 100 for a in ("paper", "ce", "autoattack"))
        assert isinstance(findings[key]["masking"], str)
    text = report.dataset_reading({src.key: findings}, {src.key: src.label}).data
    assert "ε = 8/255" in text and "ε = 0.1**" in text and "not audited" not in text
    at = studies.by_radius(attacks, audit["eps"])
    for frame in at.values():  # every table and figure the chapter draws of it
        tables.mean_sd_table(frame, ["source", "method"], "attack", "robust")
        assert not tables.autoattack_steps(frame).empty
        assert not studies.masking_flags(frame, frames["gradients"]).empty
        assert len(plots.attack_dots(frame, [src]).axes) == 1
    assert not tables.objectives_table(frames["runs"], by=["source", "method"]).empty
    assert not studies.gradient_summary(frames["gradients"]).empty
    assert len(tables.seed_means(certificate, ["source", "method", "eps_255"])) == 2
    assert src.seeds_recorded == [0] and src.seeds_text == "1 seed"
    three = dataclasses.replace(src, seeds=3, runs_read=set())  # a recording under way: seed 0
    read, (planned,), progress = plan.recorded_only(
        [three], lambda s: studies.dataset_audit(s, audit)
    )
    assert progress.loc[src.label, "runs recorded"] == 2 < progress.loc[src.label, "runs needed"]
    assert planned.seeds_recorded == [0] and len(read["attacks"]) == len(attacks)  # seed 0 only
    shown = report.provenance_table([planned], "smoke").loc[src.label]
    assert shown["seeds"] == "1 of 3 seeds recorded" and shown["profile"] == "recorded"
    assert "1 of 3 seeds recorded" in report.banner([planned], "smoke")
    one_method = dataclasses.replace(src, runs_read=set())  # a chapter reading one method only
    one_method.runs("nominal")
    assert one_method.seeds_text == "1 seed"  # not "0 of 1": no planner, nothing to count
