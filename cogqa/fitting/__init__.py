"""Fitting scaling laws to a table of training results (``cogqa fit``).

Three forms, all fitted the same way (Chinchilla's approach 3 as replicated by Besiroglu et al. 2024):
the prediction is written as a log-sum-exp of terms linear in the parameters, and the **sum** of
Huber(delta = 1e-3) of ``log L - log L_hat`` is minimised by L-BFGS-B (tight tolerances) from a grid
of initialisations; the best local minimum is kept.

* ``n`` (paper Eq. 7), per head configuration H: ``L = (a / N)^b + E``;
  ``log L_hat = LSE(c - b ln N, e)`` with ``c = b ln a``, ``e = ln E``. Option ``shared_E``: one E for all H.
* ``chinchilla``: ``L = E + A / N^alpha + B / D^beta`` (D = tokens), per H or over all rows when the
  table has no head columns; ``log L_hat = LSE(ln A - alpha ln N, ln B - beta ln D, ln E)``.
* ``heads-joint``: one law across head configurations,
  ``L = (a / N)^b + E + A (n_h^-g - n_ref^-g) + B (n_kv^-k - n_ref^-k)`` with shared a, b, E; fitted as
  ``log L_hat = LSE(c - b ln N, e_inf, ln A - g ln n_h, ln B - k ln n_kv)`` where ``e_inf`` is the log of the
  floor as N, n_h, n_kv grow (E = e^e_inf + A n_ref^-g + B n_ref^-k). A head term whose variable takes one
  value in the table is left out (its A or B is 0). n_ref = max_heads = the family's largest d / d_h
  (else the largest n_h of the table, rounded up to a power of two).
* ``heads`` (Appendix I): ``L(n_h) = a n_h^b + c`` at a fixed size (groups by the ``size`` column if
  present, else by ``params_non_embedding``); ``log L_hat = LSE(ln a + b ln n_h, ln c)``.

Units: N in parameters (non-embedding unless the user maps another column), D in tokens, loss in nats
per token. Bounds (in the fitted log space) keep every coefficient finite; a coefficient that ends on
its bound (typically E -> its floor of 1e-4 nats) is reported in ``at_bound`` and as a warning.

Laws file (:meth:`FitReport.to_laws_dict`): ``{"form", "laws": [...], "source", "metadata"}`` where ``form`` is
``power_law_n`` (entries n_heads, n_kv_heads, a, b, E; the interchange form ``search`` reads),
``chinchilla`` (entries E, A, B, alpha, beta, plus n_heads/n_kv_heads when the table has them) or
``head_law`` (entries a, b, c, plus size or params_non_embedding, n_kv_heads when constant). Every entry
also has r2 (on loss), n_points, optionally context, ci {coef: [2.5%, 97.5%]} and n_bootstrap when
bootstrapped, at_bound [coef names] when a coefficient sits on its bound; shared-E fits add shared_E.
Read them back with :func:`cogqa.laws.laws_from_dict` (any form) or :func:`cogqa.laws.load_laws` (power_law_n).

Results table: CSV, JSONL or Parquet with columns ``n_heads``, ``n_kv_heads``, ``params_non_embedding``,
``loss`` and optionally ``tokens``, ``context``, ``size``, ``compute`` (training FLOPs; gives
``tokens = compute / (6 N)`` when ``tokens`` is absent). Other column names are mapped with
``columns={"params_non_embedding": "Model Size", ...}``. Rows are numbered from 1 (the first data row,
after the header) in every message.
"""

from __future__ import annotations

from .arrays import (
    CHINCHILLA_GRID,
    HEAD_GRID,
    JOINT_GRID,
    JOINT_NAMES,
    N_GRID,
    _chinchilla_problem,
    fit_chinchilla,
    fit_head_law,
    fit_heads_joint,
    fit_power_law,
    fit_power_law_shared_E,
)
from .core import E_FLOOR, HUBER_DELTA, LawFit, huber
from .forms import COEFS, FIT_FORMS, FORMS, LAW_FORM_NAMES, MIN_POINTS, FitForm
from .results import FitReport, fit_results, group_label, write_laws
from .table import KNOWN_COLUMNS, RESULT_SUFFIXES, read_results, validate_results

__all__ = [
    "CHINCHILLA_GRID",
    "COEFS",
    "E_FLOOR",
    "FIT_FORMS",
    "FORMS",
    "HEAD_GRID",
    "HUBER_DELTA",
    "JOINT_GRID",
    "JOINT_NAMES",
    "KNOWN_COLUMNS",
    "LawFit",
    "LAW_FORM_NAMES",
    "MIN_POINTS",
    "N_GRID",
    "RESULT_SUFFIXES",
    "FitForm",
    "FitReport",
    "_chinchilla_problem",
    "fit_chinchilla",
    "fit_head_law",
    "fit_heads_joint",
    "fit_power_law",
    "fit_power_law_shared_E",
    "fit_results",
    "group_label",
    "huber",
    "read_results",
    "validate_results",
    "write_laws",
]
