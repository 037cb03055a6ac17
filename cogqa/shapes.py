"""Model shapes: the hyperparameters of a GQA decoder that costs and models are computed from.

Two kinds of shape share one set of attribute names, so every cost function accepts both:

* :class:`ModelShape` -- a real, buildable decoder (integers, validated on construction).
  Built by hand, from a Hugging Face ``config.json`` (:func:`shape_from_hf_config`), or from the
  paper's sweep sizes (:func:`paper_shape`).
* :class:`RealShape` -- a real-valued (or numpy-array-valued) shape, as produced by the paper's
  Appendix B.1 for an arbitrary size N (:func:`cogqa.family.shape_for_params`). Fields may be numpy arrays:
  that is how the cost model is evaluated on whole grids at once.

Conventions: ``head_dim`` is decoupled from ``hidden_size`` (the paper's change 1), so the query
projection maps ``hidden_size -> n_heads * head_dim``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CogqaError, require
from .readers import field as typed_field
from .readers import read_json_object, short

PAPER_HEAD_DIM = 64
PAPER_VOCAB = 50304  # GPT-2's 50,257 tokens padded to a multiple of 64
PAPER_ROPE_THETA = 500_000.0
PAPER_NORM_EPS = 1e-6
FFN_KINDS = ("swiglu", "mlp")


def paper_ffn_size(hidden_size: int) -> int:
    """FFN width of the paper's models: ``int(8 d / 3)`` as in the authors' code (units: neurons)."""
    return int(8 * hidden_size / 3)


#: Upper bounds of a ModelShape's sizes (inclusive): far beyond any real decoder, so a larger value is a typo.
SHAPE_LIMITS = {
    "layers": 2**14,
    "hidden_size": 2**20,
    "ffn_size": 2**22,
    "n_heads": 2**14,
    "n_kv_heads": 2**14,
    "head_dim": 2**14,
    "vocab_size": 2**24,
}
#: The largest non-embedding size (parameters) an Appendix B.1 shape may have.
MAX_PARAMS = 1e15
#: The longest sliding window (tokens), as the longest context cogqa accepts.
MAX_WINDOW = 2**40

#: The RoPE scalings a ModelShape can carry, with their parameters in order (Llama 3.1/3.2's only).
ROPE_SCALINGS = {"llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def check_rope_scaling(value) -> tuple:
    """``("llama3", factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)`` validated
    (a tuple, from a tuple or a list); a one-line error for any other kind or a bad parameter."""
    require(
        isinstance(value, (list, tuple)) and len(value) >= 1 and value[0] in ROPE_SCALINGS,
        f"rope_scaling must be ('llama3', factor, low_freq_factor, high_freq_factor, "
        f"original_max_position_embeddings), got {value!r}",
    )
    names = ROPE_SCALINGS[value[0]]
    require(len(value) == len(names) + 1, f"rope_scaling {value[0]} needs {', '.join(names)}; got {list(value[1:])!r}")
    nums = []
    for n, v in zip(names, value[1:]):
        require(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
            f"rope_scaling {n} must be a positive number, got {v!r}",
        )
        nums.append(int(v) if n == "original_max_position_embeddings" else float(v))
    require(nums[2] > nums[1], f"rope_scaling: high_freq_factor ({nums[2]}) must exceed low_freq_factor ({nums[1]})")
    return (value[0], *nums)


@dataclass(frozen=True)
class ModelShape:
    """A buildable GQA decoder. All sizes are integers; validated on construction.

    ``qkv_bias``/``o_bias``/``mlp_bias`` add bias vectors (Qwen2 has ``qkv_bias``); ``qk_norm``
    adds per-head RMSNorm on queries and keys (Qwen3). ``ffn_kind`` is ``"swiglu"`` (three
    matrices: gate, up, down) or ``"mlp"`` (two matrices).

    ``sliding_window`` (tokens; None = full attention) makes ``window_layers`` layers attend to at
    most the last ``sliding_window`` positions and cache only those (``window_layers`` None = every
    layer, as Mistral-7B-v0.1; Qwen2/Qwen3 window only the layers from ``max_window_layers`` on).
    Costs and cogqa's model (:mod:`cogqa.model`) use it.
    """

    layers: int
    hidden_size: int
    ffn_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int = PAPER_HEAD_DIM
    vocab_size: int = PAPER_VOCAB
    tie_embeddings: bool = True
    ffn_kind: str = "swiglu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    rope_theta: float = PAPER_ROPE_THETA
    norm_eps: float = PAPER_NORM_EPS
    model_type: str = "llama"
    name: str = field(default="", compare=False)
    rope_scaling: tuple | None = None
    sliding_window: int | None = None
    window_layers: int | None = None

    def __post_init__(self) -> None:
        if self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", check_rope_scaling(self.rope_scaling))
        # Plain `if`s: the messages are formatted only when a check fails (the search builds shapes
        # in its inner loop).
        for f, limit in SHAPE_LIMITS.items():
            value = getattr(self, f)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise CogqaError(f"{f} must be a whole number, got {short(value)}")
            if not 0 < value <= limit:
                raise CogqaError(f"{f} must be between 1 and {limit:,}, got {value}")
        if self.sliding_window is not None or self.window_layers is not None:
            self._check_window()
        if self.n_heads % self.n_kv_heads:
            raise CogqaError(
                f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads}): "
                "each KV head serves a whole group of query heads"
            )
        if self.ffn_kind not in FFN_KINDS:
            raise CogqaError(f"ffn_kind must be one of {FFN_KINDS}, got {self.ffn_kind!r}")
        for f in ("rope_theta", "norm_eps"):
            value = getattr(self, f)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise CogqaError(f"{f} must be a positive number, got {value!r}")

    def _check_window(self) -> None:
        w, n = self.sliding_window, self.window_layers
        for name, value in (("sliding_window", w), ("window_layers", n)):
            require(
                value is None or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)),
                f"{name} must be a whole number or null, got {short(value)}",
            )
        require(w is None or 0 < w <= MAX_WINDOW, f"sliding_window must be between 1 and 2**40 tokens, got {w}")
        require(n is None or w is not None, "window_layers needs sliding_window (the window's length in tokens)")
        require(
            n is None or 0 <= n <= self.layers, f"window_layers must be between 0 and layers ({self.layers}), got {n}"
        )
        if n == 0:  # no layer uses the window: full attention
            object.__setattr__(self, "sliding_window", None)
            object.__setattr__(self, "window_layers", None)

    @property
    def windowed_layers(self) -> int:
        """Layers that attend through the sliding window (0 for full attention)."""
        if self.sliding_window is None:
            return 0
        return self.layers if self.window_layers is None else self.window_layers

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def heads(self) -> tuple[int, int]:
        """The head configuration H = (n_heads, n_kv_heads)."""
        return (self.n_heads, self.n_kv_heads)

    def with_heads(self, n_heads: int, n_kv_heads: int) -> "ModelShape":
        """The same shape with another head configuration (hidden size unchanged: heads are decoupled)."""
        return replace(self, n_heads=n_heads, n_kv_heads=n_kv_heads)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict (round-trips through :meth:`from_dict`);
        ``rope_scaling`` only when set, so shapes without it serialise as before."""
        data = asdict(self)
        for key in ("sliding_window", "window_layers"):
            if data[key] is None:
                del data[key]
        if data["rope_scaling"] is None:
            del data["rope_scaling"]
        else:
            data["rope_scaling"] = list(data["rope_scaling"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelShape":
        """Build from :meth:`to_dict` output; unknown keys are an error naming them."""
        require(isinstance(data, dict), "a shape must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        require(not unknown, f"unknown shape field(s) {unknown}; known fields: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:  # missing required fields
            raise CogqaError(f"incomplete shape: {exc}") from None

    def describe(self) -> str:
        """One line: layers, hidden size, heads, vocabulary and the sliding window (tokens) if any."""
        label = f"{self.name} " if self.name else ""
        window = ""
        if self.sliding_window is not None:
            where = (
                "every layer"
                if self.windowed_layers == self.layers
                else f"{self.windowed_layers} of {self.layers} layers"
            )
            window = f" sliding window {self.sliding_window:,} tokens on {where}"
        return (
            f"{label}L={self.layers} d={self.hidden_size} d_ff={self.ffn_size} "
            f"H=({self.n_heads},{self.n_kv_heads}) d_h={self.head_dim} V={self.vocab_size}{window}"
        )


@dataclass(frozen=True)
class RealShape:
    """A real-valued shape (Appendix B.1) or a grid of shapes (numpy arrays, broadcast together).

    No biases, SwiGLU, paper vocabulary by default: it describes the paper's model family.
    """

    layers: Any
    hidden_size: Any
    ffn_size: Any
    n_heads: Any
    n_kv_heads: Any
    head_dim: Any = PAPER_HEAD_DIM
    vocab_size: Any = PAPER_VOCAB
    tie_embeddings: bool = True
    ffn_kind: str = "swiglu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False

    def __post_init__(self) -> None:
        for f in ("layers", "hidden_size", "ffn_size", "n_heads", "n_kv_heads", "head_dim", "vocab_size"):
            value = getattr(self, f)
            if type(value) in (int, float) and 0 < value < math.inf:  # the common scalar case, without numpy
                continue
            value = np.asarray(value, dtype=float)
            require(bool(np.all(np.isfinite(value))), f"{f} must be finite")
            require(bool(np.all(value > 0)), f"{f} must be positive")
        h, kv = self.n_heads, self.n_kv_heads
        if not (type(h) in (int, float) and type(kv) in (int, float) and kv <= h + 1e-9):
            require(
                bool(np.all(np.asarray(kv, dtype=float) <= np.asarray(h, dtype=float) + 1e-9)),
                "n_kv_heads must not exceed n_heads",
            )
        require(self.ffn_kind in FFN_KINDS, f"ffn_kind must be one of {FFN_KINDS}, got {self.ffn_kind!r}")


# ---------------------------------------------------------------------------------------------
# The paper's reference shapes
# ---------------------------------------------------------------------------------------------

#: Table 9 (sweep shapes, MHA with d_h = 64): name -> (layers, hidden size, max learning rate).
PAPER_SWEEP_SHAPES: dict[str, tuple[int, int, float]] = {
    "3M": (4, 256, 1e-3),
    "19M": (6, 512, 1e-3),
    "85M": (12, 768, 1e-3),
    "150M": (12, 1024, 1e-3),
    "200M": (16, 1024, 5e-4),
    "470M": (24, 1280, 5e-4),
    "680M": (24, 1536, 2e-4),
    "1.2B": (36, 1536, 2e-4),
}

#: Table 7 (aspect-ratio references above 1.2B): name -> (layers, hidden size).
PAPER_LARGE_SHAPES: dict[str, tuple[int, int]] = {
    "1.2B": (36, 1536),
    "1.8B": (36, 2048),
    "4B": (48, 2560),
    "6B": (54, 3072),
    "13B": (64, 4096),
    "33B": (72, 6144),
    "64B": (80, 8192),
}


def paper_shape(size: str, n_heads: int | None = None, n_kv_heads: int | None = None) -> ModelShape:
    """The paper's model of a named size (Table 9 or Table 7, e.g. ``"470M"``) as a ModelShape.

    Heads default to MHA with d_h = 64 (``n_heads = d / 64``); ``n_kv_heads`` defaults to
    ``n_heads``. FFN size is ``int(8d/3)``, vocabulary 50,304, tied embeddings.
    """
    key = size.strip().upper().replace("G", "B")
    table = {k.upper(): v[:2] for k, v in {**PAPER_LARGE_SHAPES, **PAPER_SWEEP_SHAPES}.items()}
    require(
        key in table,
        f"unknown paper size {size!r}; choose one of "
        f"{', '.join(list(PAPER_SWEEP_SHAPES) + list(PAPER_LARGE_SHAPES)[1:])}",
    )
    layers, hidden = table[key]
    n_h = n_heads if n_heads is not None else hidden // PAPER_HEAD_DIM
    n_kv = n_kv_heads if n_kv_heads is not None else n_h
    return ModelShape(
        layers=layers,
        hidden_size=hidden,
        ffn_size=paper_ffn_size(hidden),
        n_heads=n_h,
        n_kv_heads=n_kv,
        name=size,
    )


def paper_learning_rate(size: str) -> float:
    """The max learning rate the paper used for a Table 9 size (Appendix F), e.g. 5e-4 for 470M."""
    key = size.strip().upper()
    table = {k.upper(): v[2] for k, v in PAPER_SWEEP_SHAPES.items()}
    require(key in table, f"no paper learning rate for size {size!r}; known: {', '.join(PAPER_SWEEP_SHAPES)}")
    return table[key]


# ---------------------------------------------------------------------------------------------
# Hugging Face config.json
# ---------------------------------------------------------------------------------------------

SUPPORTED_HF_TYPES = ("llama", "mistral", "qwen2", "qwen3")


# ~90 lines on purpose: one check per config.json field (19 of them), read top to bottom like the file itself.
def shape_from_hf_config(config: dict[str, Any] | str | Path) -> ModelShape:
    """A ModelShape from a Hugging Face ``config.json`` (a dict, a file, or a model directory).

    Supports ``model_type`` llama, mistral, qwen2 and qwen3. ``head_dim`` is taken when given,
    else ``hidden_size / num_attention_heads``. Biases follow each family's modelling code:
    Llama/Qwen3 ``attention_bias`` biases q, k, v and o; Qwen2 always biases q, k, v only.
    """
    config, source, model_type = _read_hf_config(config)
    hidden = _hf_positive(config, "hidden_size", source, model_type)
    n_heads = _hf_positive(config, "num_attention_heads", source, model_type)
    n_kv, head_dim = _hf_heads(config, source, hidden, n_heads)
    act = config.get("hidden_act", "silu")
    require(
        isinstance(act, str) and act in ("silu", "swish"),
        f"{source}: hidden_act {short(act)} is not supported (SwiGLU with silu expected)",
    )
    # all four families default to untied embeddings in transformers
    tie = typed_field(config, "tie_word_embeddings", "bool", source, default=False)
    attention_bias = typed_field(config, "attention_bias", "bool", source, default=False)
    mlp_bias = typed_field(config, "mlp_bias", "bool", source, default=False)
    if model_type == "qwen2":
        qkv_bias, o_bias = True, False
    elif model_type == "mistral":
        qkv_bias = o_bias = False
    else:
        qkv_bias = o_bias = attention_bias
    rope_theta, norm_eps = _hf_rope_theta_and_eps(config, source)
    rope_scaling = hf_rope_scaling(config, source)
    layers = _hf_positive(config, "num_hidden_layers", source, model_type)
    window, window_layers = hf_sliding_window(config, model_type, layers, source)
    return ModelShape(
        layers=layers,
        hidden_size=hidden,
        ffn_size=_hf_positive(config, "intermediate_size", source, model_type),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        vocab_size=_hf_positive(config, "vocab_size", source, model_type),
        tie_embeddings=tie,
        ffn_kind="swiglu",
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=mlp_bias if model_type == "llama" else False,
        qk_norm=model_type == "qwen3",
        rope_theta=rope_theta,
        norm_eps=norm_eps,
        model_type=model_type,
        name=config["_name_or_path"][:200] if isinstance(config.get("_name_or_path"), str) else model_type,
        rope_scaling=rope_scaling,
        sliding_window=window,
        window_layers=window_layers,
    )


def _read_hf_config(config) -> tuple[dict, str, str]:
    """(the config dict, its source for messages, its supported model_type) of a dict, file or model
    directory; a multimodal config's ``text_config`` is used when the top level has no model_type."""
    source = "config"
    if not isinstance(config, dict):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        source = str(path)
        require(path.is_file(), f"{source}: no such file; pass a config.json or a model directory holding one")
        config = read_json_object(path, source)
    model_type = config.get("model_type")
    if model_type is None and "text_config" in config:
        config = typed_field(config, "text_config", "dict", source)
        model_type = config.get("model_type")
    require(
        isinstance(model_type, str) and model_type in SUPPORTED_HF_TYPES,
        f"{source}: model_type {short(model_type)} is not supported; supported: {', '.join(SUPPORTED_HF_TYPES)} "
        "(or give the shape explicitly with --layers/--hidden/...)",
    )
    return config, source, model_type


def _hf_positive(config: dict, key: str, source: str, model_type: str) -> int:
    """A required positive-integer field of an HF config; one-line error naming it otherwise."""
    require(key in config and config[key] is not None, f"{source}: missing field {key!r} in the {model_type} config")
    value = config[key]
    require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"{source}: field {key!r} must be a positive integer, got {short(value)}",
    )
    return value


def _hf_heads(config: dict, source: str, hidden: int, n_heads: int) -> tuple[int, int]:
    """(n_kv_heads, head_dim) of an HF config: KV heads default to n_h (absent or null: MHA, as
    transformers reads it) and must divide it; head_dim defaults to hidden_size / n_h."""
    n_kv = config.get("num_key_value_heads")
    if n_kv is None:
        n_kv = n_heads
    require(
        isinstance(n_kv, int) and not isinstance(n_kv, bool) and n_kv > 0 and n_heads % n_kv == 0,
        f"{source}: field 'num_key_value_heads' must be a positive integer dividing num_attention_heads "
        f"({n_heads}), got {short(n_kv)}; fix the config (omit it for multi-head attention)",
    )
    head_dim = config.get("head_dim")
    if head_dim is not None:
        require(
            isinstance(head_dim, int) and not isinstance(head_dim, bool) and head_dim > 0,
            f"{source}: field 'head_dim' must be a positive integer, got {short(head_dim)}",
        )
        return n_kv, head_dim
    require(
        hidden % n_heads == 0,
        f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {n_heads} and no head_dim is given",
    )
    return n_kv, hidden // n_heads


def _hf_rope_theta_and_eps(config: dict, source: str) -> tuple[float, float]:
    """(RoPE base theta, RMSNorm epsilon) of an HF config; theta from ``rope_theta`` or, in newer
    configs, ``rope_parameters.rope_theta`` (default 10,000)."""
    for key in ("rope_scaling", "rope_parameters"):
        typed_field(config, key, "dict", source, default=None)
    rope = config.get("rope_parameters") or {}
    rope_theta = typed_field(config, "rope_theta", "number", source, default=None, low=1e-300)
    if rope_theta is None:
        rope_theta = typed_field(
            rope, "rope_theta", "number", source, default=10000.0, low=1e-300, where="rope_parameters."
        )
    norm_eps = typed_field(config, "rms_norm_eps", "number", source, default=1e-6, low=1e-300)
    return float(rope_theta), float(norm_eps)


def hf_sliding_window(config: dict, model_type: str, layers: int, source: str = "config") -> tuple:
    """(sliding window in tokens or None, layers using it or None = all) of a Hugging Face config.

    * mistral: ``sliding_window`` (e.g. 4096 in Mistral-7B-v0.1; null in later versions) on every layer.
    * qwen2/qwen3: only with ``use_sliding_window: true``. Reading of ``max_window_layers`` (as in
      transformers' modelling code, ``layer_idx >= max_window_layers`` uses the window): the first
      ``max_window_layers`` layers attend fully, the remaining ``layers - max_window_layers`` use the
      window. A ``layer_types`` list, when given, is counted instead ("sliding_attention" entries).
    * llama: no sliding window in its modelling code; the field is ignored (it is null in Llama configs).
    """
    if model_type == "llama":
        return None, None
    if model_type in ("qwen2", "qwen3") and not typed_field(
        config, "use_sliding_window", "bool", source, default=False
    ):
        return None, None
    window = config.get("sliding_window")
    if window is None:
        return None, None
    require(
        isinstance(window, int) and not isinstance(window, bool) and 0 < window <= MAX_WINDOW,
        f"{source}: field 'sliding_window' must be a positive integer (tokens) or null, got {short(window)}",
    )
    if model_type == "mistral":
        return window, None
    types = config.get("layer_types")
    if types is not None:
        require(
            isinstance(types, list) and len(types) == layers and all(isinstance(t, str) for t in types),
            f"{source}: field 'layer_types' must list one attention kind per layer ({layers})",
        )
        return window, sum(t == "sliding_attention" for t in types)
    first_full = config.get("max_window_layers", 28)  # transformers' Qwen2Config/Qwen3Config default
    require(
        isinstance(first_full, int) and not isinstance(first_full, bool) and first_full >= 0,
        f"{source}: field 'max_window_layers' must be a whole number >= 0, got {short(first_full)}",
    )
    return window, max(0, layers - first_full)


def hf_rope_type(config: dict) -> str:
    """The RoPE kind of a Hugging Face config: ``rope_scaling``/``rope_parameters`` ``rope_type`` (or the
    older ``type``), ``"default"`` when there is none."""
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        return "default"
    return str(rope.get("rope_type") or rope.get("type") or "default")


def hf_rope_scaling(config: dict, source: str = "config") -> tuple | None:
    """The ModelShape ``rope_scaling`` of a Hugging Face config: the llama3 tuple, or None for plain RoPE and
    for kinds cogqa's model does not compute (import refuses those; costs do not depend on RoPE)."""
    if hf_rope_type(config) != "llama3":
        return None
    rope = config.get("rope_scaling") or config.get("rope_parameters")
    names = ROPE_SCALINGS["llama3"]
    missing = [n for n in names[:3] if rope.get(n) is None]
    require(not missing, f"{source}: rope_scaling llama3 lacks {', '.join(missing)}")
    original = rope.get("original_max_position_embeddings") or config.get("max_position_embeddings")
    require(original is not None, f"{source}: rope_scaling llama3 lacks original_max_position_embeddings")
    return check_rope_scaling(("llama3", *(rope[n] for n in names[:3]), original))
