"""The recorded digits32 study matches the chapters' parameters: the book reuses its runs
(chapter 6) and their evaluations (chapters 7–11) instead of recomputing them (a changed
configuration would silently cost an hour or more of CPU in CI)."""

import pytest

from clustr_lib import book, protocol, records, runs, sources, studies


def test_every_run_of_the_digits32_study_is_recorded_with_provenance():
    for profile in book.load_profiles().values():  # every profile shows the recorded study
        assert not profile.get("06_digits32_study")
    study = protocol.DIGITS32_STUDY
    settings = protocol.settings("digits32", study["overrides"])
    results_dir = book.ROOT / "results" / study["results"]
    digits = sources.images("digits32", device="cpu")
    for seed in range(study["seeds"]):
        for method in protocol.METHODS:
            config = runs.run_config("digits32", method, seed, settings, data=digits)
            record = records.load_run(config, results_dir)
            assert record is not None, f"no recorded result for {method}, seed {seed}"
            assert record.provenance["git_commit"] and record.provenance["device"]
            for entry in record.pgd.values():
                robust = entry["robust"]["any_restart"]  # the rule it was recorded with
                # (under that rule PGD-100 can leave more points than PGD-20: a point broken
                # at iteration 20 may be classified correctly again at 100)
                assert all(0.0 <= robust[t] <= entry["clean"] for t in ("20", "100"))
            assert runs.model_path(config, results_dir / "models").exists()


@pytest.fixture
def study():
    source = sources.digits32_study(book.ROOT)
    source.record_only = True  # a missing evaluation raises instead of being computed
    return source


def test_every_evaluation_the_chapters_make_of_the_study_is_recorded(study):
    p = {name: book.default_parameters(name) for name in studies.STUDY_CHAPTERS}
    for name, params in p.items():
        assert params["study"] is True, name
        for profile in book.load_profiles().values():  # no profile changes what the study is asked
            changed = set(profile.get(name) or {}) & {
                "eps_values",
                "d_values",
                "objectives",
                "methods",
                "autoattack_methods",
                "gradient_objectives",
                "study",
            }
            assert not changed, (name, changed)
    frames = studies.study_evaluations(study, p)
    assert not study.computed and study.loaded
    assert set(frames) == {
        "eps",
        "calibration",
        "d_clean",
        "d_robust",
        "adaptive",
        "attacks",
        "gradients",
        "paths",
        "certificate",
        "kmeans",
    }
    for frame in frames.values():
        assert studies.seeds_of(frame) == protocol.DIGITS32_STUDY["seeds"]
    # robust accuracy never exceeds the clean accuracy of the attacked points
    assert (frames["eps"]["pgd100"] <= frames["eps"]["clean"] + 1e-9).all()
    assert (frames["attacks"]["robust"] <= frames["attacks"]["clean"] + 1e-9).all()


def test_the_logprob_variant_is_recorded_for_the_audit_that_reads_it():
    p = {name: book.default_parameters(name) for name in studies.STUDY_CHAPTERS}
    study, logprob = sources.digits32_studies(book.ROOT)
    logprob.record_only = True
    frames = studies.study_evaluations(logprob, p)
    assert not logprob.computed and logprob.loaded
    assert set(frames) == {"attacks", "gradients", "paths", "certificate"}  # chapter 10 only
    assert studies.seeds_of(frames["attacks"]) == logprob.seeds == 3


def test_the_guard_refuses_to_compute_a_missing_evaluation(study):
    with pytest.raises(LookupError, match="not recorded"):
        study.evaluate("nominal", "kmeans_nominal", {"clusters_per_class": 3, "num_nearest": 5})
