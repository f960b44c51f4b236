"""The recorded digits32 study matches the chapters' parameters: the book reuses its runs
(chapter 6) and their evaluations (chapters 7–11) instead of recomputing them (a changed
configuration would silently cost an hour or more of CPU in CI)."""

import ast

import nbformat
import pytest

from clustr_lib import book, protocol, records, runs, sources, studies


def notebook_defaults(name):
    nb = nbformat.read(book.NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {
        node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body
    }


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
    p = {
        name: notebook_defaults(name)
        for name in (
            "07_eps_ablation",
            "08_d_ablation",
            "09_adaptive_attack",
            "10_audit",
            "11_kmeans_nominal",
        )
    }
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
    eps = studies.eps_ablation(
        study, p["07_eps_ablation"]["eps_values"], p["07_eps_ablation"]["objectives"]
    )
    clean, robust = studies.d_ablation(
        study, p["08_d_ablation"]["d_values"], p["08_d_ablation"]["objectives"]
    )
    adaptive = studies.adaptive_attack(study, p["09_adaptive_attack"]["methods"])
    audit = p["10_audit"]
    attacks = studies.attack_comparison(study, audit["methods"], audit["autoattack_methods"])
    grads = studies.gradient_norms(study, "clustr_qtrades", audit["gradient_objectives"])
    paths = studies.attack_paths(study, "clustr_qtrades", audit["gradient_objectives"])
    certificate = studies.certificate(study, ["clustr_qtrades", "clustr"])
    kmeans = studies.kmeans_on_nominal(study)
    assert not study.computed and study.loaded
    for frame in (eps, clean, robust, adaptive, attacks, grads, paths, certificate, kmeans):
        assert studies.seeds_of(frame) == protocol.DIGITS32_STUDY["seeds"]
    # robust accuracy never exceeds the clean accuracy of the attacked points
    assert (eps["pgd100"] <= eps["clean"] + 1e-9).all()
    assert (attacks["robust"] <= attacks["clean"] + 1e-9).all()


def test_the_guard_refuses_to_compute_a_missing_evaluation(study):
    with pytest.raises(LookupError, match="not recorded"):
        study.evaluate("nominal", "kmeans_nominal", {"clusters_per_class": 3, "num_nearest": 5})
