"""One PGD evaluation of chapter 12's recorded ClusTR + QTRADES (fashion32, seed 0) with a
given number of torch threads: does a recording gain more from torch's threads or from
attacks side by side (``record --executor ray``: one thread per task)?

    python benchmarks/pgd_threads.py 2                                    # one, two threads
    python benchmarks/pgd_threads.py 1                                    # one, one thread
    python benchmarks/pgd_threads.py 1 & python benchmarks/pgd_threads.py 1; wait  # two at once

Each prints its wall time: PGD-20, one restart, −log p_y, ε = 8/255, step 2/255, on the
study's 500 attacked points. Needs the recorded run (``results/fashion32``) and its weights.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from clustr_lib.evaluations import pgd_accuracy
from clustr_lib.records import load_run
from clustr_lib.runs import run_config
from clustr_lib.sources import study_sources

ROOT = Path(__file__).resolve().parent.parent


def main(threads: int) -> None:
    torch.set_num_threads(threads)
    source = study_sources("fashion32", ROOT, "cpu")[0]
    config = run_config(source.dataset, "clustr_qtrades", 0, source.settings, source.data)
    model = source.model(load_run(config, source.results_dir))
    start = time.perf_counter()
    measured = pgd_accuracy(
        model, source.data, eps=8 / 255, step_size=2 / 255, steps=[20], restarts=1,
        eval_size=500, objective="ce", rule="any_restart",
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"{threads} thread(s): {seconds:.2f} s, robust {measured['robust']['20']:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
