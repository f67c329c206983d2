"""The benchmark scripts still import against the package (they are run by hand, never timed in tests)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))  # as `python benchmarks/X.py` has it: scripts share build helpers
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs the imports and definitions, not main()
    assert callable(module.main)


@pytest.mark.slow  # compiles flex_attention kernels
def test_the_gpu_script_runs_its_code_paths_on_the_cpu_and_refuses_without_cuda(monkeypatch, capsys):
    """`gpu.py --dry`: every row of the GPU table at tiny sizes on the CPU; without --dry and without CUDA it stops."""
    benchmarks = Path(__file__).parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    spec = importlib.util.spec_from_file_location("gpu", benchmarks / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu.main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert gpu.main(["--dry"]) == 0
    table = capsys.readouterr().out
    for row in ("anomaly test 64 px fp32", "anomaly test 64 px bf16", "stage-1 step", "stage-2 step", "deploy:",
                "llava alternating_cross mask"):  # fmt: skip
        assert row in table, row
    assert table.count("flex_attention") == 4 and "images/s" in table
