"""The table of fit forms (one record per form) and the dispatch of one group of rows to its form's fitter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import require
from .arrays import (
    CHINCHILLA_GRID,
    HEAD_GRID,
    JOINT_GRID,
    JOINT_NAMES,
    N_GRID,
    _chinchilla_problem,
    _head_problem,
    _joint_problem,
    _n_problem,
    fit_chinchilla,
    fit_head_law,
    fit_heads_joint,
    fit_power_law,
)
from .core import LawFit, _Problem


@dataclass(frozen=True)
class FitForm:
    """One fit form: its CLI name, the laws-file form it writes, its coefficients, the fewest rows
    per fitted group, the columns it needs and the axes of its starting grid (fitted space)."""

    name: str
    law_form: str
    coefficients: tuple[str, ...]
    min_points: int
    columns: tuple[str, ...]
    grid: tuple


#: The fit forms, one record each (``cogqa fit --form NAME``).
FIT_FORMS: dict[str, FitForm] = {
    "n": FitForm(
        "n", "power_law_n", ("a", "b", "E"), 4, ("n_heads", "n_kv_heads", "params_non_embedding", "loss"), N_GRID
    ),
    "heads-joint": FitForm(
        "heads-joint",
        "heads_joint",
        JOINT_NAMES,
        8,
        ("n_heads", "n_kv_heads", "params_non_embedding", "loss"),
        JOINT_GRID,
    ),
    "chinchilla": FitForm(
        "chinchilla",
        "chinchilla",
        ("E", "A", "B", "alpha", "beta"),
        6,
        ("params_non_embedding", "tokens", "loss"),
        CHINCHILLA_GRID,
    ),
    "heads": FitForm("heads", "head_law", ("a", "b", "c"), 4, ("n_heads", "loss"), HEAD_GRID),
}
FORMS = tuple(FIT_FORMS)
LAW_FORM_NAMES = {k: f.law_form for k, f in FIT_FORMS.items()}
COEFS = {k: f.coefficients for k, f in FIT_FORMS.items()}
MIN_POINTS = {k: f.min_points for k, f in FIT_FORMS.items()}


def _n_problem_one_group(N: np.ndarray, loss: np.ndarray) -> _Problem:
    return _n_problem(N, loss, np.zeros(len(N), dtype=int), 1, False)


#: Per form: the columns its fitter takes (in order), the fitter and the builder of its least-squares problem.
_FITTERS = {
    "heads-joint": (("params_non_embedding", "n_heads", "n_kv_heads", "loss"), fit_heads_joint, _joint_problem),
    "n": (("params_non_embedding", "loss"), fit_power_law, _n_problem_one_group),
    "chinchilla": (("params_non_embedding", "tokens", "loss"), fit_chinchilla, _chinchilla_problem),
    "heads": (("n_heads", "loss"), fit_head_law, _head_problem),
}


def _inputs(form: str, sub: pd.DataFrame) -> list[np.ndarray]:
    return [sub[column].to_numpy(float) for column in _FITTERS[form][0]]


def _fit_group(form: str, sub: pd.DataFrame, starts=None, grid=None, n_ref: int = 32) -> LawFit:
    fitter = _FITTERS[form][1]
    extra = {"n_ref": n_ref} if form == "heads-joint" else {}
    return fitter(*_inputs(form, sub), grid=32 if grid is None else grid, starts=starts, **extra)


def _check_points(form: str, label: str, sub: pd.DataFrame, shared_E: bool, single: bool = False) -> None:
    need = 3 if shared_E and not single else MIN_POINTS[form]
    n_coef = 2 if shared_E and not single else len(COEFS[form])
    extra = " besides the shared E" if shared_E and not single else ""
    require(
        len(sub) >= need,
        f"{label}: {len(sub)} points for {n_coef} coefficients{extra}; need at least {need} rows for --form {form}",
    )
    if form in ("n", "heads-joint"):
        require(
            sub["params_non_embedding"].nunique() >= 2,
            f"{label}: every row has the same params_non_embedding; need at least 2 model sizes",
        )
    if form == "heads-joint":
        require(
            sub["n_heads"].nunique() + sub["n_kv_heads"].nunique() >= 3,
            f"{label}: need at least 2 head configurations differing in n_heads or n_kv_heads for --form heads-joint",
        )
    elif form == "n":
        pass
    elif form == "chinchilla":
        require(
            sub["params_non_embedding"].nunique() >= 2 and sub["tokens"].nunique() >= 2,
            f"{label}: need at least 2 distinct model sizes and 2 distinct token counts for --form chinchilla",
        )
    else:
        require(sub["n_heads"].nunique() >= 3, f"{label}: need at least 3 distinct n_heads values for --form heads")


def _fit_group_problem(form: str, sub: pd.DataFrame) -> _Problem:
    return _FITTERS[form][2](*_inputs(form, sub))
