"""Accelerator profiles: peak FLOP/s, memory bandwidth and capacity, and how much of each is achievable.

Three sources of profiles, all returned as a validated :class:`Hardware`:

* **built-in** datasheet profiles (``cogqa/data/hardware.json``: A100 40/80 GB, A800, H100 SXM and
  PCIe, H200, L40S, RTX 4090, MI300X), each number with its source in the file;
* **user files**: a small JSON or YAML object with the same fields (``peak_flops`` may be written
  ``989.4T``, bandwidth ``3.35TB`` per second, memory ``80GiB``);
* ``local``: this machine, measured on the spot (achievable matmul FLOP/s and STREAM-like copy
  bandwidth, with torch), cached atomically in the user cache directory; ``remeasure=True`` (or
  ``cogqa hardware measure``) measures again.

Units: FLOP/s, bytes/s, bytes. Efficiencies are achievable / peak, in (0, 1].
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .curves import check_curve, check_grid, interpolate_curve, interpolate_grid
from .errors import CogqaError, require

DATA_FILE = Path(__file__).parent / "data" / "hardware.json"

#: Fields that are efficiencies (achievable / peak, in (0, 1]).
EFFICIENCY_FIELDS = ("matmul_efficiency", "attention_efficiency", "bandwidth_efficiency", "memory_usable_fraction")


@dataclass(frozen=True)
class Hardware:
    """One accelerator (or this machine): peaks and the fractions of them that are achievable.

    ``peak_flops`` dense matmul FLOP/s at ``dtype``; ``memory_bandwidth`` bytes/s; ``memory_bytes``
    capacity in bytes. ``matmul_efficiency`` scales the peak for the weight matmuls,
    ``attention_efficiency`` for the attention FLOPs (flash-attention kernels reach less than
    GEMMs), ``bandwidth_efficiency`` the bandwidth, ``memory_usable_fraction`` the capacity
    available to weights + KV cache. ``attention_bandwidth_efficiency`` scales the bandwidth at
    which decode attention streams the KV cache (None: as ``bandwidth_efficiency``), and
    ``kernel_overhead_seconds`` is the fixed cost of one kernel (launch, dispatch; units: seconds),
    0 for datasheet profiles (not modelled) and measured for ``local``. ``fused_step_seconds`` is the fixed
    cost of one decode step that cogqa's fused CPU step runs (:func:`cogqa.decode_kernel.decode_step`: every
    layer in one call, so no per-kernel cost; units: seconds), measured for ``local`` where that step runs,
    else None.

    Two optional **kernel-shape curves** refine the decode roofline where the achievable rate depends on
    the shape of the kernel rather than on the bytes alone (as with CPU BLAS libraries):
    ``gemv_efficiency_by_shape`` maps a weight matrix's shape ``"ROWSxCOLS"`` ([out, in] elements, a
    full grid of rows x cols) to the fraction of ``memory_bandwidth`` at which a one-row product
    streams it in cogqa's weight layout, and ``attention_efficiency_by_group`` maps the GQA group
    size n_h / n_kv to the fraction at which decode attention streams the KV cache. Between and
    beyond the measured points the fraction is interpolated linearly in log2 (bilinearly for shapes)
    and held constant. ``None`` (datasheet profiles):
    one fraction for all shapes (``bandwidth_efficiency``, ``attention_bandwidth_efficiency``).
    """

    name: str
    peak_flops: float
    memory_bandwidth: float
    memory_bytes: float
    matmul_efficiency: float = 0.8
    attention_efficiency: float = 0.6
    bandwidth_efficiency: float = 0.85
    memory_usable_fraction: float = 0.9
    attention_bandwidth_efficiency: float | None = None
    kernel_overhead_seconds: float = 0.0
    fused_step_seconds: float | None = None
    gemv_efficiency_by_shape: dict | None = field(default=None, compare=False)
    attention_efficiency_by_group: dict | None = field(default=None, compare=False)
    dtype: str = "bf16"
    description: str = ""
    aliases: tuple = ()
    sources: dict = field(default_factory=dict, compare=False)
    unconfirmed: str = ""
    measured: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        where = f"hardware {self.name or '?'}"
        require(isinstance(self.name, str) and self.name.strip() != "", "hardware: 'name' must be a non-empty string")
        for f in ("peak_flops", "memory_bandwidth", "memory_bytes"):
            v = getattr(self, f)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            require(ok, f"{where}: '{f}' must be a positive number, got {v!r}")
        for f in EFFICIENCY_FIELDS:
            v = getattr(self, f)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 1
            require(ok, f"{where}: '{f}' must be a fraction in (0, 1] (achievable / peak), got {v!r}")
        v = self.attention_bandwidth_efficiency
        ok = v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 1)
        require(ok, f"{where}: 'attention_bandwidth_efficiency' must be a fraction in (0, 1] or null, got {v!r}")
        v = self.kernel_overhead_seconds
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v < 1
        require(ok, f"{where}: 'kernel_overhead_seconds' must be seconds in [0, 1), e.g. 2e-6; got {v!r}")
        v = self.fused_step_seconds
        ok = v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v < 1)
        require(ok, f"{where}: 'fused_step_seconds' must be seconds in [0, 1) or null, e.g. 2e-4; got {v!r}")
        object.__setattr__(self, "gemv_efficiency_by_shape", check_grid(self.gemv_efficiency_by_shape, where))
        curve = check_curve(self.attention_efficiency_by_group, "attention_efficiency_by_group", "group size", where)
        object.__setattr__(self, "attention_efficiency_by_group", curve)
        from .costs import dtype_bytes

        dtype_bytes(self.dtype)

    # ------------------------------------------------------------------ achievable rates
    @property
    def matmul_flops(self) -> float:
        """Achievable FLOP/s of the weight matmuls: peak x matmul_efficiency."""
        return self.peak_flops * self.matmul_efficiency

    @property
    def attention_flops(self) -> float:
        """Achievable FLOP/s of attention kernels: peak x attention_efficiency."""
        return self.peak_flops * self.attention_efficiency

    @property
    def bandwidth(self) -> float:
        """Achievable memory bandwidth (bytes/s): peak x bandwidth_efficiency."""
        return self.memory_bandwidth * self.bandwidth_efficiency

    @property
    def attention_bandwidth(self) -> float:
        """Bandwidth at which decode attention streams the KV cache (bytes/s): peak x
        attention_bandwidth_efficiency (or x bandwidth_efficiency when that is None)."""
        eff = self.attention_bandwidth_efficiency
        return self.memory_bandwidth * (self.bandwidth_efficiency if eff is None else eff)

    def gemv_bandwidth(self, rows, cols):
        """Bandwidth (bytes/s) at which a one-row product streams a weight matrix of ``rows`` x ``cols``
        elements ([out, in]): ``memory_bandwidth`` x the ``gemv_efficiency_by_shape`` grid at that shape, or
        :attr:`bandwidth` without a grid. ``rows`` and ``cols`` may be numpy arrays."""
        import numpy as np

        if not self.gemv_efficiency_by_shape:
            return self.bandwidth + 0 * np.asarray(rows, dtype=float) * np.asarray(cols, dtype=float)
        return self.memory_bandwidth * interpolate_grid(self.gemv_efficiency_by_shape, rows, cols)

    def attention_bandwidth_at(self, group):
        """Bandwidth (bytes/s) at which decode attention streams the KV cache for GQA group size ``group``
        (n_h / n_kv): ``memory_bandwidth`` x the ``attention_efficiency_by_group`` curve, or
        :attr:`attention_bandwidth` without a curve. ``group`` may be a numpy array."""
        import numpy as np

        if not self.attention_efficiency_by_group:
            return self.attention_bandwidth + 0 * np.asarray(group, dtype=float)
        return self.memory_bandwidth * interpolate_curve(self.attention_efficiency_by_group, group)

    @property
    def usable_memory_bytes(self) -> float:
        """Bytes available for weights and KV cache: capacity x memory_usable_fraction."""
        return self.memory_bytes * self.memory_usable_fraction

    def with_overrides(self, **values) -> "Hardware":
        """The same profile with some fields replaced (``None`` values are ignored); validated."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-serialisable values (round-trips through :func:`hardware_from_dict`)."""
        out = asdict(self)
        out["aliases"] = list(self.aliases)
        return out


# ---------------------------------------------------------------------------------------------
# Building profiles from dicts and files
# ---------------------------------------------------------------------------------------------


def _number(value, field_name: str, where: str, kind: str) -> float:
    """A positive number from a number or a string with a unit (FLOP/s ``989.4T``, bytes ``80GiB``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        from .units import parse_bytes, parse_count

        text = value.strip()
        for suffix in ("FLOP/s", "FLOPS", "FLOPs", "/s"):
            if text.endswith(suffix):
                text = text[: -len(suffix)].strip()
        try:
            return parse_bytes(text, field_name) if kind == "bytes" else parse_count(text, field_name)
        except CogqaError:
            pass
    example = "989.4T or 9.894e14" if kind == "flops" else "80GiB, 3.35TB or 2e9"
    raise CogqaError(f"{where}: '{field_name}' must be a positive number, e.g. {example}; got {value!r}")


_KINDS = {"peak_flops": "flops", "memory_bandwidth": "bytes", "memory_bytes": "bytes"}


def hardware_from_dict(data: dict, where: str = "hardware profile") -> Hardware:
    """A :class:`Hardware` from a dict; unknown or missing fields are a one-line error naming them."""
    require(
        isinstance(data, dict),
        f"{where}: must be a JSON/YAML object with name, peak_flops, memory_bandwidth, memory_bytes",
    )
    known = {f.name for f in fields(Hardware)}
    unknown = sorted(set(data) - known)
    require(not unknown, f"{where}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
    missing = [k for k in ("name", "peak_flops", "memory_bandwidth", "memory_bytes") if k not in data]
    require(not missing, f"{where}: missing field(s) {', '.join(missing)} (units: FLOP/s, bytes/s, bytes)")
    values = dict(data)
    for key, kind in _KINDS.items():
        values[key] = _number(values[key], key, where, kind)
    values["aliases"] = tuple(values.get("aliases") or ())
    require(isinstance(values.get("sources", {}), dict), f"{where}: 'sources' must be an object of field: source")
    return Hardware(**values)


def load_profile_file(path: str | Path) -> Hardware:
    """A profile from a ``.json``, ``.yaml`` or ``.yml`` file holding one object (see the module docstring)."""
    p = Path(path)
    require(
        p.is_file(), f"--hardware: {path} is not a file; give a profile name (cogqa hardware list) or a JSON/YAML file"
    )
    from .readers import read_yaml_or_json

    data = read_yaml_or_json(p, str(path))
    return hardware_from_dict(data, where=str(path))


def builtin_profiles() -> dict[str, Hardware]:
    """The datasheet profiles shipped with cogqa, by name (``cogqa/data/hardware.json``)."""
    data = json.loads(DATA_FILE.read_text())
    return {d["name"]: hardware_from_dict(d, where=f"{DATA_FILE.name}: {d.get('name')}") for d in data["profiles"]}


def efficiency_sources() -> dict[str, str]:
    """Where the default efficiency factors come from (citations, by field name)."""
    return json.loads(DATA_FILE.read_text())["efficiency_sources"]


def get_hardware(spec: str | Hardware, remeasure: bool = False) -> Hardware:
    """A profile from a built-in name or alias (``h100-sxm``, ``a800``), ``local`` (measured, cached;
    ``local:cuda`` / ``local:cpu`` to choose the device) or a JSON/YAML file path."""
    if isinstance(spec, Hardware):
        return spec
    text = str(spec).strip()
    key = text.lower()
    if key == "local" or key.startswith("local:"):
        device = key.split(":", 1)[1] if ":" in key else None
        return local_profile(device=device, remeasure=remeasure)
    profiles = builtin_profiles()
    for hw in profiles.values():
        if key == hw.name or key in hw.aliases:
            return hw
    if Path(text).suffix.lower() in (".json", ".yaml", ".yml") or Path(text).exists():
        return load_profile_file(text)
    raise CogqaError(
        f"--hardware: unknown profile {text!r}; choose one of {', '.join(profiles)}, local, or a JSON/YAML profile file"
    )


# ---------------------------------------------------------------------------------------------
# The local machine, measured
# ---------------------------------------------------------------------------------------------


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    """The dtype cogqa benchmarks in on ``device``: bf16 on CUDA, fp32 on CPU."""
    return "bf16" if str(device).startswith("cuda") else "fp32"


def cache_dir() -> Path:
    """cogqa's cache directory: ``$COGQA_CACHE_DIR``, else ``$XDG_CACHE_HOME/cogqa``, else ``~/.cache/cogqa``."""
    if os.environ.get("COGQA_CACHE_DIR"):
        return Path(os.environ["COGQA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cogqa"


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _best_rate(fn, work: float, device: str, seconds: float) -> float:
    """The best ``work / time`` of repeated calls of ``fn`` within about ``seconds`` (after one warm-up)."""
    fn()
    _sync(device)
    best, start = 0.0, time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = max(best, work / (time.perf_counter() - t0))
        if time.perf_counter() - start > seconds:
            return best


def measure_matmul_flops(
    device: str = "cpu", dtype: str = "fp32", size: int | None = None, seconds: float = 1.0
) -> float:
    """Achievable matmul FLOP/s: the best of square ``size x size`` products (2 n^3 FLOPs each)."""
    import torch

    from .model import torch_dtype

    n = size or (8192 if str(device).startswith("cuda") else 1024)
    a = torch.randn(n, n, device=device, dtype=torch_dtype(dtype))
    b = torch.randn(n, n, device=device, dtype=torch_dtype(dtype))
    return _best_rate(lambda: torch.mm(a, b), 2.0 * n**3, device, seconds)


def measure_copy_bandwidth(device: str = "cpu", nbytes: int | None = None, seconds: float = 1.0) -> float:
    """Achievable STREAM-copy bandwidth (bytes/s): ``dst.copy_(src)`` of ``nbytes`` counts 2 x nbytes moved."""
    import torch

    size = nbytes or (1 << 30 if str(device).startswith("cuda") else 256 << 20)
    src = torch.ones(size // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    return _best_rate(lambda: dst.copy_(src), 2.0 * src.numel() * 4, device, seconds)


def measure_decode_attention(
    device: str = "cpu", dtype: str = "fp32", nbytes: int | None = None, seconds: float = 1.0, group: int = 1
) -> float:
    """Achievable KV-streaming bandwidth of single-token (decode) attention (units: bytes/s), as one sequence's
    decode step runs it (see :func:`_attention_rates`) with ``group`` query rows per K/V head (the GQA group
    n_h / n_kv) on K/V of ``nbytes`` (larger than the CPU caches), counting the K and V bytes once per
    call. Measures the attention kernel shape, not a model."""
    return _attention_rates(device, dtype, (group,), nbytes, seconds)[group]


#: Matrix sides (elements) of the ``local`` one-row-product grid, and the GQA group sizes of its attention curve.
GEMV_SIDES = (256, 1024, 4096)
ATTENTION_GROUPS = (1, 2, 4, 8, 16)


def _gemv_rates(device: str, dtype: str, sides, nbytes: int | None, seconds: float) -> dict[str, float]:
    """Bytes/s of the one-row product ``x[1, cols] W[rows, cols]^T`` by ``"ROWSxCOLS"`` for every rows, cols in
    ``sides``, computed as a decode step does (:func:`cogqa.decode_kernel.one_row_linear` where it applies, else
    ``F.linear``), each matrix in the model's weight layout (:func:`cogqa.kvcache.lay_out_matrix`) and repeated to
    ``nbytes`` in all (larger than the CPU caches) so that every product streams a cold matrix."""
    import torch

    from .decode_kernel import one_row_linear
    from .kvcache import lay_out_matrix, torch_dtype

    dt = torch_dtype(dtype)
    size = nbytes or (1 << 30 if str(device).startswith("cuda") else 96 << 20)
    item = torch.tensor([], dtype=dt).element_size()
    rates = {}
    for rows in sides:
        for cols in sides:
            copies = max(1, -(-size // (rows * cols * item)))
            ws = [lay_out_matrix(torch.full((rows, cols), 0.01, device=device, dtype=dt)) for _ in range(copies)]
            x = torch.full((1, cols), 0.01, device=device, dtype=dt)

            def run(ws=ws, x=x):
                with torch.no_grad():
                    for w in ws:
                        if one_row_linear(x, w) is None:
                            torch.nn.functional.linear(x, w)

            rates[f"{rows}x{cols}"] = _best_rate(run, float(copies * rows * cols * item), device, seconds)
            del ws
    return rates


def _attention_rates(device: str, dtype: str, groups, nbytes: int | None, seconds: float) -> dict[int, float]:
    """K + V bytes/s of decode attention with g query rows per K/V head, by g: as one sequence's decode step runs
    it, i.e. :func:`cogqa.decode_kernel.fused_decode_attention` where cogqa's fused CPU step takes the group, else
    :func:`cogqa.kvcache.decode_attention`."""
    import torch

    from .decode_kernel import fused_decode_attention
    from .kvcache import decode_attention, torch_dtype

    dt = torch_dtype(dtype)
    size = nbytes or (1 << 30 if str(device).startswith("cuda") else 96 << 20)
    d_h, S = 64, 16384
    n_kv = max(1, size // (2 * S * d_h * torch.tensor([], dtype=dt).element_size()))
    k = torch.full((1, n_kv, S, d_h), 0.01, device=device, dtype=dt)
    v = torch.full((1, n_kv, S, d_h), 0.01, device=device, dtype=dt)
    rates = {}
    work = 2.0 * k.numel() * k.element_size()
    probe = torch.zeros(1, 16, d_h, dtype=dt)  # a tiny call: does the fused step take this group here?
    for group in groups:
        q = torch.full((1, n_kv, group, d_h), 0.01, device=device, dtype=dt)
        if str(device) == "cpu" and fused_decode_attention(q[0, :1], probe, probe) is not None:
            run = functools.partial(fused_decode_attention, q[0], k[0], v[0])
        else:
            run = functools.partial(decode_attention, q, k, v)
        rates[int(group)] = _best_rate(run, work, device, seconds)
    return rates


def measure_gemv_grid(
    device: str = "cpu",
    dtype: str = "fp32",
    sides=GEMV_SIDES,
    nbytes: int | None = None,
    seconds: float = 0.1,
    bandwidth: float | None = None,
) -> dict[str, float]:
    """Weight-streaming efficiency by matrix shape: for every ``"ROWSxCOLS"`` of ``sides`` x ``sides``, the
    bytes/s of the one-row product ``F.linear(x[1, cols], W[rows, cols])`` that a decode step runs for every
    weight matrix (in the model's layout, over ``nbytes`` of cold matrices) divided by ``bandwidth``
    (default: the copy bandwidth measured now). Returns ``{"ROWSxCOLS": fraction}``, each capped at 1."""
    bw = bandwidth or measure_copy_bandwidth(device, seconds=seconds)
    return {k: min(1.0, r / bw) for k, r in _gemv_rates(device, dtype, sides, nbytes, seconds).items()}


def measure_attention_curve(
    device: str = "cpu",
    dtype: str = "fp32",
    groups=ATTENTION_GROUPS,
    nbytes: int | None = None,
    seconds: float = 0.2,
    bandwidth: float | None = None,
) -> dict[int, float]:
    """KV-streaming efficiency of decode attention by GQA group size: for each ``group``, the K + V bytes/s
    of decode attention (as :func:`_attention_rates` runs it) with ``group`` query rows per K/V head (head size 64) over
    ``nbytes`` of cache (larger than the CPU caches), divided by ``bandwidth`` (default: the copy
    bandwidth measured now). Returns ``{group: fraction}``, each capped at 1."""
    bw = bandwidth or measure_copy_bandwidth(device, seconds=seconds)
    return {g: min(1.0, r / bw) for g, r in _attention_rates(device, dtype, groups, nbytes, seconds).items()}


#: Kernels that do arithmetic in one forward pass of GQADecoder's decode step, per layer and per pass (outside the
#: layers), counted by hand: per layer 2 RMSNorms, q/k/v/o projections, RoPE on q and k (3 each), 2 cache writes,
#: decode attention (scale, 2 matmuls, softmax), 2 residual adds, gate/up/down, SiLU and the product; per pass the
#: embedding, 2 RoPE lookups, the final norm, the LM head, the next-token argmax and the cache bookkeeping. The
#: serving model charges ``kernel_overhead_seconds`` for each.
KERNELS_PER_LAYER = 25
KERNELS_PER_PASS = 10


def _decode_step_seconds(shape, device: str, seconds: float):
    """(seconds of one decode step of a fresh :class:`~cogqa.model.GQADecoder` of ``shape`` after 16 cached tokens,
    the model, its cache): the best of repeated steps within about ``seconds`` (units: seconds)."""
    import torch

    from .model import GQADecoder

    model = GQADecoder(shape, max_seq_len=64).to(device).eval()
    ids = torch.zeros(1, 16, dtype=torch.long, device=device)
    cache = model.new_cache(1, 64)
    with torch.no_grad():
        model(ids, cache=cache, logits_to_keep=1)
        token = ids[:, -1:]

        def step():
            cache.truncate(16)
            model(token, cache=cache)

        return 1.0 / _best_rate(step, 1.0, device, seconds), model, cache


def measure_kernel_overhead(device: str = "cpu", seconds: float = 0.5) -> float:
    """Fixed cost of one kernel of a decode step (units: seconds): the per-layer time of a decode step of a tiny
    :class:`~cogqa.model.GQADecoder` (d = 64, 4 heads, 16 cached tokens, arithmetic negligible), i.e. the step time
    at 5 layers minus that at 1 layer, over 4 layers, divided by :data:`KERNELS_PER_LAYER`. It includes what
    each kernel costs in an eager PyTorch decode: dispatch, the Python of the modules, launch."""
    from .shapes import ModelShape

    def step_seconds(layers: int) -> float:
        shape = ModelShape(
            layers=layers, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=1, head_dim=16, vocab_size=256
        )
        return _decode_step_seconds(shape, device, seconds / 2)[0]

    per_layer = max(0.0, (step_seconds(5) - step_seconds(1)) / 4)
    return per_layer / KERNELS_PER_LAYER


def measure_fused_step_seconds(device: str = "cpu", seconds: float = 0.5, bandwidth: float | None = None):
    """Fixed cost of one decode step that cogqa's fused CPU step runs (units: seconds), or None where it does not
    run (not the CPU, numba missing, more than 2 threads, or turned off): the time of a decode step of a
    one-layer :class:`~cogqa.model.GQADecoder` with the smallest width the fused step takes (d = 256, one head
    of 64, d_ff = 64, 256-token vocabulary, 16 cached tokens) less the time to stream its weights at
    ``bandwidth`` (default: the copy bandwidth measured now; they are ~0.7 MB, a ~20% share). Compiles the
    fused step for that shape first (~3 s, once per process)."""
    from .decode_kernel import MIN_NORM_SIZE, kernel_available
    from .shapes import ModelShape

    if str(device) != "cpu" or not kernel_available():
        return None
    shape = ModelShape(
        layers=1, hidden_size=MIN_NORM_SIZE, ffn_size=64, n_heads=1, n_kv_heads=1, head_dim=64, vocab_size=256
    )
    step_seconds, model, cache = _decode_step_seconds(shape, device, seconds)
    if getattr(cache, "_step_arguments", None) is None:  # the fused step did not run
        return None
    bw = bandwidth or measure_copy_bandwidth(device, seconds=seconds)
    weight_bytes = 4.0 * sum(p.numel() for p in model.parameters())
    return max(0.0, step_seconds - weight_bytes / bw)


def _device_memory_bytes(device: str) -> float:
    import torch

    if str(device).startswith("cuda"):
        return float(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8.0 * 2**30


def _shape_elements(key: str) -> int:
    """Elements of a ``"ROWSxCOLS"`` grid key."""
    rows, cols = key.split("x")
    return int(rows) * int(cols)


def measure_local(device: str | None = None, dtype: str | None = None, seconds: float = 1.0) -> Hardware:
    """Measure this machine now: achievable matmul FLOP/s (at ``dtype``) and copy bandwidth.

    ``peak_flops`` is the measured matmul rate (matmul and attention efficiency 1: already achievable).
    ``memory_bandwidth`` is the STREAM-like copy rate. ``gemv_efficiency_by_shape`` (:func:`measure_gemv_grid`)
    and ``attention_efficiency_by_group`` (:func:`measure_attention_curve`) are the decode kernels' rates over
    it; the flat ``bandwidth_efficiency`` is the grid's largest matrix and ``attention_bandwidth_efficiency``
    the curve's one query row per K/V head (what prefill, training and profiles without curves use).
    ``kernel_overhead_seconds`` is the fixed cost of one kernel (:func:`measure_kernel_overhead`).
    """
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    flops = measure_matmul_flops(device, dtype, seconds=seconds)
    bw = measure_copy_bandwidth(device, seconds=seconds)
    gemv_grid = measure_gemv_grid(device, dtype, seconds=seconds / 8, bandwidth=bw)
    attention_curve = measure_attention_curve(device, dtype, seconds=seconds / 5, bandwidth=bw)
    overhead = measure_kernel_overhead(device, seconds=seconds / 2)
    fused = measure_fused_step_seconds(device, seconds=seconds / 2, bandwidth=bw) if dtype == "fp32" else None
    import torch

    threads = torch.get_num_threads() if not str(device).startswith("cuda") else None
    name = torch.cuda.get_device_name(torch.device(device)) if str(device).startswith("cuda") else "cpu"
    return Hardware(
        name="local",
        peak_flops=flops,
        memory_bandwidth=bw,
        memory_bytes=_device_memory_bytes(device),
        matmul_efficiency=1.0,
        attention_efficiency=1.0,
        bandwidth_efficiency=gemv_grid[max(gemv_grid, key=_shape_elements)],
        attention_bandwidth_efficiency=attention_curve[1],
        kernel_overhead_seconds=overhead,
        fused_step_seconds=fused,
        gemv_efficiency_by_shape=gemv_grid,
        attention_efficiency_by_group=attention_curve,
        memory_usable_fraction=0.9,
        dtype=dtype,
        description=f"this machine ({device}: {name}), measured",
        sources={
            "peak_flops": f"measured: best {dtype} square matmul, torch.mm",
            "memory_bandwidth": "measured: best dst.copy_(src), 2 x bytes moved per copy",
            "bandwidth_efficiency": "measured: the gemv_efficiency_by_shape point of the largest matrix",
            "memory_bytes": "total device memory (CPU: physical RAM)",
            "attention_bandwidth_efficiency": "measured: decode attention (the fused step's where it runs) KV "
            "bytes/s at 1 query row / copy bandwidth",
            "gemv_efficiency_by_shape": "measured: one-row products as decode runs them / copy bandwidth",
            "attention_efficiency_by_group": "measured: decode attention (the fused step's where it runs) KV "
            "bytes/s at g query rows / copy bandwidth",
            "kernel_overhead_seconds": "measured: per-layer time of a tiny GQADecoder decode step / KERNELS_PER_LAYER",
            "fused_step_seconds": "measured: a one-layer d = 256 decode step in cogqa's fused CPU step, less its "
            "weight bytes / copy bandwidth (null: that step does not run here)",
        },
        measured={
            "device": device,
            "dtype": dtype,
            "threads": threads,
            "torch": torch.__version__,
            "copy_bandwidth": bw,
            "gemv_bandwidth": gemv_grid[max(gemv_grid, key=_shape_elements)] * bw,
            "attention_kv_bandwidth": attention_curve[1] * bw,
            "time_unix": time.time(),
        },
    )


def local_profile(device: str | None = None, dtype: str | None = None, remeasure: bool = False) -> Hardware:
    """The ``local`` profile for ``device``/``dtype``: read from the cache, or measured and cached atomically."""
    from .files import write_json_atomic

    device = device or default_device()
    dtype = dtype or default_dtype(device)
    path = local_cache_path(device, dtype)
    if path.exists() and not remeasure:
        try:
            data = json.loads(path.read_text())
            # older caches lack the curves, or the fused step's cost
            if isinstance(data, dict) and data.get("gemv_efficiency_by_shape") and "fused_step_seconds" in data:
                return hardware_from_dict(data, where=str(path))
        except (CogqaError, ValueError):  # JSON and UTF-8 decoding errors are ValueErrors
            pass  # a stale or damaged cache is measured again
    hw = measure_local(device, dtype)
    write_json_atomic(path, hw.to_dict())
    return hw


def local_cache_path(device: str | None = None, dtype: str | None = None) -> Path:
    """Where :func:`local_profile` caches the measurement for ``device``/``dtype`` (on the CPU also for the
    current torch thread count, and for whether cogqa's decode kernels run: the rates of a 1-thread and a
    2-thread decode differ, and so do those of the kernels and of the torch path)."""
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    threads = ""
    if not str(device).startswith("cuda"):
        import torch

        from .decode_kernel import kernel_available

        threads = f"-{torch.get_num_threads()}threads-{'kernels' if kernel_available() else 'torch'}"
    return cache_dir() / f"hardware-local-{device.replace(':', '')}-{dtype}{threads}.json"
