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


def _fit_group(form: str, sub: pd.DataFrame, starts=None, grid=None, n_ref: int = 32) -> LawFit:
    loss = sub["loss"].to_numpy(float)
    if form == "heads-joint":
        return fit_heads_joint(
            sub["params_non_embedding"].to_numpy(float),
            sub["n_heads"].to_numpy(float),
            sub["n_kv_heads"].to_numpy(float),
            loss,
            n_ref=n_ref,
            grid=32 if grid is None else grid,
            starts=starts,
        )
    if form == "n":
        return fit_power_law(
            sub["params_non_embedding"].to_numpy(float), loss, grid=32 if grid is None else grid, starts=starts
        )
    if form == "chinchilla":
        return fit_chinchilla(
            sub["params_non_embedding"].to_numpy(float),
            sub["tokens"].to_numpy(float),
            loss,
            grid=32 if grid is None else grid,
            starts=starts,
        )
    return fit_head_law(sub["n_heads"].to_numpy(float), loss, grid=32 if grid is None else grid, starts=starts)


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
    loss = sub["loss"].to_numpy(float)
    if form == "heads-joint":
        return _joint_problem(
            sub["params_non_embedding"].to_numpy(float),
            sub["n_heads"].to_numpy(float),
            sub["n_kv_heads"].to_numpy(float),
            loss,
        )
    if form == "n":
        return _n_problem(sub["params_non_embedding"].to_numpy(float), loss, np.zeros(len(sub), dtype=int), 1, False)
    if form == "chinchilla":
        return _chinchilla_problem(sub["params_non_embedding"].to_numpy(float), sub["tokens"].to_numpy(float), loss)
    return _head_problem(sub["n_heads"].to_numpy(float), loss)
