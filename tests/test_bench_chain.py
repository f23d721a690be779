"""bench/chain.py's analysis (exponent fit, linearity, projection, all-reduce), bench/gpu_merge.py, and
the report's scaling figure, against analytic cases."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from batterytwin.errors import InputError
from batterytwin.report.scaling import latest_bench, plot_scaling

from .conftest import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


chain = _load("chain")
gpu_merge = _load("gpu_merge")
EDGES = (64, 128, 256, 512)


def _stages(cost_exp: float, rss: dict[int, float], c: float = 3e-6, name: str = "denoise") -> dict:
    """One volume stage whose wall time is c * n ** cost_exp, plus a fixed-cost stage."""
    sizes = {str(e): {"voxels": e ** 3, "wall_s": c * (e ** 3) ** cost_exp, "peak_rss_mb": rss[e],
                      "cpu_s": 1.5 * c * (e ** 3) ** cost_exp + 2.0 * (e == 64), "bytes_written": 4 * e ** 3}
             for e in EDGES}
    fixed = {str(e): {"voxels": e ** 3, "wall_s": 12.0, "peak_rss_mb": 300.0, "bytes_written": 10} for e in EDGES}
    return {name: {"sizes": sizes}, "simulate": {"sizes": fixed}}


@pytest.mark.parametrize("p", [1.0, 1.5, 0.0, 0.7])
def test_exponent_of_a_power_law(p):
    n = [e ** 3 for e in EDGES]
    assert chain.fit_exponent(n, [2.5 * v ** p for v in n]) == pytest.approx(p, abs=1e-9)


def test_exponent_ignores_missing_points_and_needs_two():
    assert chain.fit_exponent([8, 64, 512], [1.0, None, 8.0]) == pytest.approx(0.5)  # 512 = 8 * 64, 8 = 64 ** 0.5
    assert chain.fit_exponent([8], [1.0]) is None


def test_linear_ratio():
    assert chain.linear_ratio(128 ** 3, 1.0, 512 ** 3, 64.0) == pytest.approx(1.0)
    # n log n from 128^3 to 512^3: ratio log(512^3) / log(128^3) = 9 / 7
    n0, n1 = 128 ** 3, 512 ** 3
    assert chain.linear_ratio(n0, n0 * math.log(n0), n1, n1 * math.log(n1)) == pytest.approx(9 / 7)


def test_analyse_linear_stage_with_flat_memory():
    st = chain.analyse(_stages(1.0, {64: 200, 128: 300, 256: 800, 512: 820}), fit_from=128)
    d = st["denoise"]
    assert d["exponent"] == pytest.approx(1.0)
    assert d["cost_vs_linear"] == {"from": 128, "to": 512, "ratio": pytest.approx(1.0), "cpu_ratio": pytest.approx(1.0)}
    assert d["rss_ratio"]["ratio"] == pytest.approx(820 / 800)
    assert d["goals"] == {"cost_within_1.2x_linear": True, "rss_within_1.5x": True}
    assert st["simulate"]["exponent"] is None  # not a volume stage: fixed cost, no fit


def test_analyse_flags_superlinear_cost_and_growing_memory():
    rss = {e: 0.5 * e ** 3 / 2 ** 20 for e in EDGES}  # grows with the volume
    d = chain.analyse(_stages(1.2, rss), fit_from=128)["denoise"]
    assert d["exponent"] == pytest.approx(1.2)
    assert d["cpu_exponent"] == pytest.approx(1.2)  # 64^3 (start-up cost) is left out of the fit
    assert d["memory_exponent"] == pytest.approx(1.0)
    assert d["cost_vs_linear"]["ratio"] == pytest.approx(64 ** 0.2)  # 8^3 more voxels, ^0.2 beyond linear
    assert d["rss_ratio"]["ratio"] == pytest.approx(8.0)
    assert d["goals"] == {"cost_within_1.2x_linear": False, "rss_within_1.5x": False}


def test_projection_of_a_linear_sharded_stage():
    st = chain.analyse(_stages(1.0, {64: 200, 128: 300, 256: 800, 512: 820}), fit_from=128)
    frame = (2048, 2560, 2560)
    n = math.prod(frame)
    proj = chain.project(st, frame=frame, nodes=(1, 16), gpus_per_node=4, param_count=1_000_000)
    assert proj["frame_voxels"] == n
    one, many = proj["targets"]["1x4"], proj["targets"]["16x4"]
    serial = 3e-6 * n  # the analytic cost at the frame's size
    assert one["stages"]["denoise"]["cpu_derived_time_s"] == pytest.approx(serial / 4)
    assert many["stages"]["denoise"]["cpu_derived_time_s"] == pytest.approx(serial / 64)
    assert one["stages"]["denoise"]["peak_rss_mb_per_rank"] == 820  # flat: the largest size's
    assert one["stages"]["denoise"]["bytes_written"] == pytest.approx(4 * n)
    assert one["stages"]["denoise"]["gpu_time_s"] is None  # no GPU figure: not measured
    assert one["stages"]["denoise"]["gpu_mvoxel_per_s"] == "not measured"
    assert "simulate" not in one["stages"]
    gpu = chain.project(st, frame=frame, gpu={"denoise": 1000.0})["targets"]["1x4"]["stages"]["denoise"]
    assert gpu["gpu_time_s"] == pytest.approx(n / (1e9 * 4))


def test_projection_of_growing_memory():
    """A whole-volume stage whose memory grows keeps growing; a shard-parallel one is held at one shard."""
    rss = {e: 0.5 * e ** 3 / 2 ** 20 for e in EDGES}
    frame = (1024, 1024, 1024)
    st = chain.analyse(_stages(1.0, rss, name="microstructure"), fit_from=128)
    rec = chain.project(st, frame=frame)["targets"]["1x4"]["stages"]["microstructure"]
    assert not rec["memory_flat"]
    assert rec["peak_rss_mb_per_rank"] == pytest.approx(0.5 * 1024 ** 3 / 2 ** 20)
    st = chain.analyse(_stages(1.0, rss), fit_from=128)
    rec = chain.project(st, frame=frame, shard=256)["targets"]["1x4"]["stages"]["denoise"]
    assert rec["memory_flat"] and rec["peak_rss_mb_per_rank"] == rss[512]
    rec = chain.project(st, frame=frame, shard=1024)["targets"]["1x4"]["stages"]["denoise"]
    assert not rec["memory_flat"]  # no measured size holds a whole shard: no claim


def test_allreduce_volume_and_time():
    bw = {"intra_node_nvlink_per_gpu": 400.0, "inter_node_per_gpu": 20.0}
    one = chain.allreduce_s(10_000_000, 4, 4, bw)
    assert one["bytes_per_gpu"] == 2 * 4 * 10_000_000
    assert one["time_s"] == pytest.approx(8e7 * 0.75 / 400e9)
    many = chain.allreduce_s(10_000_000, 64, 4, bw)
    assert many["link"] == "inter-node network"
    assert many["time_s"] == pytest.approx(8e7 * 63 / 64 / 20e9)
    assert chain.allreduce_s(10, 1, 4, bw)["time_s"] == 0.0


def test_gpu_merge_chain_rates():
    doc = {"stages": {"denoise": {"sizes": {"64": {"voxels_per_s": 1e6}, "256": {"voxels_per_s": 5e8}}}}}
    assert gpu_merge.chain_rates(doc) == {"denoise": pytest.approx(500.0)}


def test_gpu_merge_collects_steps(tmp_path):
    (tmp_path / "nlm.rc.json").write_text(json.dumps({"rc": 0, "wall_s": 3, "limit_s": 60}))
    (tmp_path / "nlm.json").write_text(json.dumps([{"mvoxel_per_s": 2.0}]))
    (tmp_path / "unet.log").write_text("a\nb\n")
    doc = gpu_merge.merge(tmp_path, "bash bench/gpu.sh")
    assert doc["steps"]["nlm"]["status"]["rc"] == 0 and doc["steps"]["nlm"]["result"][0]["mvoxel_per_s"] == 2.0
    assert doc["steps"]["unet"]["log_tail"] == ["a", "b"]
    assert doc["steps"]["walk"] == {"status": "not run"}
    assert doc["device"]["name"]


def test_latest_bench_by_date_and_none(tmp_path):
    assert latest_bench(tmp_path / "missing") is None
    assert latest_bench(tmp_path) is None
    for name in ("chain-cpu-2026-11-28.json", "chain-cpu-2026-12-01.json", "chain-cpu-x.json", "other.json"):
        (tmp_path / name).write_text("{}")
    assert latest_bench(tmp_path).name == "chain-cpu-2026-12-01.json"


def test_scaling_figure_draws_the_measured_points():
    st = chain.analyse(_stages(1.0, {64: 200, 128: 300, 256: 800, 512: 820}), fit_from=128)
    fig = plot_scaling({"stages": st, "host": {"cpus": 2}})
    line = fig.lines_by_stage["denoise"]
    np.testing.assert_allclose(line.get_xdata(), [e ** 3 for e in EDGES])
    np.testing.assert_allclose(line.get_ydata(), [3e-6 * e ** 3 for e in EDGES])
    assert "n^1.00" in line.get_label()
    assert fig.lines_by_stage["simulate"].get_label() == "simulate (fixed cost)"


def test_scaling_figure_refuses_a_foreign_json():
    with pytest.raises(InputError, match="no 'stages'"):
        plot_scaling({"rows": []}, "x.json")
    with pytest.raises(InputError, match="stages.a.sizes"):
        plot_scaling({"stages": {"a": {"sizes": {"1": {"voxels": 1}}}}}, "x.json")
