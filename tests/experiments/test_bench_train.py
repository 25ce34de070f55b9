"""scripts/bench_train.py: a toy-shape run prints the project's and PyTorch's figures, their ratio, MFU
and the load before and after (no speed is asserted)."""

import re

from scripts import bench_train

TOY = ["model.dim=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1", "model.hidden_dim=64",
       "model.vocab_size=128"]


def test_prints_both_figures_and_their_ratio_from_one_run(capsys):
    results = bench_train.main(["--shape", "tiny (d256 L4 h4 kv2)", "--override", *TOY, "--batch", "2",
                                "--seq", "16", "--steps", "1", "--repeats", "2", "--peak-size", "256"])
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("tiny (d256 L4 h4 kv2)") and "ratio" in line)
    project, pytorch, ratio = map(float, re.search(
        r"project\s+(\d+) tok/s\s+PyTorch\s+(\d+) tok/s\s+ratio ([\d.]+)x", line).groups())
    result = results["tiny (d256 L4 h4 kv2)"]
    assert project > 0 and pytorch > 0 and abs(ratio - result["project"] / result["pytorch"]) < 0.01 + 0.01 * ratio
    assert 0 < result["mfu"]["project"] and 0 < result["mfu"]["pytorch"]
    assert "MFU project" in out and "matmul peak" in out and "GFLOP/s" in out
    assert re.search(r"load before: \d+\.\d+ \d+\.\d+ \d+\.\d+", out)
    assert re.search(r"load after: \d+\.\d+ \d+\.\d+ \d+\.\d+", out)


def test_model_flops_grow_with_the_batch():
    config = bench_train.shape_config("tiny (d256 L4 h4 kv2)", TOY)
    one, two = (bench_train.model_flops_per_step(config, batch, 16) for batch in (1, 2))
    assert one > 0 and abs(two - 2 * one) < 1e-6 * two
