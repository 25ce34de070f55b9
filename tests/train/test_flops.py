"""research/train/flops.py: FLOPs per token and peak FLOP/s for MFU."""

import types

import pytest

from research import config as config_lib
from research.models import count_params
from research.train import flops


def test_flops_per_token_is_six_n_plus_causal_attention():
    model = config_lib.load("configs/llama2.py:7b").model
    n = count_params(model)["total"] - model.vocab_size * model.dim
    expected = 6 * n + 6 * 32 * 4096 * 4096  # 12·L·d·S, halved by the causal mask
    assert flops.flops_per_token(model, 4096, n) == expected
    assert flops.flops_per_token(model, 4096, n, causal=False) == 6 * n + 12 * 32 * 4096 * 4096


@pytest.mark.parametrize("kind, peak", [("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v4", 275e12),
                                        ("NVIDIA H100 80GB HBM3", 989e12), ("TPU v6 lite", 918e12)])
def test_known_chips_have_their_datasheet_peak(kind, peak):
    assert flops.peak_flops_of(types.SimpleNamespace(device_kind=kind)) == peak


def test_unknown_chips_fall_back_and_configured_peak_wins():
    assert flops.peak_flops_of(types.SimpleNamespace(device_kind="cpu")) is None
    assert flops.total_peak_flops(1e12) == 1e12 * 8  # 8 fake devices
    assert flops.measured_matmul_flops(size=128, repeats=2) > 1e6
