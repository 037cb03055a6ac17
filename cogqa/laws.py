"""Scaling laws of loss vs model size per head configuration, and the laws file that ``search`` reads.

The paper's law (Eq. 7), per head configuration H = (n_heads, n_kv_heads)::

    loss(N; H) = (a / N) ** b + E          N = non-embedding parameters

Laws file (JSON). The minimal interchange form, always accepted::

    {"form": "power_law_n",
     "laws": [{"n_heads": 8, "n_kv_heads": 1, "a": 1.2e9, "b": 0.3, "E": 1.9}, ...],
     "source": "where the numbers come from"}

The joint law across head configurations (form ``heads_joint``, one entry; ``cogqa fit --form heads-joint``)::

    {"form": "heads_joint",
     "laws": [{"a": 7.8e7, "b": 0.19, "E": 1.94, "A": 0.13, "g": 0.54, "B": 0.027, "k": 0.98, "n_ref": 32,
               "max_heads": 32}], "source": "..."}

    loss(N; n_h, n_kv) = (a / N)^b + E + A (n_h^-g - n_ref^-g) + B (n_kv^-k - n_ref^-k)

shared a, b and E (the loss of H = (n_ref, n_ref)) and two saturating head terms; search inverts it for
N*(H) for every H = powers of two up to ``max_heads``, including configurations without their own runs.
Optional ``B_D``, ``beta_D`` add a data term ``B_D / D^beta_D`` (D training tokens): a joint law in N and
D for the search at equal training FLOPs (Section 5.6).

Optional keys per law: ``r2``, ``ci`` ({coefficient: [low, high]}), ``context`` (training
length in tokens), ``n_points``. Optional top-level keys: ``approximate`` (bool), ``context``,
``metadata`` (``metadata.family``: the model family the laws were fitted on, see
:class:`cogqa.family.ModelFamily`; search costs shapes of that family).
Shipped law sets are addressed by name: ``default`` and ``demo``.

``cogqa fit`` also writes two other forms, read by :func:`laws_from_dict` (not searchable):
``"chinchilla"`` (entries ``E, A, B, alpha, beta``: loss = E + A/N^alpha + B/D^beta, D in
tokens) and ``"head_law"`` (entries ``a, b, c, size``: loss = a * n_heads^b + c at one size).
The full schema is in :mod:`cogqa.fitting`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CogqaError, require

POWER_LAW_N = "power_law_n"
HEADS_JOINT = "heads_joint"
SHIPPED_LAW_SETS = ("default", "demo")


@dataclass(frozen=True, kw_only=True)
class _FitQuality:
    """What every fitted law carries besides its coefficients (keyword-only, after them): ``r2`` of the fit,
    ``ci`` the 95 % bootstrap interval per coefficient (None: not computed), and ``extra`` laws-file keys kept as
    they were read."""

    r2: float | None = None
    ci: dict[str, list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def _with_quality(self, out: dict[str, Any]) -> dict[str, Any]:
        """``out`` (a law's coefficients as a laws-file entry) with ``r2``, ``ci`` and the extra keys added."""
        if self.r2 is not None:
            out["r2"] = self.r2
        if self.ci:
            out["ci"] = self.ci
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class PowerLawN(_FitQuality):
    """loss(N) = (a / N)^b + E for one head configuration; N in non-embedding parameters."""

    n_heads: int
    n_kv_heads: int
    a: float
    b: float
    E: float

    def __post_init__(self) -> None:
        h = f"law H=({self.n_heads},{self.n_kv_heads})"
        for name in ("n_heads", "n_kv_heads"):
            v = getattr(self, name)
            require(
                isinstance(v, int) and not isinstance(v, bool) and v > 0,
                f"{h}: {name} must be a positive integer, got {v!r}",
            )
        require(self.n_heads % self.n_kv_heads == 0, f"{h}: n_kv_heads must divide n_heads")
        for name in ("a", "b", "E"):
            v = getattr(self, name)
            require(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                f"{h}: {name} must be a finite number, got {v!r}",
            )
        require(self.a > 0, f"{h}: a must be > 0 (parameters), got {self.a}")
        require(self.b > 0, f"{h}: b must be > 0, got {self.b}")
        require(self.E >= 0, f"{h}: E must be >= 0 (nats per token), got {self.E}")

    @property
    def heads(self) -> tuple[int, int]:
        """(n_heads, n_kv_heads)."""
        return (self.n_heads, self.n_kv_heads)

    def loss(self, n_params) -> np.ndarray:
        """Predicted loss (nats per token) at non-embedding size ``n_params`` (parameters)."""
        return (self.a / np.asarray(n_params, dtype=float)) ** self.b + self.E

    def params_for_loss(self, target_loss) -> np.ndarray:
        """N*(H) = a / (L* - E)^(1/b): the size that reaches ``target_loss`` (parameters).

        ``inf`` where the target is at or below the irreducible loss E.
        """
        gap = np.asarray(target_loss, dtype=float) - self.E
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gap > 0, self.a / np.where(gap > 0, gap, 1.0) ** (1.0 / self.b), np.inf)

    def to_dict(self) -> dict[str, Any]:
        """The law as a laws-file entry."""
        out: dict[str, Any] = {
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "a": self.a,
            "b": self.b,
            "E": self.E,
        }
        return self._with_quality(out)


def power_of_two_heads(max_heads: int) -> list[tuple[int, int]]:
    """All (n_heads, n_kv_heads) with both powers of two and n_kv <= n_h <= ``max_heads`` (21 for 32)."""
    powers = [2**i for i in range(int(math.log2(max_heads)) + 1)]
    return [(h, kv) for h in powers for kv in powers if kv <= h]


JOINT_COEFS = ("a", "b", "E", "A", "g", "B", "k")


@dataclass(frozen=True)
class HeadsJointLaw(_FitQuality):
    """loss(N; n_h, n_kv) = (a/N)^b + E + A (n_h^-g - n_ref^-g) + B (n_kv^-k - n_ref^-k) [+ B_D / D^beta_D].

    N non-embedding parameters, loss in nats per token, D training tokens (only when ``B_D`` is set).
    E is the loss floor of H = (n_ref, n_ref); ``max_heads`` bounds the configurations search considers.
    """

    a: float
    b: float
    E: float
    A: float
    g: float
    B: float
    k: float
    n_ref: int = 32
    max_heads: int = 32
    B_D: float | None = None
    beta_D: float | None = None

    def __post_init__(self) -> None:
        h = "joint law"
        for name in JOINT_COEFS:
            _finite(h, name, getattr(self, name))
        require(self.a > 0 and self.b > 0, f"{h}: a and b must be > 0")
        require(self.A >= 0 and self.B >= 0, f"{h}: A and B must be >= 0 (the head terms fall as heads are added)")
        require(self.g > 0 and self.k > 0, f"{h}: exponents g and k must be > 0")
        for name in ("n_ref", "max_heads"):
            v = getattr(self, name)
            require(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v & (v - 1) == 0,
                f"{h}: {name} must be a power of two >= 1, got {v!r}",
            )
        require(
            self.floor_at_infinity() >= -1e-12,
            f"{h}: E - A n_ref^-g - B n_ref^-k must be >= 0 (the loss of "
            f"infinitely many heads), got {self.floor_at_infinity():.4g}",
        )
        require(
            (self.B_D is None) == (self.beta_D is None), f"{h}: give both B_D and beta_D (the data term) or neither"
        )
        if self.B_D is not None:
            _finite(h, "B_D", self.B_D)
            _finite(h, "beta_D", self.beta_D)
            require(self.B_D > 0 and self.beta_D > 0, f"{h}: B_D and beta_D must be > 0")

    def floor_at_infinity(self) -> float:
        """E minus both head terms at n_ref: the loss floor as N, n_h and n_kv grow without bound (nats/token)."""
        return self.E - self.A * self.n_ref**-self.g - self.B * self.n_ref**-self.k

    def floor(self, n_heads, n_kv_heads) -> np.ndarray:
        """E(H): the loss floor of one head configuration as N grows (nats per token)."""
        nh, nkv = np.asarray(n_heads, dtype=float), np.asarray(n_kv_heads, dtype=float)
        return self.E + self.A * (nh**-self.g - self.n_ref**-self.g) + self.B * (nkv**-self.k - self.n_ref**-self.k)

    def loss(self, n_params, n_heads, n_kv_heads, tokens=None) -> np.ndarray:
        """Predicted loss (nats per token) at size ``n_params`` (parameters), heads and (with a data term)
        ``tokens``."""
        out = (self.a / np.asarray(n_params, dtype=float)) ** self.b + self.floor(n_heads, n_kv_heads)
        if self.B_D is not None:
            require(tokens is not None, "joint law with a data term: give the training tokens D")
            out = out + self.B_D / np.asarray(tokens, dtype=float) ** self.beta_D
        return out

    def law_for(self, n_heads: int, n_kv_heads: int) -> PowerLawN:
        """The per-H law in N the joint law implies: (a/N)^b + E(H) (exact without a data term)."""
        return PowerLawN(
            n_heads=int(n_heads),
            n_kv_heads=int(n_kv_heads),
            a=self.a,
            b=self.b,
            E=max(float(self.floor(n_heads, n_kv_heads)), 0.0),
            r2=self.r2,
            extra={"joint": True},
        )

    def to_dict(self) -> dict[str, Any]:
        """The law as the laws-file entry of form ``heads_joint``."""
        out: dict[str, Any] = {name: getattr(self, name) for name in JOINT_COEFS}
        out.update({"n_ref": self.n_ref, "max_heads": self.max_heads})
        if self.B_D is not None:
            out.update({"B_D": self.B_D, "beta_D": self.beta_D})
        return self._with_quality(out)


def _law_from_entry(cls, entry: Any, where: str, required: tuple, optional: dict, what: str = "", aliases=()):
    """``cls`` built from one laws-file entry: the ``required`` fields, the ``optional`` ones (name ->
    default), ``r2`` and ``ci``; other keys (except ``aliases``) kept in ``extra``. One-line errors
    start with ``where`` (e.g. ``laws file: laws[2]``)."""
    require(isinstance(entry, dict), f"{where} must be an object")
    for key in required:
        require(key in entry, f"{where} is missing field {key!r}{what}")
    known = (*required, *optional, *aliases, "r2", "ci")
    try:
        return cls(
            **{k: entry[k] for k in required},
            **{k: entry.get(k, default) for k, default in optional.items()},
            r2=entry.get("r2"),
            ci=entry.get("ci"),
            extra={k: v for k, v in entry.items() if k not in known},
        )
    except CogqaError as exc:
        raise CogqaError(f"{where}: {exc}") from None


def joint_law_from_dict(entry: Any, source_name: str = "laws file") -> HeadsJointLaw:
    """A :class:`HeadsJointLaw` from a laws-file entry; one-line errors name the field."""
    optional = {"n_ref": 32, "max_heads": 32, "B_D": None, "beta_D": None}
    return _law_from_entry(HeadsJointLaw, entry, f"{source_name}: laws[0]", JOINT_COEFS, optional, " of the joint law")


@dataclass(frozen=True)
class LawSet:
    """A set of per-H laws with its provenance, or one joint law across H (``joint``).

    With a joint law, ``laws`` holds the per-H laws it implies for every power-of-two H up to
    ``joint.max_heads`` (filled in when not given) and :meth:`law_for` gives any other H.
    """

    laws: tuple[PowerLawN, ...] = ()
    source: str = ""
    form: str = POWER_LAW_N
    approximate: bool = False
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)
    joint: HeadsJointLaw | None = None

    def __post_init__(self) -> None:
        if self.joint is not None:
            object.__setattr__(self, "form", HEADS_JOINT)
            if not self.laws:
                object.__setattr__(
                    self, "laws", tuple(self.joint.law_for(h, kv) for h, kv in power_of_two_heads(self.joint.max_heads))
                )
        require(len(self.laws) > 0, "laws file: 'laws' is empty; give at least one head configuration")
        seen = set()
        for law in self.laws:
            require(law.heads not in seen, f"laws file: head configuration {law.heads} appears twice")
            seen.add(law.heads)

    @property
    def family(self):
        """The :class:`cogqa.family.ModelFamily` the laws describe (``metadata.family``; default the paper's)."""
        from .family import ModelFamily

        return ModelFamily.from_dict((self.metadata or {}).get("family"))

    def by_heads(self) -> dict[tuple[int, int], PowerLawN]:
        """Laws keyed by (n_heads, n_kv_heads)."""
        return {law.heads: law for law in self.laws}

    def law_for(self, heads: tuple[int, int]) -> PowerLawN | None:
        """The law of ``heads``: from the joint law for any H, else the file's own law (None if absent)."""
        if self.joint is not None:
            h, kv = int(heads[0]), int(heads[1])
            require(h >= 1 and kv >= 1 and h % kv == 0, f"heads {heads}: n_kv_heads must divide n_heads")
            return self.joint.law_for(h, kv)
        return self.by_heads().get(tuple(heads))

    def to_dict(self) -> dict[str, Any]:
        """The laws file as a JSON-serialisable dict."""
        entries = [self.joint.to_dict()] if self.joint is not None else [law.to_dict() for law in self.laws]
        out = {"form": self.form, "laws": entries, "source": self.source}
        if self.approximate:
            out["approximate"] = True
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    def save(self, path: str | Path) -> Path:
        """Write the laws file atomically (temporary name, then rename); returns the path."""
        from .files import write_json_atomic

        return write_json_atomic(path, self.to_dict())


def law_set_from_dict(data: Any, source_name: str = "laws file") -> LawSet:
    """Validate and build a LawSet from a parsed laws file; one-line errors name the field."""
    require(isinstance(data, dict), f"{source_name}: expected a JSON object with 'form' and 'laws'")
    form = data.get("form", POWER_LAW_N)
    require(
        form in (POWER_LAW_N, HEADS_JOINT),
        f"{source_name}: form {form!r} cannot be searched; expected "
        f"{POWER_LAW_N!r} or {HEADS_JOINT!r} (fit with --form n or --form heads-joint)",
    )
    entries = data.get("laws")
    require(isinstance(entries, list), f"{source_name}: missing list 'laws'")
    metadata = data.get("metadata") or {}
    require(isinstance(metadata, dict), f"{source_name}: 'metadata' must be an object")
    if form == HEADS_JOINT:
        require(len(entries) == 1, f"{source_name}: form {HEADS_JOINT!r} holds exactly one law, got {len(entries)}")
        law_set = LawSet(
            source=str(data.get("source", "")),
            approximate=bool(data.get("approximate", False)),
            metadata=metadata,
            joint=joint_law_from_dict(entries[0], source_name),
        )
        return _with_family(law_set, source_name)
    keys = ("n_heads", "n_kv_heads", "a", "b", "E")
    laws = [_law_from_entry(PowerLawN, e, f"{source_name}: laws[{i}]", keys, {}) for i, e in enumerate(entries)]
    law_set = LawSet(
        laws=tuple(laws),
        source=str(data.get("source", "")),
        form=form,
        approximate=bool(data.get("approximate", False)),
        metadata=metadata,
    )
    return _with_family(law_set, source_name)


def _with_family(law_set: LawSet, source_name: str) -> LawSet:
    try:
        _ = law_set.family  # validated now, not in the middle of a search
    except CogqaError as exc:
        raise CogqaError(f"{source_name}: metadata.{exc}") from None
    return law_set


def load_laws(spec: str | Path = "default") -> LawSet:
    """Load a laws file: a path, or the name of a law set shipped in the package (``default``, ``demo``)."""
    name = str(spec)
    if name in SHIPPED_LAW_SETS:
        ref = resources.files("cogqa") / "data" / f"{name}_laws.json"
        require(ref.is_file(), f"--laws {name}: the shipped law set is missing from this install")
        text, source_name = ref.read_text(), f"shipped laws {name!r}"
    else:
        path = Path(name)
        require(path.is_file(), f"--laws: {name}: no such file (or use a shipped set: {', '.join(SHIPPED_LAW_SETS)})")
        text, source_name = path.read_text(), str(path)
    from .readers import parse_json

    return law_set_from_dict(parse_json(text, source_name), source_name)


# ----------------------------------------------------------------------------- other fitted forms
# Written by ``cogqa fit --form chinchilla`` / ``--form heads``. Readable with :func:`laws_from_dict`;
# ``search`` reads only the ``power_law_n`` form (``law_set_from_dict`` refuses the others).

CHINCHILLA = "chinchilla"
HEAD_LAW = "head_law"


def _finite(owner: str, name: str, value: Any) -> None:
    require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        f"{owner}: {name} must be a finite number, got {value!r}",
    )


@dataclass(frozen=True)
class ChinchillaLaw(_FitQuality):
    """loss(N, D) = E + A / N^alpha + B / D^beta (nats/token); N parameters, D training tokens.

    ``n_heads``/``n_kv_heads`` are None when the law was fitted over a table without head columns.
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    n_heads: int | None = None
    n_kv_heads: int | None = None

    def __post_init__(self) -> None:
        h = "chinchilla law" if self.n_heads is None else f"chinchilla law H=({self.n_heads},{self.n_kv_heads})"
        for name in ("E", "A", "B", "alpha", "beta"):
            _finite(h, name, getattr(self, name))
        require(self.E >= 0 and self.A > 0 and self.B > 0, f"{h}: E must be >= 0 and A, B > 0")
        require(self.alpha >= 0 and self.beta >= 0, f"{h}: alpha and beta must be >= 0")

    def loss(self, n_params, tokens) -> np.ndarray:
        """Predicted loss (nats per token) for ``n_params`` parameters trained on ``tokens`` tokens."""
        n = np.asarray(n_params, dtype=float)
        d = np.asarray(tokens, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta


@dataclass(frozen=True)
class HeadLaw(_FitQuality):
    """loss(n_h) = a * n_h^b + c (nats/token) at one model size (Appendix I)."""

    a: float
    b: float
    c: float
    size: float | None = None  # the model size the law holds at (parameters, or the table's size label)
    n_kv_heads: int | None = None
    context: int | None = None

    def __post_init__(self) -> None:
        for name in ("a", "b", "c"):
            _finite("head law", name, getattr(self, name))
        require(self.a > 0 and self.c >= 0, "head law: a must be > 0 and c >= 0")

    def loss(self, n_heads) -> np.ndarray:
        """Predicted loss (nats per token) with ``n_heads`` query heads."""
        return self.a * np.asarray(n_heads, dtype=float) ** self.b + self.c


def laws_from_dict(data: Any, source_name: str = "laws file") -> tuple:
    """Laws of any fitted form: a tuple of PowerLawN, ChinchillaLaw or HeadLaw (by the file's ``form``)."""
    require(isinstance(data, dict), f"{source_name}: expected a JSON object with 'form' and 'laws'")
    form = data.get("form", POWER_LAW_N)
    if form == POWER_LAW_N:
        return law_set_from_dict(data, source_name).laws
    if form == HEADS_JOINT:
        return (law_set_from_dict(data, source_name).joint,)
    require(
        form in (CHINCHILLA, HEAD_LAW),
        f"{source_name}: unknown form {form!r}; expected {POWER_LAW_N}, {HEADS_JOINT}, {CHINCHILLA} or {HEAD_LAW}",
    )
    entries = data.get("laws")
    require(isinstance(entries, list) and entries, f"{source_name}: missing or empty list 'laws'")
    if form == CHINCHILLA:
        cls, keys, optional = ChinchillaLaw, ("E", "A", "B", "alpha", "beta"), ("n_heads", "n_kv_heads")
    else:
        cls, keys, optional = HeadLaw, ("a", "b", "c"), ("size", "n_kv_heads", "context")
    aliases = ("params_non_embedding",) if cls is HeadLaw else ()
    out = []
    for i, entry in enumerate(entries):
        defaults = dict.fromkeys(optional)
        if cls is HeadLaw and isinstance(entry, dict):
            defaults["size"] = entry.get("params_non_embedding")  # the size may be given as params_non_embedding
        out.append(_law_from_entry(cls, entry, f"{source_name}: laws[{i}]", keys, defaults, aliases=aliases))
    return tuple(out)
