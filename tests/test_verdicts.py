"""Verdicts on the paper's claims, from hand-made chapter results on both sides of each
tolerance; the registry itself; the generated summary page."""

import dataclasses

import pytest

from clustr_lib import paper, report, verdicts
from clustr_lib.paper import Claim


def claim(**changes) -> Claim:
    base = Claim(
        "X1",
        "a claim",
        "Table 9",
        74.04,
        "within",
        3.0,
        "03_cifar10",
        "cifar10",
        "per_method.ClusTR + QTRADES.pgd100_paper",
    )
    return dataclasses.replace(base, **changes)


def result(
    value, at_scale=True, scope="cifar10", path=("per_method", "ClusTR + QTRADES", "pgd100_paper")
):
    measured = value
    for key in reversed(path):
        measured = {key: measured}
    return {
        "chapter": "03_cifar10",
        "profile": "full" if at_scale else "smoke",
        "scopes": {scope: {"label": scope, "at_scale": at_scale}},
        "measurements": {scope: measured},
    }


@pytest.mark.parametrize(
    "ours, expected",
    [
        (74.04, True),
        (71.05, True),
        (77.04, True),
        (71.03, False),
        (77.05, False),
        (0.0, False),
        (float("nan"), False),
        (None, False),
    ],
)
def test_within_holds_inside_the_tolerance_only(ours, expected):
    assert verdicts.holds(claim(), ours) is expected


@pytest.mark.parametrize(
    "rule, ours, expected",
    [
        ("at_least", 98.0, True),
        ("at_least", 97.99, False),
        ("at_least", 99.5, True),
        ("at_most", 0.0, True),
        ("at_most", 1.01, False),
        ("at_most", -1.0, True),
    ],
)
def test_one_sided_rules(rule, ours, expected):
    value, tolerance = (99.0, 1.0) if rule == "at_least" else (0.0, 1.0)
    assert verdicts.holds(claim(rule=rule, value=value, tolerance=tolerance), ours) is expected


def test_a_yes_no_claim_holds_only_on_true():
    c = claim(rule="true", value=None)
    assert verdicts.holds(c, True) and not verdicts.holds(c, False)
    assert not verdicts.holds(c, None) and not verdicts.holds(c, 1.0)


def test_a_claim_over_settings_needs_every_measured_setting_within_tolerance():
    c = claim(value={2: 81.54, 8: 74.04, 25.5: 34.98})
    assert verdicts.holds(c, {"2": 80.0, "8": 75.0, "25.5": 37.9, "16": 0.0})  # 16: not claimed
    assert not verdicts.holds(c, {"2": 80.0, "8": 75.0, "25.5": 38.0})
    assert not verdicts.holds(c, {"16": 57.0})  # nothing claimed was measured
    assert not verdicts.holds(c, None)


def test_verdicts_are_drawn_only_at_the_papers_scale():
    c = claim()
    assert verdicts.judge(c, result(74.0))["verdict"] == verdicts.REPRODUCED
    assert verdicts.judge(c, result(60.0))["verdict"] == verdicts.NOT_REPRODUCED
    assert verdicts.judge(c, result(74.0, at_scale=False))["verdict"] == verdicts.NOT_AT_SCALE
    assert verdicts.judge(c, None)["verdict"] == verdicts.NOT_RUN
    missing_scope = result(74.0, scope="svhn")
    assert verdicts.judge(c, missing_scope)["verdict"] == verdicts.NOT_AT_SCALE
    assert verdicts.judge(claim(rule=None), result(74.0))["verdict"] == verdicts.MEASURED
    judged = verdicts.judge(dataclasses.replace(c, also={"ce": "per_method.x"}), result(74.0))
    assert judged["ours"] == 74.0 and judged["also"] == {"ce": None}


def test_lookup_follows_dotted_paths():
    assert verdicts.lookup({"a": {"b c": {"d": 1}}}, "a.b c.d") == 1
    assert verdicts.lookup({"a": 1}, "a.b") is None and verdicts.lookup({}, "x") is None


def test_the_registry_judges_every_claim_with_a_known_rule_and_a_unique_id():
    ids = [c.id for c in paper.CLAIMS]
    assert len(ids) == len(set(ids)) and ids[0] == "C1"
    for c in paper.CLAIMS:
        assert c.rule in ("within", "at_least", "at_most", "true", None), c.id
        assert c.rule in ("true", None) or c.value is not None, c.id
    by_id = {c.id: c for c in paper.CLAIMS}
    assert by_id["C7"].value == paper.TABLE1["cifar10"]["ClusTR + QTRADES"]["pgd100"]
    assert by_id["C12"].value[25.5] == paper.TABLE4["cifar100"][25.5][1]
    assert by_id["C10"].value[8] == 74.04  # Table 4's 8/255 comes from Table 1


def test_the_summary_shows_no_stand_in_number_and_the_papers_value_once():
    c7 = next(c for c in paper.CLAIMS if c.id == "C7")
    smoke = {**result(12.34, at_scale=False), "chapter": c7.chapter}
    rows = report.summary_rows({c7.chapter: smoke}).set_index("id")
    assert rows.loc["C7", "ours"] == "—" and rows.loc["C7", "verdict"] == verdicts.NOT_AT_SCALE
    assert rows.loc["C7", "paper"] == "74.04%"
    assert rows.loc["C1", "verdict"] == verdicts.NOT_RUN
    full = {c7.chapter: result(73.0)}
    rows = report.summary_rows(full).set_index("id")
    assert rows.loc["C7", "ours"].startswith("73.00%") and rows.loc["C7", "verdict"] == "reproduced"
    study = {
        "06_digits32_study": {
            "scopes": {"study": {"label": "digits32 study", "at_scale": False}},
            "measurements": {"study": {"per_method": {"ClusTR + QTRADES": {"pgd100_paper": 67.9}}}},
        }
    }
    rows = report.summary_rows(study).set_index("id")
    assert rows.loc["C7", "digits32 study (ours)"] == "67.90%" and rows.loc["C7", "ours"] == "—"
    page = report.summary_markdown(full)
    assert page.count("| C7 |") == 1 and "74.04%" in page


def test_format_value_marks_missing_numbers():
    assert report.format_value(float("nan")) == "—" and report.format_value(None) == "—"
    assert report.format_value(True) == "yes" and report.format_value(3) == "3"
    assert report.format_value(1.234) == "1.23%" and report.format_value(0.5, "") == "0.50"
    assert report.format_value({2: 1.0}) == "2: 1.00%"


def test_a_chapter_records_its_measurements_verdicts_and_provenance(tmp_path):
    import json

    chapter = report.Chapter("01_certificate_2d", "full", tmp_path, scopes={"2d": "moons"})
    with pytest.raises(RuntimeError, match="finish"):
        chapter.provenance()
    result = chapter.finish(
        {"2d": {"sound_min": 100.0, "tight_product": 0.85, "paper_overstates": 2.5, "seeds": 1}}
    )
    assert result["verdicts"] == {
        "C1": "reproduced",
        "C2": "not reproduced",
        "C3": "not reproduced",
    }
    assert (
        json.loads((tmp_path / "01_certificate_2d.json").read_text())["verdicts"]
        == result["verdicts"]
    )
    table = chapter.provenance()
    assert list(table.index) == ["moons"] and table.loc["moons", "seeds"] == 1
    assert bool(table.loc["moons", "paper's settings"])
    smoke = report.Chapter("01_certificate_2d", "smoke", tmp_path, scopes={"2d": "moons"})
    assert set(smoke.finish({"2d": {"sound_min": 100.0}})["verdicts"].values()) == {
        verdicts.NOT_AT_SCALE
    }


def test_glue_names_are_letters_digits_and_underscores():
    flat = report.flatten(
        {
            "study": {
                "per_method": {"ClusTR + QTRADES": {"pgd100_paper": 1.0}},
                "pgd100": {"paper": {"25.5": 2.0}},
            }
        }
    )
    assert flat == {
        "study_per_method_ClusTR_QTRADES_pgd100_paper": 1.0,
        "study_pgd100_paper_25_5": 2.0,
    }


def test_each_rule_is_stated_in_words():
    assert verdicts.criterion(claim()) == "ours within ±3% of the paper's"
    assert verdicts.criterion(claim(rule="at_least", value=99.0, tolerance=1.0)) == "ours ≥ 98.00%"
    assert verdicts.criterion(claim(rule="at_most", value=0.0, tolerance=0.0)) == "ours ≤ 0.00%"
    assert verdicts.criterion(claim(rule=None)) == "measured, no verdict"
