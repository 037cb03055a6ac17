import json

import numpy as np
import pytest
from conftest import ideal_hardware

from cogqa import costs
from cogqa.errors import CogqaError
from cogqa.family import shape_for_params
from cogqa.hardware import Hardware, get_hardware
from cogqa.serving import (
    decode_step,
    max_batch,
    max_context,
    objective_values,
    pareto_front,
    prefill,
    serving_summary,
    training_step,
)
from cogqa.shapes import paper_shape

#: 1 TFLOP/s, 100 GB/s, 10 GB; bf16 weights.
TOY = ideal_hardware(
    "toy",
    1e12,
    1e11,
    10e9,
    matmul_efficiency=0.5,
    attention_efficiency=0.25,
    bandwidth_efficiency=0.8,
    memory_usable_fraction=1.0,
    dtype="bf16",
)


def test_decode_step_is_the_sum_of_phase_maxima():
    s = paper_shape("470M", 8, 1)
    T, B = 32768, 4
    r = decode_step(s, T, B, TOY)
    f = costs.forward_flops_per_token(s, T)
    w_bytes = costs.params_total(s) * 2
    kv = B * T * costs.kv_cache_bytes_per_token(s)
    expect_w = max(B * f["time_invariant"] / 0.5e12, w_bytes / 0.8e11)
    expect_a = max(B * f["attention_computation"] / 0.25e12, kv / 0.8e11)
    assert r["weights"]["bytes"] == pytest.approx(w_bytes) and r["attention"]["bytes"] == pytest.approx(kv)
    assert r["seconds"] == pytest.approx(expect_w + expect_a)
    assert r["tokens_per_second"] == pytest.approx(B / (expect_w + expect_a))
    # attention intensity n_h/n_kv = 8 FLOPs/byte at bf16 > the toy's 0.25e12/0.8e11 = 3.1: compute-bound
    assert r["weights"]["bound"] == "memory" and r["attention"]["bound"] == "compute"


def test_batch_amortises_weights_and_prefill_is_compute_bound():
    s = paper_shape("1.2B", 32, 8)
    h100 = get_hardware("h100-sxm")
    t1, t8 = (decode_step(s, 8192, b, h100)["tokens_per_second"] for b in (1, 8))
    assert 1 < t8 / t1 < 8  # weights read once per step, KV per sequence
    p = prefill(s, 131072, 1, h100)
    assert p["weights"]["bound"] == "compute" and p["attention"]["bound"] == "compute"
    attn = costs.prefill_flops(s, 131072) - 131072 * costs.forward_flops_per_token(s, 0)["time_invariant"]
    assert p["attention"]["flops"] == pytest.approx(attn)


def test_max_batch_and_context_fill_memory_exactly():
    s = paper_shape("470M", 8, 8)
    T = 16384
    b = int(max_batch(s, T, TOY))
    used = costs.inference_memory_bytes(s, T, b)["total"]
    assert used <= TOY.usable_memory_bytes < costs.inference_memory_bytes(s, T, b + 1)["total"]
    c = int(max_context(s, TOY))
    assert costs.inference_memory_bytes(s, c)["total"] <= TOY.usable_memory_bytes
    assert costs.inference_memory_bytes(s, c + 1)["total"] > TOY.usable_memory_bytes
    huge = Hardware(name="tiny", peak_flops=1e12, memory_bandwidth=1e11, memory_bytes=1e8)
    assert max_batch(s, T, huge) == 0 and max_context(s, huge) == 0


def test_training_uses_half_the_context():
    s = paper_shape("470M", 8, 1)
    tr = training_step(s, 8192, TOY, batch=2)
    tokens = 2 * 8192
    expect = 3 * tokens * 4 * s.layers * (8192 / 2) * s.n_heads * s.head_dim
    assert tr["attention"]["flops"] == pytest.approx(expect)
    total = tr["weights"]["flops"] + tr["attention"]["flops"]
    assert total == pytest.approx(costs.training_flops(s, tokens, 8192))
    assert tr["mean_context"] == 4096


def test_vectorised_over_real_shapes_matches_scalars():
    n = np.array([5e8, 1e9, 2e9])
    h = np.array([8.0, 16.0, 32.0])
    kv = np.array([1.0, 4.0, 8.0])
    grid = shape_for_params(n, h, kv)
    r = decode_step(grid, 65536, 2, "a100-80gb")
    for i in range(3):
        one = decode_step(shape_for_params(n[i], h[i], kv[i]), 65536, 2, "a100-80gb")
        assert r["seconds"][i] == pytest.approx(float(one["seconds"]))


def test_table5_direction_on_a800():
    a800 = get_hardware("a800")
    old, new = paper_shape("1.2B", 32, 8), paper_shape("1.8B", 8, 1)
    for fn in (
        lambda s: prefill(s, 131072, 1, a800),
        lambda s: decode_step(s, 131072, 1, a800),
        lambda s: training_step(s, 131072, a800),
    ):
        assert fn(new)["tokens_per_second"] > 1.5 * fn(old)["tokens_per_second"]


def test_objective_values_and_auto_batch():
    grid = shape_for_params(np.array([1e9, 1e9, 2e10]), np.array([32.0, 8.0, 64.0]), np.array([8.0, 1.0, 64.0]))
    lat = objective_values(grid, 131072, "latency", "h100-sxm", batch=1)
    thr = objective_values(grid, 131072, "throughput", "h100-sxm", batch="auto")
    z = objective_values(grid, 131072, "z", "h100-sxm")
    assert np.allclose(lat["value"][:2], lat["seconds_per_token"][:2])
    assert lat["value"][1] < lat["value"][0]  # fewer KV heads: less to read per token
    assert np.all(thr["batch"][:2] == thr["max_batch"][:2]) and np.all(thr["batch"][:2] >= 1)
    assert np.allclose(thr["value"][:2], 1 / thr["tokens_per_second"][:2])
    assert not thr["fits"][2] and np.isinf(thr["value"][2])  # 20B MHA at 128K does not fit one H100
    expect_z = costs.z_cost(costs.z_memory(grid, 131072, 1), costs.inference_flops_per_token(grid, 131072))
    assert np.allclose(z["value"], expect_z)
    with pytest.raises(CogqaError, match="--objective"):
        objective_values(grid, 8192, "speed", "h100-sxm")


def test_pareto_front():
    loss = [1.0, 2.0, 1.5, 1.0, np.nan, 3.0]
    mem = [5.0, 1.0, 2.0, 5.0, 0.1, 1.0]
    assert pareto_front(loss, mem).tolist() == [True, True, True, True, False, False]
    assert pareto_front([1, 2, 3]).tolist() == [True, False, False]


def test_summary_json_ready():
    r = serving_summary(paper_shape("470M", 8, 1), 131072, "h100-sxm", batch="auto", train_context=8192)
    json.dumps(r)
    assert r["fits"] and r["batch"] == r["max_batch"] and r["training"]["mean_context"] == 4096
    assert r["decode"]["phases"]["attention"]["bound"] == "memory"


def test_cli_serving_and_hardware(capsys, tmp_path):
    from cogqa.cli import main

    assert (
        main(
            [
                "serving",
                "--size",
                "470M",
                "--heads",
                "8",
                "--kv-heads",
                "1",
                "--hardware",
                "h100-sxm",
                "--context",
                "8k,128k",
                "--batch",
                "auto",
                "--train-context",
                "8k",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "time per output token" in out and "tokens/s per device" in out and "memory" in out
    assert (
        main(
            [
                "serving",
                "--hf-config",
                "tests/data/llama-3.2-1b-config.json",
                "--hardware",
                "a800",
                "--context",
                "128k",
                "--json",
                "--bandwidth-efficiency",
                "0.5",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["hardware"]["bandwidth_efficiency"] == 0.5 and data["rows"][0]["decode"]["tokens_per_second"] > 0
    assert main(["hardware", "list"]) == 0
    assert "mi300x" in capsys.readouterr().out
    assert main(["hardware", "show", "h100-pcie"]) == 0
    assert "source of peak_flops" in capsys.readouterr().out
    for argv, msg in (
        (["--batch", "0"], "--batch"),
        (["--hardware", str(tmp_path / "x.json")], "is not a file"),
        (["--matmul-efficiency", "2"], "matmul_efficiency"),
    ):
        base = ["serving", "--size", "470M", "--hardware", "h100-sxm"]
        assert main(base + argv) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1


def test_local_terms_attention_bandwidth_and_kernel_overhead():
    from cogqa.serving import KERNELS_PER_LAYER, KERNELS_PER_PASS

    s = paper_shape("470M", 8, 1)
    T = 32768
    base = decode_step(s, T, 1, TOY)
    hw = TOY.with_overrides(attention_bandwidth_efficiency=0.2, kernel_overhead_seconds=2e-6)
    r = decode_step(s, T, 1, hw)
    overhead = 2e-6 * (KERNELS_PER_LAYER * s.layers + KERNELS_PER_PASS)
    assert r["overhead_seconds"] == pytest.approx(overhead)
    assert r["attention"]["memory_seconds"] == pytest.approx(base["attention"]["memory_seconds"] * 0.8 / 0.2)
    assert r["seconds"] == pytest.approx(r["weights"]["seconds"] + r["attention"]["seconds"] + overhead)
    assert base["overhead_seconds"] == 0


def test_fused_cpu_decode_step_costs_its_measured_fixed_time_where_it_runs():
    from cogqa import decode_kernel, serving
    from cogqa.serving import KERNELS_PER_LAYER, KERNELS_PER_PASS, decode_overhead_seconds

    # the limits agree with the kernel's own
    assert serving.FUSED_STEP_MIN_HIDDEN == decode_kernel.MIN_NORM_SIZE
    assert serving.FUSED_STEP_MAX_GROUP == decode_kernel.MAX_STEP_GROUP
    assert serving.FUSED_STEP_MAX_HEAD_DIM == decode_kernel.MAX_HEAD_DIM
    hw = TOY.with_overrides(kernel_overhead_seconds=2e-6, fused_step_seconds=1.5e-4)
    s = paper_shape("470M", 8, 1)
    per_kernel = 2e-6 * (KERNELS_PER_LAYER * s.layers + KERNELS_PER_PASS)
    assert decode_step(s, 4096, 1, hw, "fp32", "fp32")["overhead_seconds"] == pytest.approx(1.5e-4)
    for batch, wd, kd in ((2, "fp32", "fp32"), (1, "bf16", "bf16"), (1, "fp32", "bf16")):  # not what it takes
        assert decode_step(s, 4096, batch, hw, wd, kd)["overhead_seconds"] == pytest.approx(per_kernel)
    assert decode_step(s, 4096, 1, TOY.with_overrides(kernel_overhead_seconds=2e-6), "fp32", "fp32")[
        "overhead_seconds"
    ] == pytest.approx(per_kernel)  # a profile that did not measure the fused step
    # vectorised over shapes: hidden below 256 or more than 16 query rows per K/V head keep the per-kernel cost
    shapes = shape_for_params(np.array([4.7e8, 4.7e8, 1e6]), np.array([8, 64, 8]), np.array([1, 2, 1]))
    got = decode_overhead_seconds(shapes, 1, hw, "fp32", "fp32")
    assert shapes.hidden_size[2] < 256
    expected = 2e-6 * (KERNELS_PER_LAYER * shapes.layers + KERNELS_PER_PASS)
    assert got == pytest.approx([1.5e-4, expected[1], expected[2]])
    with pytest.raises(CogqaError, match="fused_step_seconds"):
        TOY.with_overrides(fused_step_seconds=-1.0)


def test_kernel_shape_curves_give_each_matrix_and_group_its_own_bandwidth():
    from cogqa.serving import weight_matrices

    s = paper_shape("470M", 8, 2)
    d, f, V, dh = s.hidden_size, s.ffn_size, s.vocab_size, s.head_dim
    parts = weight_matrices(s, "fp32")
    assert sum(float(b) for *_, b in parts.values()) == pytest.approx(float(costs.params_total(s) * 4))
    assert [(float(r), float(c)) for r, c, _ in parts.values()] == [
        (8 * dh, d),
        (2 * dh, d),
        (d, 8 * dh),
        (f, d),
        (d, f),
        (V, d),
    ]
    assert float(parts["down"][2]) == pytest.approx(s.layers * f * d * 4)
    assert float(parts["kv"][2]) == pytest.approx(s.layers * 2 * 2 * dh * d * 4)
    # a grid whose efficiency depends only on the rows: 0.25 at <= 256 rows, 0.5 at >= 4096 (linear in log2)
    grid = {f"{r}x{c}": e for r, e in ((256, 0.25), (4096, 0.5)) for c in (256, 4096)}
    hw = TOY.with_overrides(gemv_efficiency_by_shape=grid, attention_efficiency_by_group={1: 0.4, 4: 0.1})

    def eff(rows):
        return float(np.interp(np.log2(rows), [8, 12], [0.25, 0.5]))

    T = 4096
    r = decode_step(s, T, 1, hw, "fp32", "fp32")
    expect_w = sum(float(b) / (1e11 * eff(float(rows))) for rows, _, b in parts.values())
    kv = T * costs.kv_cache_bytes_per_token(s, "fp32")
    assert r["weights"]["memory_seconds"] == pytest.approx(expect_w)
    assert r["attention"]["memory_seconds"] == pytest.approx(kv / (1e11 * 0.1))
    # without curves the same profile streams everything at bandwidth_efficiency 0.8
    plain = decode_step(s, T, 1, TOY, "fp32", "fp32")
    assert plain["weights"]["memory_seconds"] == pytest.approx(float(costs.params_total(s)) * 4 / 0.8e11)
