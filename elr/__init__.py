"""elr: effective learning rates of normalised networks.

An executable reproduction of C. H. X. Ali Mehmeti-Göpel and M. Wand, "On the
Weight Dynamics of Deep Normalized Networks", ICML 2024 (PMLR 235:992-1007).

Modules, one concept each:

* :mod:`elr.dynamics`  the discrete and continuous models, ELRs, critical rates, schedules (NumPy)
* :mod:`elr.symbolic`  SymPy derivations of the paper's statements, run by ``elr prove``
* :mod:`elr.gradients` gradient transforms for torch training (the random walk)
* :mod:`elr.plots`     the one figure style of the book
* :mod:`elr.book`      chapters: parameters, profiles, execution and the book build
* :mod:`elr.cli`       the ``elr`` command
"""
__version__ = "0.1.0"
