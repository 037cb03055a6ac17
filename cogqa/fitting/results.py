"""Fitting a results table: one law per group, as a :class:`FitReport`, and writing the laws file."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CogqaError, require
from .arrays import fit_power_law_shared_E
from .bootstrap import _bootstrap_group, _ci, refit_all
from .core import E_FLOOR, HUBER_DELTA
from .forms import COEFS, FORMS, LAW_FORM_NAMES, _check_points, _fit_group
from .table import _rows, validate_results


@dataclass
class FitReport:
    """Fitted laws of one form, one entry per group (head configuration, or model size for ``heads``).

    ``laws``: laws-file entries (coefficients, ``r2``, ``n_points``, ``ci`` {coef: [low, high]} when
    bootstrapped, ``at_bound`` [coef names] when a coefficient sits on its bound). ``residuals``: the
    fitted rows with ``group``, ``predicted`` and ``residual`` (loss - predicted, nats/token).
    """

    form: str
    laws: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    residuals: pd.DataFrame = field(default_factory=pd.DataFrame)
    shared_E: bool = False
    bootstrap: int = 0
    data: dict[str, Any] = field(default_factory=dict)  # what the table says about the models: range, context, family
    samples: list[dict[str, Any]] = field(
        default_factory=list
    )  # bootstrap coefficients (for bands), not in the laws file

    def __post_init__(self) -> None:
        require(self.form in FORMS, f"FitReport: unknown form {self.form!r}; choose one of {', '.join(FORMS)}")
        require(len(self.laws) > 0, "FitReport: no laws")

    def to_laws_dict(self, source: str = "") -> dict[str, Any]:
        """The laws file (JSON-serialisable dict); for form ``n`` the ``power_law_n`` interchange form."""
        meta: dict[str, Any] = {
            "fit": {
                "objective": f"sum of Huber(delta={HUBER_DELTA}) of log-loss residuals, L-BFGS-B from a grid",
                "form": self.form,
                "shared_E": self.shared_E,
                "bootstrap": self.bootstrap,
            }
        }
        if self.warnings:
            meta["warnings"] = list(self.warnings)
        meta.update(self.data)
        return {
            "form": LAW_FORM_NAMES[self.form],
            "laws": [dict(law) for law in self.laws],
            "source": source,
            "metadata": meta,
        }

    def law_set(self, source: str = ""):
        """The fitted laws as a :class:`cogqa.laws.LawSet` (form ``n`` only), ready for search."""
        from ..laws import law_set_from_dict

        require(
            self.form in ("n", "heads-joint"),
            f"law_set: form {self.form!r} cannot be searched; fit with form 'n' or 'heads-joint'",
        )
        return law_set_from_dict(self.to_laws_dict(source), "fitted laws")

    def table(self) -> pd.DataFrame:
        """One row per law: group keys, coefficients, r2, n_points, ``<coef>_lo``/``<coef>_hi`` (95% CI), at_bound."""
        rows = []
        for law in self.laws:
            row = {k: v for k, v in law.items() if k not in ("ci", "at_bound")}
            for coef, (lo, hi) in (law.get("ci") or {}).items():
                row[f"{coef}_lo"], row[f"{coef}_hi"] = lo, hi
            row["at_bound"] = ",".join(law.get("at_bound", []))
            rows.append(row)
        return pd.DataFrame(rows)


def _group_keys(df: pd.DataFrame, form: str) -> list[str]:
    if form == "n":
        return ["n_heads", "n_kv_heads"]
    if form == "heads-joint":
        return []
    if form == "chinchilla":
        keys = ["n_heads", "n_kv_heads"] if "n_heads" in df.columns else []
    else:
        keys = ["size" if "size" in df.columns else "params_non_embedding"]
    if "context" in df.columns and df["context"].nunique() > 1:
        keys.append("context")
    return keys


def _label(keys: list[str], values: tuple) -> str:
    return group_label(dict(zip(keys, values)))


def group_label(d: dict[str, Any]) -> str:
    """A readable name of a fitted group (a laws entry or its group keys): ``H=(8,1), context 8192 tokens``."""
    parts = []
    if "n_heads" in d and "n_kv_heads" in d:
        parts.append(f"H=({int(d['n_heads'])},{int(d['n_kv_heads'])})")
    elif "n_kv_heads" in d:
        parts.append(f"n_kv={int(d['n_kv_heads'])}")
    if "size" in d:
        parts.append(f"size {d['size']:g}")
    if "params_non_embedding" in d:
        parts.append(f"N={d['params_non_embedding']:.4g} parameters")
    if "context" in d:
        parts.append(f"context {int(d['context'])} tokens")
    return ", ".join(parts) or "all rows"


def _entry_keys(keys: list[str], values: tuple, sub: pd.DataFrame, form: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in zip(keys, values):
        out[k] = int(v) if k in ("n_heads", "n_kv_heads", "context") else float(v)
    if "context" in sub.columns and "context" not in out:
        out["context"] = int(sub["context"].iloc[0])
    if form == "heads" and "n_kv_heads" in sub.columns and sub["n_kv_heads"].nunique() == 1:
        out["n_kv_heads"] = int(sub["n_kv_heads"].iloc[0])
    return out


def fit_results(
    df: pd.DataFrame,
    form: str = "n",
    shared_E: bool = False,
    bootstrap: int = 0,
    seed: int = 0,
    context: int | None = None,
    grid: str | int | None = None,
    drop_highest_loss: int = 0,
    workers: int | None = None,
) -> FitReport:
    """Fit one law per group of a results table; returns a :class:`FitReport`.

    ``form``: ``n`` (L = (a/N)^b + E per H; ``shared_E`` fits one E jointly), ``chinchilla``
    (L = E + A/N^alpha + B/D^beta per H, or over all rows without head columns), ``heads``
    (L = a n_h^b + c per model size). ``bootstrap``: number of resamples (rows drawn with replacement
    within each group, refitted from the best fit and two grid points) for 95% percentile intervals.
    ``context``: keep only rows trained at this context (tokens); form ``n`` requires one context.
    ``drop_highest_loss``: leave out the K highest-loss rows of the table first (Besiroglu et al. drop 5
    of Chinchilla's points); the dropped rows are named in a warning.
    ``grid``: starting points, as in :func:`fit_chinchilla` (default: the 32 grid points with the lowest
    initial objective; ``"full"`` for every grid point).
    ``workers``: processes that refit the bootstrap resamples (default: one per core from 16 resamples up, else
    this process alone); the draws and the result do not depend on it.
    """
    _check_fit_args(df, form, shared_E, bootstrap, seed, context)
    require(
        workers is None or (isinstance(workers, (int, np.integer)) and not isinstance(workers, bool) and workers >= 1),
        f"workers: expected a whole number of processes >= 1 (or None: one per core), got {workers!r}",
    )
    checked = isinstance(df, pd.DataFrame) and "warnings" in df.attrs  # already validated by read_results
    given = list(df.attrs["warnings"]) if checked else []
    df = validate_results(df, form=form)
    warnings = given if checked else list(df.attrs["warnings"])
    df = _select_rows(df, form, context, drop_highest_loss, warnings)
    labels, subs, entry_keys = _groups(df, form, shared_E)
    rng = np.random.default_rng(int(seed))
    meta = _table_metadata(df)
    samples_out: list[dict[str, float]] = []
    if form == "heads-joint":
        laws, residuals, samples_out = _fit_joint(df, _max_heads(df, meta), bootstrap, rng, grid, warnings, workers)
    elif shared_E:
        laws, residuals = _fit_shared(df, subs, labels, entry_keys, bootstrap, rng, warnings, workers)
    else:
        laws, residuals, samples_out = _fit_each(
            form, labels, subs, entry_keys, bootstrap, rng, grid, warnings, workers
        )
    for entry, label in zip(laws, labels):
        if entry["r2"] is None:
            warnings.append(f"{label}: R² is undefined (every loss is equal)")
    quality = quality_problems(df, form, laws, labels)
    warnings.extend(quality)
    if quality:
        meta = {**meta, "quality_warnings": quality}
    return FitReport(
        form=form,
        laws=laws,
        warnings=warnings,
        residuals=pd.concat(residuals, ignore_index=True),
        shared_E=shared_E,
        bootstrap=int(bootstrap),
        data=meta,
        samples=samples_out,
    )


#: A law whose R² (on loss) is below this is flagged: it does not describe its runs.
MIN_R2 = 0.9


def quality_problems(df: pd.DataFrame, form: str, laws: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """One line per reason not to trust the fit: a head configuration whose loss RISES with N (least-squares
    slope of the mean loss per size against ln N above 0; forms ``n`` and ``heads-joint``), and a law with
    R² < :data:`MIN_R2`. Stored as ``metadata.quality_warnings`` of the laws file; search and table repeat them.
    """
    out = []
    if form in ("n", "heads-joint") and "params_non_embedding" in df.columns:
        keys = [k for k in ("n_heads", "n_kv_heads") if k in df.columns]
        groups = df.groupby(keys, sort=True) if keys else [((), df)]
        for key, sub in groups:
            means = sub.groupby("params_non_embedding")["loss"].mean()
            if len(means) < 2:
                continue
            x = np.log(means.index.to_numpy(dtype=float))
            y = means.to_numpy(dtype=float)
            slope = float(np.polyfit(x, y, 1)[0])
            if slope > 0:
                key = key if isinstance(key, tuple) else (key,)
                what = f"H=({int(key[0])},{int(key[1])})" if len(key) == 2 else "the runs"
                out.append(
                    f"{what}: loss rises with N ({slope:+.3g} nats/token per e-fold of N over {len(means)} sizes); "
                    "the law extrapolates a trend the runs do not show; check these runs before using it"
                )
    for entry, label in zip(laws, labels):
        r2 = entry.get("r2")
        if r2 is not None and r2 < MIN_R2:
            out.append(f"{label}: R² = {r2:.3f} < {MIN_R2} on loss; the law does not describe its runs")
    return out


def _check_fit_args(df, form: str, shared_E: bool, bootstrap, seed, context) -> None:
    """One-line errors for the options of :func:`fit_results`."""
    require(form in FORMS, f"--form: unknown form {form!r}; choose one of {', '.join(FORMS)}")
    require(
        isinstance(bootstrap, (int, np.integer)) and not isinstance(bootstrap, bool) and 0 <= bootstrap <= 100000,
        f"--bootstrap: expected a whole number of resamples in 0..100000, got {bootstrap!r}",
    )
    require(
        isinstance(seed, (int, np.integer)) and not isinstance(seed, bool), f"--seed: expected an integer, got {seed!r}"
    )
    require(not shared_E or form == "n", f"--shared-E applies to --form n only, not {form!r}")
    require(
        form != "heads-joint"
        or "context" not in df.columns
        or pd.Series(df["context"]).nunique() <= 1
        or context is not None,
        "context: the table mixes training contexts; fit one at a time with --context (laws depend on the "
        "training length)",
    )


def _select_rows(df: pd.DataFrame, form: str, context, drop_highest_loss, warnings: list[str]) -> pd.DataFrame:
    """The rows to fit: those at ``context`` (tokens) when given, minus the ``drop_highest_loss`` highest-loss
    rows (named in ``warnings``); forms n and heads-joint need one training context."""
    if context is not None:
        require("context" in df.columns, "--context: the results table has no 'context' column")
        df = df[df["context"] == context].reset_index(drop=True)
        require(len(df) > 0, f"--context: no rows trained at context {context} tokens")
    require(
        isinstance(drop_highest_loss, (int, np.integer))
        and not isinstance(drop_highest_loss, bool)
        and 0 <= drop_highest_loss < len(df),
        f"--drop-highest-loss: expected a whole number in 0..{len(df) - 1} (the table has {len(df)} rows), got "
        f"{drop_highest_loss!r}",
    )
    if drop_highest_loss:
        order = np.argsort(-df["loss"].to_numpy(), kind="stable")[:drop_highest_loss]
        mask = np.zeros(len(df), dtype=bool)
        mask[order] = True
        warnings.append(f"left out the {drop_highest_loss} highest-loss rows: {_rows(mask, limit=20)}")
        df = df.loc[~mask].reset_index(drop=True)
    if form in ("n", "heads-joint") and "context" in df.columns:
        ctx = sorted(int(c) for c in df["context"].unique())
        require(
            len(ctx) == 1,
            f"context: the table mixes training contexts {', '.join(map(str, ctx))} tokens; "
            f"fit one at a time with --context (laws depend on the training length)",
        )
    return df


def _groups(df: pd.DataFrame, form: str, shared_E: bool) -> tuple[list[str], list[pd.DataFrame], list[dict[str, Any]]]:
    """(labels, row subsets, laws-entry keys) of the groups fitted separately, each checked for enough points."""
    keys = _group_keys(df, form)
    groups = list(df.groupby(keys, sort=True)) if keys else [((), df)]
    labels, subs, entry_keys = [], [], []
    for values, sub in groups:
        values = values if isinstance(values, tuple) else (values,)
        label = _label(keys, values)
        _check_points(form, label, sub, shared_E, single=len(groups) == 1)
        labels.append(label)
        subs.append(sub)
        entry_keys.append(_entry_keys(keys, values, sub, form))
    return labels, subs, entry_keys


def _fit_joint(df: pd.DataFrame, n_ref: int, bootstrap: int, rng, grid, warnings: list[str], workers=None):
    """Form heads-joint: (laws [one entry], residuals [one frame], bootstrap samples)."""
    form, names = "heads-joint", COEFS["heads-joint"]
    samples_out: list[dict[str, float]] = []
    res = _fit_group(form, df, grid=grid, n_ref=n_ref)
    entry = {k: float(res[k]) for k in names}
    entry.update(
        {
            "n_ref": n_ref,
            "max_heads": n_ref,
            "r2": res["r2"],
            "n_points": res["n_points"],
            "heads": sorted({(int(h), int(kv)) for h, kv in zip(df["n_heads"], df["n_kv_heads"])}),
        }
    )
    entry["heads"] = [list(h) for h in entry["heads"]]
    if "context" in df.columns:
        entry["context"] = int(df["context"].iloc[0])
    if bootstrap:
        samples_out = _bootstrap_group(form, df, res.theta, bootstrap, rng, n_ref, workers)
        entry["ci"] = _ci(samples_out, names)
        entry["n_bootstrap"] = len(samples_out)
    _bound_warning(entry, res["at_bound"], "joint law", warnings)
    residual = df.assign(
        group=[f"H=({h},{kv})" for h, kv in zip(df["n_heads"], df["n_kv_heads"])],
        predicted=res.predicted,
        residual=df["loss"].to_numpy() - res.predicted,
    )
    return [entry], [residual], samples_out


def _fit_each(form: str, labels, subs, entry_keys, bootstrap: int, rng, grid, warnings: list[str], workers=None):
    """One law per group: (laws entries, residual frames, bootstrap samples with their group keys)."""
    names = COEFS[form]
    laws: list[dict[str, Any]] = []
    residuals: list[pd.DataFrame] = []
    samples_out: list[dict[str, Any]] = []
    for label, sub, ek in zip(labels, subs, entry_keys):
        res = _fit_group(form, sub, grid=grid)
        entry = dict(ek)
        entry.update({k: float(res[k]) for k in names})
        entry["r2"] = res["r2"]
        entry["n_points"] = res["n_points"]
        if bootstrap:
            samples = _bootstrap_group(form, sub, res.theta, bootstrap, rng, workers=workers)
            entry["ci"] = _ci(samples, names)
            entry["n_bootstrap"] = len(samples)
            samples_out.extend({**ek, **smp} for smp in samples)
        _bound_warning(entry, res["at_bound"], label, warnings)
        laws.append(entry)
        residuals.append(
            sub.assign(group=label, predicted=res.predicted, residual=sub["loss"].to_numpy() - res.predicted)
        )
    return laws, residuals, samples_out


def _max_heads(df: pd.DataFrame, meta: dict[str, Any]) -> int:
    """The largest n_h search should consider: the family's largest d / d_h, else the table's largest
    n_h; rounded up to a power of two (also the joint law's n_ref)."""
    top = 1.0
    family = meta.get("family")
    if family:
        top = max(d for _, d in family["reference_shapes"]) / family["head_dim"]
    if "n_heads" in df.columns:
        top = max(top, float(df["n_heads"].max()))
    return int(2 ** math.ceil(math.log2(max(top, 1.0)) - 1e-9))


def _table_metadata(df: pd.DataFrame) -> dict[str, Any]:
    """What a results table says about the fitted models: the range of N (parameters), the
    training context (tokens) and, when it has the shape columns ``cogqa sweep collect`` writes
    (layers, hidden_size, head_dim, params_total), the model family for search
    (``metadata.family``, see :class:`cogqa.family.ModelFamily`)."""
    out: dict[str, Any] = {}
    if "params_non_embedding" in df.columns:
        out["params_non_embedding_range"] = [
            float(df["params_non_embedding"].min()),
            float(df["params_non_embedding"].max()),
        ]
    if "context" in df.columns and df["context"].nunique() == 1:
        out["context"] = int(df["context"].iloc[0])
    shape_cols = {"layers", "hidden_size", "head_dim", "params_total", "params_non_embedding"}
    if shape_cols <= set(df.columns) and df["head_dim"].nunique() == 1:
        vocab = (df["params_total"] - df["params_non_embedding"]) / df["hidden_size"]  # tied embeddings: V x d
        if np.allclose(vocab, np.round(vocab)) and np.round(vocab).nunique() == 1 and vocab.iloc[0] > 0:
            head_dim = int(df["head_dim"].iloc[0])
            out["family"] = {
                "head_dim": head_dim,
                "vocab_size": int(round(vocab.iloc[0])),
                "hidden_multiple": head_dim,
                "reference_shapes": sorted(
                    {(int(n_layers), int(d)) for n_layers, d in zip(df["layers"], df["hidden_size"])}
                ),
            }
    return out


def _bound_warning(entry: dict[str, Any], at_bound: list[str], label: str, warnings: list[str]) -> None:
    if not at_bound:
        return
    entry["at_bound"] = list(at_bound)
    shown = ", ".join(f"{n} = {entry[n]:.4g}" for n in at_bound if n in entry)
    floor = [n for n in at_bound if n in ("E", "c") and abs(entry.get(n, 1.0) - E_FLOOR) < 1e-6]
    why = (
        f"; {floor[0]} at its floor of {E_FLOOR:g} nats/token means the data show no irreducible loss" if floor else ""
    )
    warnings.append(
        f"{label}: {', '.join(at_bound)} ended on its bound ({shown}): the data do not determine it{why}; treat "
        "the law with care"
    )


def _shared_fit(parts, starts=None):
    """Form n with one E shared by the groups ``parts`` (DataFrames): :func:`fit_power_law_shared_E`."""
    N = np.concatenate([p["params_non_embedding"].to_numpy(float) for p in parts])
    loss = np.concatenate([p["loss"].to_numpy(float) for p in parts])
    g = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    return fit_power_law_shared_E(N, loss, g, starts=starts)


def _refit_shared(subs, starts, draws) -> list[dict[str, Any]]:
    """{E, groups: [{a, b}]} of the shared-E fit on each resample (``rows`` of each group, for ``rows`` in
    ``draws``); failed fits left out."""
    out = []
    for rows in draws:
        try:
            res = _shared_fit([s.iloc[r] for s, r in zip(subs, rows)], starts=starts)
        except CogqaError:
            continue
        out.append({"E": res["E"], "groups": [{"a": g["a"], "b": g["b"]} for g in res["groups"]]})
    return out


def _fit_shared(df, subs, labels, entry_keys, bootstrap, rng, warnings, workers=None):
    res = _shared_fit(subs)
    laws, residuals = [], []
    offset = 0
    samples = []
    if bootstrap:
        theta = res.theta
        starts = np.array(
            [theta, np.concatenate([theta[:-1], [theta[-1] - 0.1]]), np.concatenate([theta[:-1], [theta[-1] + 0.1]])]
        )
        # each resample draws every group's rows in turn, as the serial loop always did
        draws = [[rng.integers(0, len(s), size=len(s)) for s in subs] for _ in range(bootstrap)]
        samples = refit_all(_refit_shared, (subs, starts), draws, workers)
    e_ci = _ci([{"E": s["E"]} for s in samples], ("E",))
    for i, (label, sub, ek) in enumerate(zip(labels, subs, entry_keys)):
        g = res["groups"][i]
        entry = dict(ek)
        entry.update(
            {
                "a": float(g["a"]),
                "b": float(g["b"]),
                "E": float(res["E"]),
                "r2": g["r2"],
                "n_points": g["n_points"],
                "shared_E": True,
            }
        )
        if bootstrap:
            ci = _ci([s["groups"][i] for s in samples], ("a", "b"))
            ci.update(e_ci)
            entry["ci"] = ci
            entry["n_bootstrap"] = len(samples)
        _bound_warning(entry, g["at_bound"] + res["at_bound"], label, warnings)
        laws.append(entry)
        pred = res.predicted[offset : offset + len(sub)]
        offset += len(sub)
        residuals.append(sub.assign(group=label, predicted=pred, residual=sub["loss"].to_numpy() - pred))
    return laws, residuals


def write_laws(report: FitReport, path: str | Path, source: str = "") -> Path:
    """Write ``report.to_laws_dict(source)`` as JSON atomically (temporary name, then rename); returns the path."""
    from ..files import write_json_atomic

    path = Path(path)
    require(path.suffix.lower() == ".json", f"--out: {path}: the laws file must end in .json")
    require(not path.is_dir(), f"--out: {path} is a directory; give a file name such as laws.json")
    if path.parent and not path.parent.exists():
        raise CogqaError(f"--out: directory {path.parent} does not exist")
    return write_json_atomic(path, report.to_laws_dict(source))
