import json

import pytest
from conftest import ideal_hardware

from cogqa import hardware as hwmod
from cogqa.errors import CogqaError
from cogqa.hardware import builtin_profiles, get_hardware, hardware_from_dict, load_profile_file

REQUIRED = ("a100-40gb", "a100-80gb", "a800-80gb", "h100-sxm", "h100-pcie", "h200", "l40s", "rtx-4090", "mi300x")


def test_builtin_profiles_have_sources_and_sane_numbers():
    profiles = builtin_profiles()
    assert set(REQUIRED) <= set(profiles)
    for hw in profiles.values():
        for key in ("peak_flops", "memory_bandwidth", "memory_bytes", "matmul_efficiency"):
            assert hw.sources.get(key), f"{hw.name}: no source for {key}"
        assert 1e14 < hw.peak_flops < 2e15 and 5e11 < hw.memory_bandwidth < 6e12 and 2e10 < hw.memory_bytes < 3e11
    h100 = profiles["h100-sxm"]
    assert h100.peak_flops == 989.4e12 and h100.memory_bandwidth == 3.35e12 and h100.memory_bytes == 80 * 2**30
    assert h100.matmul_flops == pytest.approx(989.4e12 * 0.801)
    assert profiles["a800-80gb"].unconfirmed  # said so in the file
    names = [a for hw in profiles.values() for a in (hw.name, *hw.aliases)]
    assert len(names) == len(set(names))


def test_get_hardware_by_alias_and_unknown_name():
    assert get_hardware("A800").name == "a800-80gb"
    assert get_hardware("h100").name == "h100-sxm"
    with pytest.raises(CogqaError, match="unknown profile 'tpu'.*h100-sxm"):
        get_hardware("tpu")


def test_user_profile_json_and_yaml_with_units(tmp_path):
    j = tmp_path / "my.json"
    j.write_text(
        json.dumps(
            {
                "name": "mygpu",
                "peak_flops": "100T",
                "memory_bandwidth": "1TB",
                "memory_bytes": "16GiB",
                "bandwidth_efficiency": 0.9,
            }
        )
    )
    hw = get_hardware(str(j))
    assert (hw.peak_flops, hw.memory_bandwidth, hw.memory_bytes) == (100e12, 1e12, 16 * 2**30)
    assert hw.bandwidth == pytest.approx(0.9e12)
    y = tmp_path / "my.yaml"
    y.write_text("name: y\npeak_flops: 5e13\nmemory_bandwidth: 5e11\nmemory_bytes: 8GB\n")
    assert load_profile_file(y).memory_bytes == 8e9


@pytest.mark.parametrize(
    "data, match",
    [
        ({"name": "x", "peak_flops": 1e12, "memory_bandwidth": 1e11}, "missing field.*memory_bytes"),
        (
            {"name": "x", "peak_flops": 1e12, "memory_bandwidth": 1e11, "memory_bytes": 1e9, "tflops": 3},
            "unknown field.*tflops",
        ),
        (
            {"name": "x", "peak_flops": "lots", "memory_bandwidth": 1e11, "memory_bytes": 1e9},
            "'peak_flops' must be a positive",
        ),
        (
            {"name": "x", "peak_flops": 1e12, "memory_bandwidth": 1e11, "memory_bytes": 1e9, "matmul_efficiency": 1.5},
            "'matmul_efficiency' must be a fraction",
        ),
        (
            {"name": "x", "peak_flops": -1, "memory_bandwidth": 1e11, "memory_bytes": 1e9},
            "'peak_flops' must be a positive",
        ),
    ],
)
def test_bad_profiles_one_line_errors(data, match):
    with pytest.raises(CogqaError, match=match) as exc:
        hardware_from_dict(data, where="p.json")
    assert "\n" not in str(exc.value)


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(CogqaError, match="not valid JSON"):
        get_hardware(str(bad))
    with pytest.raises(CogqaError, match="is not a file"):
        get_hardware(str(tmp_path / "none.json"))


def test_overrides_validated():
    hw = get_hardware("h100-sxm").with_overrides(bandwidth_efficiency=0.5, matmul_efficiency=None)
    assert hw.bandwidth == pytest.approx(3.35e12 * 0.5) and hw.matmul_efficiency == 0.801
    with pytest.raises(CogqaError, match="bandwidth_efficiency"):
        hw.with_overrides(bandwidth_efficiency=0)


def test_measurements_are_positive():
    assert hwmod.measure_matmul_flops("cpu", "fp32", size=64, seconds=0.01) > 0
    assert hwmod.measure_copy_bandwidth("cpu", nbytes=1 << 20, seconds=0.01) > 0


def test_local_profile_cached_and_remeasured(tmp_path, monkeypatch):
    monkeypatch.setenv("COGQA_CACHE_DIR", str(tmp_path))
    calls = []

    def fake(device, dtype, seconds=1.0):
        calls.append((device, dtype))
        return ideal_hardware(
            "local",
            1e11 * len(calls),
            2e10,
            8e9,
            bandwidth_efficiency=0.5,
            kernel_overhead_seconds=1e-6,
            gemv_efficiency_by_shape={"1024x1024": 0.5},
            attention_efficiency_by_group={1: 0.4},
            dtype=dtype,
        )

    monkeypatch.setattr(hwmod, "measure_local", fake)
    cache = hwmod.local_cache_path("cpu")
    assert cache.parent == tmp_path and cache.name.startswith("hardware-local-cpu-fp32-")  # + thread count
    a = get_hardware("local:cpu")
    b = get_hardware("local:cpu")
    assert calls == [("cpu", "fp32")] and a == b and a.peak_flops == 1e11
    assert cache.exists()
    c = hwmod.local_profile("cpu", remeasure=True)
    assert c.peak_flops == 2e11 and len(calls) == 2
    cache.write_text("{broken")
    assert hwmod.local_profile("cpu").peak_flops == 3e11  # a damaged cache is measured again
    data = json.loads(cache.read_text())
    assert data["gemv_efficiency_by_shape"] == {"1024x1024": 0.5}
    assert hwmod.local_profile("cpu").gemv_efficiency_by_shape == {"1024x1024": 0.5} and len(calls) == 3
    data["gemv_efficiency_by_shape"] = None  # a cache from before the kernel-shape curves
    cache.write_text(json.dumps(data))
    assert hwmod.local_profile("cpu").peak_flops == 4e11
    data = json.loads(cache.read_text())
    del data["fused_step_seconds"]  # a cache from before the fused decode step was measured
    cache.write_text(json.dumps(data))
    assert hwmod.local_profile("cpu").peak_flops == 5e11


def test_kernel_shape_curves_interpolate_in_log2_and_validate():
    hw = get_hardware("h100-sxm")
    assert hw.gemv_efficiency_by_shape is None  # datasheet: one bandwidth for every matrix
    assert hw.gemv_bandwidth(256, 1024) == pytest.approx(hw.bandwidth)
    assert hw.attention_bandwidth_at(8) == pytest.approx(hw.attention_bandwidth)
    grid = {"4096x1024": 0.8, "1024x1024": 0.4, "1024x4096": 0.2, "4096x4096": 1.0}
    hw2 = hw.with_overrides(gemv_efficiency_by_shape=grid, attention_efficiency_by_group={"4": 0.2, "1": 0.5})
    assert list(hw2.gemv_efficiency_by_shape) == ["1024x1024", "1024x4096", "4096x1024", "4096x4096"]  # sorted
    assert list(hw2.attention_efficiency_by_group) == [1, 4]  # integer keys, sorted
    bw = hw.memory_bandwidth
    # 2048 is half way between 1024 and 4096 in log2: rows 2048 x cols 1024 -> (0.4 + 0.8) / 2
    assert hw2.gemv_bandwidth(2048, 1024) == pytest.approx(0.6 * bw)
    # the centre of the grid: the mean of the four corners
    assert hw2.gemv_bandwidth(2048, 2048) == pytest.approx((0.4 + 0.8 + 0.2 + 1.0) / 4 * bw)
    # held beyond the grid, and vectorised
    assert hw2.gemv_bandwidth([16, 65536], [1024, 1]) == pytest.approx([0.4 * bw, 0.8 * bw])
    assert hw2.attention_bandwidth_at(2) == pytest.approx(0.35 * bw)  # half way between 1 and 4 in log2
    assert hw2.attention_bandwidth_at(16) == pytest.approx(0.2 * bw)
    back = hardware_from_dict(json.loads(json.dumps(hw2.to_dict())))
    assert back.gemv_efficiency_by_shape == hw2.gemv_efficiency_by_shape
    single = hw.with_overrides(gemv_efficiency_by_shape={"1024x1024": 0.5})  # one point: constant
    assert single.gemv_bandwidth([1, 5000], [300, 9]) == pytest.approx([0.5 * bw, 0.5 * bw])
    for bad in ({"1024": 0.5}, {"1024x1024": 1.5}, {"0x4": 0.5}, {"1024x1024": "fast"}, [0.5], {}):
        with pytest.raises(CogqaError, match="gemv_efficiency_by_shape") as e:
            hw.with_overrides(gemv_efficiency_by_shape=bad)
        assert "\n" not in str(e.value)
    with pytest.raises(CogqaError, match="lacks 1024x4096"):  # not a full grid
        hw.with_overrides(gemv_efficiency_by_shape={"1024x1024": 0.5, "4096x4096": 0.5})
    for bad in ({"1e3": 0.5}, {"4": 1.5}, {"0": 0.5}):
        with pytest.raises(CogqaError, match="attention_efficiency_by_group"):
            hw.with_overrides(attention_efficiency_by_group=bad)


def test_attention_bandwidth_and_kernel_overhead_fields():
    hw = get_hardware("h100-sxm")
    assert hw.kernel_overhead_seconds == 0 and hw.attention_bandwidth == pytest.approx(hw.bandwidth)
    hw2 = hw.with_overrides(attention_bandwidth_efficiency=0.4, kernel_overhead_seconds=5e-6)
    assert hw2.attention_bandwidth == pytest.approx(hw.memory_bandwidth * 0.4)
    assert hardware_from_dict(hw2.to_dict()) == hw2
    with pytest.raises(CogqaError, match="attention_bandwidth_efficiency"):
        hw.with_overrides(attention_bandwidth_efficiency=1.5)
    with pytest.raises(CogqaError, match="kernel_overhead_seconds"):
        hw.with_overrides(kernel_overhead_seconds=-1.0)


def test_local_terms_measured_positive():
    assert hwmod.measure_decode_attention("cpu", "fp32", nbytes=1 << 20, seconds=0.01, group=4) > 0
    gemv = hwmod.measure_gemv_grid("cpu", "fp32", sides=(64, 256), nbytes=1 << 20, seconds=0.01, bandwidth=1e9)
    attn = hwmod.measure_attention_curve("cpu", "fp32", groups=(1, 4), nbytes=1 << 20, seconds=0.01, bandwidth=1e9)
    assert list(gemv) == ["64x64", "64x256", "256x64", "256x256"] and list(attn) == [1, 4]
    assert all(0 < v <= 1 for v in [*gemv.values(), *attn.values()])
    assert 0 < hwmod.measure_kernel_overhead("cpu", seconds=0.01) < 1e-2


def test_fused_step_seconds_measured_where_the_fused_step_runs(monkeypatch):
    pytest.importorskip("numba")
    from cogqa import decode_kernel

    seconds = hwmod.measure_fused_step_seconds("cpu", seconds=0.05, bandwidth=1e10)
    assert seconds is not None and 0 <= seconds < 0.05
    assert hwmod.measure_fused_step_seconds("cuda") is None
    monkeypatch.setattr(decode_kernel, "ENABLED", False)
    assert hwmod.measure_fused_step_seconds("cpu", seconds=0.01) is None
    hw = get_hardware("h100-sxm")
    assert hw.fused_step_seconds is None
    assert hardware_from_dict(hw.with_overrides(fused_step_seconds=2e-4).to_dict()).fused_step_seconds == 2e-4


def test_hardware_show_prints_measurements_with_units():
    from cogqa.cli.serving import _measured_item

    assert _measured_item("copy_bandwidth", 42.2e9) == "copy_bandwidth=42.2 GB/s"
    assert _measured_item("time_unix", 0.0) == "measured at 1970-01-01 00:00 UTC"
    assert _measured_item("threads", 2) == "threads=2"
