"""clustr_lib: the library behind the ClusTR reproduction book.

Modules, one concept each:

* :mod:`clustr_lib.magnet` — Magnet loss (Eq. 3), cluster index, neighbourhood sampler
* :mod:`clustr_lib.classify` — nearest-cluster classifier (Eq. 4) with D nearest clusters
* :mod:`clustr_lib.certify` — Theorem 1 radius, certified accuracy, Lipschitz bounds
* :mod:`clustr_lib.attacks` — PGD, QTRADES adversary, AutoAttack
* :mod:`clustr_lib.sources` — the trained runs an evaluation chapter reads, recorded evaluations
* :mod:`clustr_lib.evaluations` — measurements of a trained model (chapters 7–11)
* :mod:`clustr_lib.studies` — chapters 7–11 as tidy tables
"""

__version__ = "0.1.0"
