"""scripts/bench_grouped_matmul.py: a smoke run on small shapes, the group sizes, and its argument checks."""

import numpy as np
import pytest

from scripts import bench_grouped_matmul as bench


def test_group_sizes_cover_every_row_and_every_expert_gets_some():
    sizes = bench.group_sizes(rows=4096, experts=8)
    assert sizes.sum() == 4096 and sizes.dtype == np.int32
    assert np.all(sizes > 4096 / 8 / 2)


def test_writes_the_table_and_the_ratios_to_the_dense_matmul(tmp_path):
    out = tmp_path / "grouped.md"
    bench.main(["--tokens", "64", "--dim", "32", "--hidden", "16", "--experts", "4", "--top-k", "2",
                "--repeats", "1", "--out", str(out)])
    report = out.read_text()
    for impl in ("dense", "ragged_dot", "capacity"):
        assert f"| 4 | 2 | {impl} | " in report
    assert "## Time relative to the dense matmul" in report and "Hardware: **" in report


@pytest.mark.parametrize("argv, message", [
    (["--experts", "8", "64", "--top-k", "2"], "must pair up"),
    (["--experts", "4", "--top-k", "5"], "between 1 and --experts 4"),
    (["--tokens", "0"], "--tokens must be positive"),
])
def test_bad_arguments_exit_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err
