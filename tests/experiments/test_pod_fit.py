"""experiments/pod_fit.py: the quick run compiles the tiny LLaMA's step for v5p ahead of time and tabulates its fit."""

import math

from experiments import pod_fit
from tests.experiments.quick import run_quick


def test_labels_become_headline_names():
    assert pod_fit.slug("LLaMA-2 7B") == "llama_2_7b"
    assert pod_fit.slug("Seed-Thinking-v1.5 MoE") == "seed_thinking_v1_5_moe"


def test_quick_run_finds_the_tiny_steps_smallest_v5p_slice(tmp_path):
    report, outcome = run_quick("pod_fit", tmp_path)
    [fit] = outcome.rows
    assert fit["model"] == "LLaMA tiny" and fit["generation"] == "v5p" and fit["slice"].startswith("v5p-")
    assert outcome.headline["chips_llama_tiny_v5p"] == fit["chips"] == outcome.headline["llama_v5p_largest_chips"]
    assert outcome.headline["llama_v5p_fit_share"] == 1.0 and 0 < fit["hbm_total_gib"] < 95
    assert 0 < fit["mfu_with_ici"] <= 1 and not math.isnan(fit["mfu_with_ici"])
    assert report["verdicts"]["fit"]["status"] == "holds"
    assert "| LLaMA tiny | v5p | v5p-" in outcome.markdown and "## Every compile tried" in outcome.markdown
    assert list((tmp_path / "work" / "pod_fit" / "seed_0" / "cache").glob("*.json"))  # compiles cached in the run
