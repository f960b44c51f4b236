"""The pages' presentation (issue 12): readable tables, the pipeline check of a stand-in build,
and the summary's findings box, whose numbers come from the chapters' results."""

import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from clustr_lib import report  # noqa: E402


@pytest.mark.parametrize(
    "value, style, shown",
    [
        (float("nan"), "fixed", "—"),
        (None, "fixed", "—"),
        (pd.NA, "fixed", "—"),
        (True, "fixed", "yes"),
        (np.bool_(False), "fixed", "no"),
        (1347, "fixed", "1,347"),
        (67.916667, "fixed", "67.92"),
        (0.0882, "small", "0.0882"),
        (1.389601e09, "scientific", "1.4 × 10⁹"),
        (3.1e-12, "scientific", "3.1 × 10⁻¹²"),
        (0.0, "scientific", "0"),
        ({"moons": 1.0, "circles": float("nan")}, "fixed", "moons: 1.00; circles: —"),
        ([2, 8], "fixed", "2, 8"),
        (math.inf, "fixed", "∞"),
    ],
)
def test_a_cell_is_written_for_a_reader(value, style, shown):
    assert report.format_cell(value, style) == shown


def test_a_columns_style_follows_its_magnitudes():
    assert report.column_style([0.0, 12.5, 96.25, np.nan]) == "fixed"
    assert report.column_style([0.0031, 0.02]) == "small"
    assert report.column_style([1.3e12, 2.0e12]) == "scientific"
    assert report.column_style(["not run", 5.0]) == "fixed"


def test_the_librarys_column_names_are_spelled_out():
    assert report.readable("pgd100_paper") == "PGD-100, paper's objective"
    assert report.readable("pgd20_ce_any_iterate") == "PGD-20, −log p_y (any iterate)"
    assert report.readable("clean_accuracy") == "clean (all test images)"
    assert report.readable("mean_area_gain") == "mean area gain (points)"
    assert report.readable("some_new_name") == "some new name"
    assert report.readable("ours: PGD-20, −log p_y") == "ours: PGD-20, −log p_y"  # kept
    assert report.readable(2.5) == 2.5


def test_a_table_shows_no_nan_no_repr_and_no_long_exponent():
    frame = pd.DataFrame(
        {
            "pgd100_paper": [67.9, np.nan],
            "L (upper bound)": [1.389601e09, 1.6e12],
            "paper's protocol": [True, False],
            "scale": [{"stand_in": "digits32"}, None],
        },
        index=pd.MultiIndex.from_tuples(
            [("digits32 study", 2.0), ("x", 25.5)], names=["source", "eps_255"]
        ),
    )
    html = report.html_table(frame)
    assert "PGD-100, paper&#x27;s objective" in html or "PGD-100, paper's objective" in html
    assert "ε (× 1/255)" in html and ">2<" in html and ">25.5<" in html
    assert "1.4 × 10⁹" in html and "e+09" not in html
    assert "—" in html and not re.search(r"\bnan\b|NaN", html)
    assert "{" not in html and "stand_in: digits32" in html
    assert ">yes<" in html and ">no<" in html


class _Source:
    def __init__(self, label, paper_dataset, at_scale):
        self.label, self.paper_dataset, self.at_scale = label, paper_dataset, at_scale
        self.settings, self.seeds, self.results_dir = {"eval_size": 80}, 3, "results/digits32"
        self.dataset = paper_dataset or "digits32"
        self.seeds_text = "3 seeds"

    @property
    def key(self):
        return self.paper_dataset or "study"

    def describe(self):
        return self.label


def test_stand_ins_go_into_one_collapsed_pipeline_check(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(report, "display", shown.append)
    study, stand_in = (
        _Source("digits32 study", None, False),
        _Source("digits32 for cifar10", "cifar10", False),
    )
    chapter = report.Chapter("07_eps_ablation", "smoke", tmp_path, [stand_in, study])
    banner = shown.pop().data
    assert "not run in this build" in banner and "*digits32 for cifar10*" in banner
    assert "80 attacked test images" in banner  # from the source's settings, not typed
    assert chapter.measured == [study] and chapter.stand_ins == [stand_in]
    frame = pd.DataFrame({"source": ["digits32 study", "digits32 for cifar10"], "x": [1, 2]})
    assert list(report.rows_of(frame, chapter.stand_ins)["x"]) == [2]
    indexed = frame.set_index("source")
    assert list(report.rows_of(indexed, chapter.measured)["x"]) == [1]
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    chapter.pipeline_check(("A table", frame), ("A figure", fig))
    html = shown.pop().data
    assert html.count("<details") == 1 and "pipeline-check" in html
    assert not re.search(r"<details[^>]* open", html)  # collapsed
    assert "digits32 for cifar10" in html and "not a result" in html
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="[^"]*A figure', html)
    assert "<figcaption>A figure</figcaption>" in html and "<strong>A table</strong>" in html


def test_a_chapter_at_the_papers_scale_shows_its_items_open(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(report, "display", shown.append)
    chapter = report.Chapter("03_cifar10", "full", tmp_path, [_Source("cifar10", "cifar10", True)])
    chapter.pipeline_check(("Table 1", pd.DataFrame({"a": [1.0]})))
    html = shown.pop().data
    assert "<details" not in html and "Table 1" in html and "Pipeline" not in html


def _results(two_d_at_scale=True):
    return {
        "01_certificate_2d": {
            "profile": "full" if two_d_at_scale else "smoke",
            "scopes": {"2d": {"label": "moons", "at_scale": two_d_at_scale}},
            "measurements": {
                "2d": {"sound_min": 100.0, "searched": 200, "no_boundary": 3, "tight_product": 0.21}
            },
        },
        "02_warm_start_2d": {
            "profile": "full",
            "scopes": {"2d": {"label": "moons, circles", "at_scale": True}},
            "measurements": {
                "2d": {
                    "seeds": 5,
                    "moons": {
                        "certified": {"seeds_clustr_higher": 5, "seeds": 5},
                        "exact": {"seeds_clustr_higher": 2, "seeds": 5},
                    },
                    "circles": {
                        "certified": {"seeds_clustr_higher": 5, "seeds": 5},
                        "exact": {"seeds_clustr_higher": 4, "seeds": 5},
                    },
                }
            },
        },
        "06_digits32_study": {
            "profile": "smoke",
            "scopes": {"study": {"label": "digits32 study", "at_scale": False}},
            "measurements": {
                "study": {
                    "seeds": 3,
                    "per_method": {"ClusTR + QTRADES": {"pgd100_paper": 67.92, "pgd100_ce": 63.75}},
                }
            },
            "runs": [
                {"method": "ClusTR + QTRADES", "pgd100_paper": p, "pgd100_ce": c}
                for p, c in ((61.25, 58.75), (62.5, 62.5), (80.0, 73.75))
            ]
            + [  # a recording shown beside the study: not the study's seeds
                {
                    "source": "digits32 study, logprob QTRADES",
                    "method": "ClusTR + QTRADES",
                    "pgd100_paper": 99.0,
                    "pgd100_ce": 1.0,
                }
            ],
            "provenance": {"sources": [{"source": "digits32 study", "attacked images": 80}]},
        },
        "07_eps_ablation": {
            "measurements": {
                "study": {
                    "pgd100": {"paper": {"16": 20.42}, "ce": {"16": 5.42}},
                    "nominal_pgd100": {"8": 46.25},
                    "calibrated_eps_text": "16/255",
                }
            }
        },
        "10_audit": {
            "measurements": {
                "study": {
                    "autoattack": 62.5,
                    "certified": 0.0,
                    "shape": "over-states",
                    "gap": 5.4,
                    "masking": "AutoAttack breaks no more than PGD on −log p_y",
                },
                "study_logprob": {"masking": "AutoAttack breaks 9.9 points more"},
            }
        },
    }


def test_the_findings_box_reads_its_numbers_from_the_results():
    box = report.findings_markdown(_results())
    assert box.startswith(":::{admonition} What we found")
    assert "197 test points" in box and "100.0%" in box and "0.21" in box
    assert "10 of 10 runs" in box and "6 of 10" in box and "did not always mean" in box
    assert "67.9%" in box and "(seeds: 61.2–80.0%)" in box and "63.8%" in box
    assert "62.5%" in box and "20.4% against 5.4%" in box and "80 attacked test images" in box
    assert "1.25 accuracy points" in box and "on 2 of 3 seeds" in box  # one image of 80
    assert "(seeds: 61.2–80.0%)" in box  # the logprob recording's 99.0% is not the study's
    assert "mask its gradients? On digits32, AutoAttack breaks no more than PGD" in box
    assert "with our logprob QTRADES term, AutoAttack breaks 9.9 points more" in box
    assert "nominal training keeps 46.2% there, and falls below 5% at 16/255" in box
    assert "**Not tested here**" in box and "C7–C22" in box and "74.04%" in box
    reduced = report.findings_markdown(_results(two_d_at_scale=False))
    assert "a reduced run: no verdict" in reduced


def test_the_findings_box_says_how_far_the_fashion32_recording_has_come():
    results = _results()
    assert "Fashion-MNIST" not in report.findings_markdown(results)  # no chapter 12 result
    per_method = {
        "Nominal Training": {
            "clean_accuracy": 88.63,
            "pgd100_paper": 0.0,
            "pgd100_ce": 0.0,
            "seeds": 3,
        },
        "ClusTR + QTRADES": {
            "clean_accuracy": 85.2,
            "pgd100_paper": 47.2,
            "pgd100_ce": 32.0,
            "seeds": 1,
        },
    }
    results["12_fashion32"] = {
        "progress": {
            "runs_recorded": 1,
            "runs_needed": 15,
            "evaluations_recorded": 0,
            "evaluations_needed": 342,
        },
        "measurements": {"fashion32": {"seeds": 1, "per_method": per_method, "eps8": {"seeds": 1}}},
    }
    box = report.findings_markdown(results)
    assert "1 of 15 runs and 0 of 342 evaluations so far" in box
    assert "Nominal Training (3 seeds) 88.6% clean, 0.0% under the paper's PGD-100;" in box
    assert "ClusTR + QTRADES (1 seed) 85.2% clean, 47.2% under the paper's PGD-100 and 32.0%" in box
    assert "mask its gradients there" not in box  # nothing audited yet
    results["12_fashion32"]["progress"].update(runs_recorded=15, evaluations_recorded=342)
    results["12_fashion32"]["measurements"]["fashion32"]["eps8"] = {
        "seeds": 3,
        "autoattack": 30.5,
        "trades_autoattack": 84.0,
        "trades_seeds": 2,
        "masking": "AutoAttack breaks no more than PGD on −log p_y",
    }
    box = report.findings_markdown(results)
    assert "recorded in full" in box and "there? AutoAttack breaks no more" in box
    assert "at 8/255 ClusTR + QTRADES keeps 30.5% (3 seeds; TRADES 84.0%, 2 seeds)" in box


def test_the_summary_opens_with_the_findings_and_shows_dashes_where_nothing_ran():
    page = report.summary_markdown(_results())
    assert page.index("What we found") < page.index("| id |")
    rows = report.summary_rows(_results()).set_index("id")
    assert rows.loc["C7", "ours"] == "—" and rows.loc["C7", "digits32 study (ours)"] == "67.92%"
    assert rows.loc["C1", "ours"] == "100.00%"  # the 2-D chapters at the paper's settings
    assert (rows.loc[[f"C{i}" for i in range(7, 23)], "ours"] == "—").all()


def test_the_2d_sets_are_drawn_from_the_chapters_training_draw():
    from clustr_lib import plots
    from clustr_lib.data import train_test_2d

    fig = plots.datasets_figure(["moons", "circles"], 100, 50, 0.1)
    assert [ax.get_title() for ax in fig.axes] == [
        "moons: 100 training points",
        "circles: 100 training points",
    ]
    (x, _), _ = train_test_2d("moons", 100, 50, 0.1, 0)
    drawn = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    assert len(drawn) == 100 and np.allclose(np.sort(drawn[:, 0]), np.sort(x[:, 0].numpy()))
    assert fig.legends and fig.legends[0].get_texts()[0].get_text() == "class 0"


def test_the_papers_table_carries_no_number_of_ours():
    from clustr_lib import paper, tables

    rows = tables.paper_rows("cifar10")
    assert rows.loc["ClusTR + QTRADES", "PGD-100 (%)"] == 74.04
    assert rows.loc["TRADES", "training (min, GTX 1080Ti)"] == 534
    assert pd.isna(rows.loc["Nominal Training", "training (min, GTX 1080Ti)"])
    assert "WRN-34-10" in rows.loc["TRADES", "where the row comes from"]
    assert list(rows.index) == list(paper.accuracy_table("cifar10"))
    assert "training (min, GTX 1080Ti)" not in tables.paper_rows("cifar100")  # not timed


def test_the_recording_note_says_what_is_left_and_what_is_not_timed_yet():
    progress = pd.DataFrame(
        {"runs recorded": [3, 1], "runs needed": [4, 1], "evaluations recorded": [10, 0],
         "evaluations needed": [20, 5], "hours recorded": [1.25, 0.5],
         "hours to go (estimate)": [2.0, 0.0], "tasks untimed": [0, 5]},
        index=pd.Index(["a", "b"], name="source"),
    )  # fmt: skip
    totals = report.recording_totals(progress)
    assert totals == {"runs_recorded": 4, "runs_needed": 5, "evaluations_recorded": 10,
                      "evaluations_needed": 25, "hours_recorded": 1.75, "hours_to_go": 2.0,
                      "tasks_untimed": 5}  # fmt: skip
    note = report.recording_note(progress, "record x").data
    assert "4 of 5 runs and 10 of 25 evaluations are recorded, 1.8 task-hours" in note
    assert "at least 2.0 task-hours" in note and "5 tasks that no seed has recorded yet" in note
    timed = report.recording_note(progress.assign(**{"tasks untimed": 0}), "record x").data
    assert "About 2.0 task-hours" in timed and "at least" not in timed
    done = progress.assign(**{"runs recorded": [4, 1], "evaluations recorded": [20, 5]})
    assert "The recording is complete" in report.recording_note(done, "record x").data


def test_the_plain_answer_names_each_radius_its_seeds_and_omits_a_missing_trades():
    at = {"seeds": 2, "paper": 47.2, "ce": 32.0, "autoattack": 28.4}
    findings = {
        "a": {"eps8": {**at, "trades_autoattack": 84.0, "trades_seeds": 3, "masking": "m8"},
              "eps25_5": {**at, "seeds": 1, "trades_autoattack": float("nan"), "masking": "m"}},
        "b": {"eps8": {"seeds": 0}},
    }  # fmt: skip
    text = report.dataset_reading(findings, {"a": "A", "b": "B"}).data
    first, second, third = text.splitlines()
    assert first.startswith("* **A, ε = 8/255** (2 seeds)") and "(TRADES: 84.0%, 3 seeds)" in first
    assert "47.2%" in first and "32.0%" in first and "28.4%" in first and first.endswith("m8.")
    assert second.startswith("* **A, ε = 0.1** (1 seed)") and "(TRADES" not in second
    assert third == "* **B**: ClusTR + QTRADES is not audited yet."
    assert "$" not in text  # plain text: a glued or displayed line renders no TeX
