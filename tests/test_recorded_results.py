"""The recorded digits32 study matches the chapter's parameters: the book reuses it instead of
retraining (a changed configuration would silently cost an hour of CPU in CI)."""

import ast

import nbformat

from clustr_lib import book, experiments, paper


def notebook_defaults(name):
    nb = nbformat.read(book.NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body}


def test_every_run_of_the_digits32_study_is_recorded_with_provenance():
    params = notebook_defaults("06_digits32_study")
    for profile in book.load_profiles().values():  # every profile shows the recorded study
        assert not profile.get("06_digits32_study")
    settings = paper.settings("digits32", params["overrides"])
    results_dir = book.ROOT / "results" / "digits32"
    for seed in range(params["seeds"]):
        for method in params["methods"]:
            config = experiments.run_config("digits32", method, seed, settings)
            result = experiments.load_result(config, results_dir)
            assert result is not None, f"no recorded result for {method}, seed {seed}"
            assert result["provenance"]["git_commit"] and result["provenance"]["device"]
            metrics = result["metrics"]
            assert 0.0 <= metrics["pgd100_ce"] <= metrics["pgd20_ce"] <= metrics["clean_accuracy_eval_ce"]
            assert experiments._model_path(config, results_dir / "models").exists()
