"""scripts/bench_generate.py: a toy-shape run prints the project's and transformers' decoding figures and
their ratio per batch size, and the load before and after (no speed is asserted)."""

import re

from scripts import bench_generate

TOY = ["model.dim=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1", "model.hidden_dim=64",
       "model.vocab_size=128"]


def test_prints_both_figures_and_their_ratio_per_batch(capsys):
    results = bench_generate.main(["--shape", "tiny (d256 L4 h4 kv2)", "--override", *TOY, "--batch", "1", "2",
                                   "--prompt", "4", "--new", "3", "--repeats", "1"])
    out = capsys.readouterr().out
    for batch in (1, 2):
        line = next(line for line in out.splitlines() if f"batch {batch}:" in line)
        project, reference, ratio = map(float, re.search(
            r"project\s+(\d+) tok/s\s+transformers\s+(\d+) tok/s\s+ratio ([\d.]+)x", line).groups())
        result = results["tiny (d256 L4 h4 kv2)", batch]
        assert project > 0 and reference > 0
        assert abs(ratio - result["project"] / result["transformers"]) < 0.01 + 0.01 * ratio
    assert re.search(r"load before: \d+\.\d+ \d+\.\d+ \d+\.\d+", out)
    assert re.search(r"load after: \d+\.\d+ \d+\.\d+ \d+\.\d+", out)
