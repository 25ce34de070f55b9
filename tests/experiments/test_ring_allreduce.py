"""experiments/ring_allreduce.py: the bytes each ring sends, counted from compiled HLO, and the quick run."""

import pytest

from experiments import ring_allreduce
from research.tools.hlo_collectives import collective_bytes
from tests.experiments.quick import run_quick


def test_ring_sends_two_p_minus_one_over_p_of_the_buffer():
    """Counted from the compiled HLO: 2(p−1) collective-permutes of N/p bytes per device."""
    for p, bidirectional in [(4, False), (8, True)]:
        nbytes = 4 * 1024 * p
        hlo = ring_allreduce.compiled_hlo("ring_bidirectional" if bidirectional else "ring", p, nbytes)
        assert collective_bytes(hlo)["collective-permute"] == 2 * (p - 1) * nbytes // p
        assert hlo.count("collective-permute(") == 2 * (p - 1) * (2 if bidirectional else 1)


def test_too_few_devices_name_the_flag():
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        ring_allreduce.checked_device_counts((2, 1024))


def test_quick_run_counts_exact_ring_bytes_and_times_every_method(tmp_path):
    report, outcome = run_quick("ring_allreduce", tmp_path)
    assert [row["p"] for row in outcome.rows] == list(ring_allreduce.QUICK["device_counts"])
    assert all(row["ring_bytes"] == row["ring_formula_bytes"] == row["bidirectional_bytes"] for row in outcome.rows)
    assert all(row[f"measured_{method}_s"] > 0 for row in outcome.rows for method in ring_allreduce.METHODS)
    assert outcome.headline["ring_bytes_per_n"] == 2 * (4 - 1) / 4 and outcome.headline["naive_over_ring"] == 4 / 2
    assert {v["status"] for v in report["verdicts"].values()} == {"holds"}
    assert "counted from HLO" in outcome.markdown and "indicative of this CPU only" in outcome.markdown
