"""scripts/fashion32_paper_gpu.py, the paper-protocol slice a lent GPU records (issue 14), on
the CPU at its ``--smoke`` size, on Fashion-MNIST-shaped IDX files written here: every step is
recorded, and a second call computes nothing (what a cut-short call on the GPU relies on)."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from idx_files import write_idx

from clustr_lib import sources

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fashion32_paper_gpu.py"


@pytest.mark.slow
def test_the_gpu_slice_records_every_step_and_a_second_call_computes_nothing(
    tmp_path, monkeypatch, rng, capsys
):
    arrays = {}
    for split, n in (("train", 600), ("t10k", 200)):  # the smoke size's 600 and 200 images
        arrays[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, size=(n, 28, 28))
        arrays[f"{split}-labels-idx1-ubyte"] = np.arange(n) % 10
    write_idx(tmp_path / "data" / "FashionMNIST" / "raw", arrays)
    monkeypatch.setenv("CLUSTR_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(sources, "_DATA", {})  # these fake images stay out of other tests
    spec = importlib.util.spec_from_file_location("fashion32_paper_gpu", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = ["--root", str(tmp_path), "--device", "cpu", "--smoke"]

    script.main(args)
    results = tmp_path / "results" / "fashion32-paper-500-smoke"  # never the study's own folder
    runs = sorted(p.name.split("-")[1] for p in results.glob("*.json"))
    assert runs == ["clustr_qtrades", "nominal"]
    kinds = sorted(p.name.split("-")[3] for p in (results / "evaluations").glob("*.json"))
    # AutoAttack and Square alone at both radii; certificate, underflow and gradients at
    # 8/255; PGD at 0.1 under two objectives and the protocol's two rules
    assert kinds == ["autoattack"] * 4 + ["certificate", "gradient_norms"] + ["pgd"] * 4 + [
        "score_underflow"
    ]
    assert (tmp_path / "done").exists()
    first = capsys.readouterr().out
    assert first.count(".json (") == 11  # each evaluation announced as it is computed

    written = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    (tmp_path / "done").unlink()
    script.main(args)
    again = capsys.readouterr().out
    assert ".json (" not in again and "done" in again  # everything read, nothing computed
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()} == written

    # records brought back without weights: the nominal run, needed as the warm start of a
    # ClusTR + QTRADES run still to train, is trained again; with ClusTR + QTRADES recorded it
    # is left as it is
    (results / "models").joinpath(next(results.glob("*-nominal-*.json")).stem + ".pt").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        script.main(args)
    assert not any("trained again" in str(w.message) for w in caught)
    fine_tuned = next(results.glob("*-clustr_qtrades-*.json"))
    (results / "models" / f"{fine_tuned.stem}.pt").unlink()  # to be trained, not re-evaluated
    fine_tuned.unlink()
    with pytest.warns(UserWarning, match="trained again"):
        script.main(args)
    assert len(list(results.glob("*.json"))) == 2
    assert len(list((results / "models").glob("*.pt"))) == 2
