"""TensorRT inside verify-parity and bench (end to end with TensorRT and a GPU)."""

from __future__ import annotations

from karst_deploy.backends.tensorrt import BuildOptions, build_engine
from tests.backends.tensorrt.needs import needs_tensorrt_gpu
from tests.cli_helpers import run_cli


def test_bench_refuses_tensorrt_flags_for_other_runners(tmp_path):
    result = run_cli(
        "bench", "--onnx", tmp_path / "m.onnx", "--baseline", tmp_path / "b.onnx",
        "--runner", "onnxruntime", "--cuda-graph",
    )  # fmt: skip
    assert result.returncode == 2 and "--runner tensorrt only" in result.stderr


@needs_tensorrt_gpu
def test_parity_and_bench_with_a_tensorrt_engine(tmp_path):
    from karst_deploy.bench import bench
    from karst_deploy.export import export_onnx
    from karst_deploy.parity import verify_parity
    from tests.export.artifacts import export_base, save_adapter

    adapter = save_adapter(tmp_path / "adapter", "karst-channel")
    merged = export_onnx(tmp_path / "merged.onnx", adapter=adapter).path
    engine = tmp_path / "merged.engine"
    build_engine(merged, engine, BuildOptions(), progress=False)
    report = verify_parity(merged, adapter, engine=engine, samples=8, progress=False)
    assert report.passed and report.stages[-1].name == "tensorrt"

    base = export_base(tmp_path / "base.onnx").path
    result = bench(
        {"base": base, "merged": merged},
        baseline="base",
        candidate="merged",
        runner="tensorrt",
        rounds=3,
        warmup=1,
        progress=False,
        runner_options={"copies": False, "cuda_graph": True},
    )
    assert (
        result.runners["merged"]["copies"] is False and result.latency["merged"]["8"].median_ms > 0
    )
