"""Record the first slice of the fashion32 study at the paper's protocol on a GPU (issue 14):
``protocol.FASHION32_PAPER_500`` — nominal training, then ClusTR + QTRADES warm-started from it
(width 64, 90 + 30 epochs, all 60,000 training images), each with the protocol's PGD-20/100
(10 restarts, the paper's objective and −log p_y, the official and the any-iterate rule) on the
first 500 test points; then, on ClusTR + QTRADES, AutoAttack and Square alone, Theorem 1's
certificate, score underflow and the input-gradient norms at 8/255, then the attacks at 0.1.

Each step is recorded as it finishes (the library's cache: ``<root>/results/fashion32-paper-500``),
so a call cut short keeps what it finished and a later call reads it and goes on. ClusTR + QTRADES
starts from the nominal run's weights; where they did not come back with its record, the
nominal run is trained again (:func:`clustr_lib.runs.train_run`).
``scripts/lent_gpu.sh`` runs it on a GPU machine lent by this workplace's ``device`` tool and
brings the records back. ``--smoke`` checks the same path on a CPU in seconds (a tiny width, one
epoch, 20 points; in ``<root>/results/fashion32-paper-500-smoke``, nothing to keep).

    python scripts/fashion32_paper_gpu.py --root /tmp/lent-gpu --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from clustr_lib import protocol, studies
from clustr_lib.sources import images, study_sources

STUDY = "fashion32-paper-500"
SMOKE = {  # the same path at a size a CPU does in seconds
    "width": 4,
    "ce_epochs": 1,
    "ce_milestones": [1],
    "magnet_epochs": 1,
    "magnet_milestones": [1],
    "eval_size": 20,
    "pgd_restarts": 2,
    "pgd_steps": [2, 5],
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="folder whose results/ holds the records")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, for a CPU check")
    args = parser.parse_args(argv)
    start = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - start:7.1f} s] {text}", flush=True)

    (source,) = study_sources(STUDY, repo_root=args.root, device=args.device)
    source = dataclasses.replace(source, seeds=1, announce=True)
    if args.smoke:
        settings = protocol.settings("fashion32", {**source.settings, **SMOKE})
        data = images("fashion32", device=args.device, train_size=600, test_size=200)
        smoke_dir = source.results_dir.with_name(f"{source.results_dir.name}-smoke")
        source = dataclasses.replace(source, settings=settings, data=data, results_dir=smoke_dir)
    say(f"data: {len(source.data.y_train)} training, {len(source.data.y_test)} test images")
    for method in source.methods:
        (record,) = source.runs(method)
        pgd = {o: e["robust"] for o, e in record.pgd.items()}
        say(
            f"{method}: trained in {record.training['seconds']:.0f} s "
            f"({record.training['stages']}), clean {record.clean_accuracy:.4f}, PGD {pgd}, "
            f"attacks {record.attack_seconds}"
        )
    method = "clustr_qtrades"
    for eps in (8 / 255, 0.1):
        rows = studies.autoattack_rows(source, method, eps)
        say(f"AutoAttack and Square at {eps:.4f}: {[(r['attack'], r['robust']) for r in rows]}")
        if eps == 8 / 255:
            certified = studies.certificate(source, [method])
            say(f"certificate: {certified.to_dict(orient='records')}")
            underflow = studies.score_underflow(source, [method])
            say(f"score underflow: {underflow.to_dict(orient='records')}")
            norms = studies.gradient_norms(source, method, ["paper", "ce", "magnet"])
            say(f"gradient norms: {norms.groupby('objective')['norm'].median().to_dict()}")
        else:
            for objective in ("paper", "ce"):
                for rule in source.settings["pgd_rules"]:
                    rows = studies.pgd_rows(source, method, objective, eps=eps, rule=rule)
                    last = f"pgd{max(source.settings['pgd_steps'])}"
                    say(f"PGD at 0.1, {objective}, {rule}: {[r[last] for r in rows]}")
    say("done")
    (Path(args.root) / "done").touch()


if __name__ == "__main__":
    main()
