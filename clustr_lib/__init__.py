"""clustr_lib: the library behind the ClusTR reproduction book.

Modules, one concept each. The core, bottom up:

* :mod:`clustr_lib.distances`, :mod:`clustr_lib.magnet` — Magnet loss (Eq. 3), cluster index,
  neighbourhood sampler
* :mod:`clustr_lib.classify` — nearest-cluster classifier (Eq. 4) with D nearest clusters
* :mod:`clustr_lib.certify` — Theorem 1 radius, certified accuracy, Lipschitz bounds
* :mod:`clustr_lib.attacks` — PGD, QTRADES adversary, AutoAttack
* :mod:`clustr_lib.train`, :mod:`clustr_lib.models`, :mod:`clustr_lib.data`,
  :mod:`clustr_lib.twod` — training, networks, datasets, the 2-D study

The layer above it:

* :mod:`clustr_lib.protocol` — the paper's protocol, the methods, the shared rules
* :mod:`clustr_lib.records` — provenance, JSON, the cache's key scheme, the run record
* :mod:`clustr_lib.clock` — the records' wall time (a suspended recording is not counted)
* :mod:`clustr_lib.runs` — a config → a trained, cached run
* :mod:`clustr_lib.evaluations` — measurements of a trained model (the PGD/AutoAttack entry points)
* :mod:`clustr_lib.sources` — the runs a chapter reads and their recorded evaluations
* :mod:`clustr_lib.studies` — sources → the chapters' tidy frames and findings
* :mod:`clustr_lib.paper`, :mod:`clustr_lib.verdicts` — the paper's numbers and claims, verdicts
* :mod:`clustr_lib.report`, :mod:`clustr_lib.tables`, :mod:`clustr_lib.plots` — book-facing
* :mod:`clustr_lib.book` — the papermill batch and the book build (``python -m clustr_lib``)
* :mod:`clustr_lib.plan`, :mod:`clustr_lib.executors`, :mod:`clustr_lib.recording` — a build's
  or a study's tasks, executed here or on Ray; a study recorded seed after seed
"""

__version__ = "0.1.0"
