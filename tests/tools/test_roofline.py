"""research/tools/roofline.py: compute, HBM and ICI times, the bound that wins, MFU with and without ICI."""

import math

import pytest

from research.tools.roofline import Roofline


def roofline(ici_bytes: float, ici_bytes_per_s: float = 100.0) -> Roofline:
    """A chip of 10 FLOP/s and 50 B/s of HBM running 40 FLOPs (4 s) over 100 HBM bytes (2 s)."""
    return Roofline(flops=40.0, hbm_bytes=100.0, ici_bytes=ici_bytes, model_flops=30.0, peak_flops=10.0,
                    hbm_bytes_per_s=50.0, ici_bytes_per_s=ici_bytes_per_s)


def test_times_side_by_side_and_the_bound_that_wins():
    compute_bound = roofline(ici_bytes=300.0)
    assert compute_bound.times == {"compute": 4.0, "HBM": 2.0, "ICI": 3.0}
    assert compute_bound.bound == "compute"
    assert compute_bound.seconds(with_ici=False) == compute_bound.seconds(with_ici=True) == 4.0
    assert compute_bound.mfu(with_ici=True) == pytest.approx(0.75)


def test_an_ici_bound_step_is_slower_only_with_the_ici_term():
    ici_bound = roofline(ici_bytes=800.0)
    assert ici_bound.bound == "ICI"
    assert (ici_bound.seconds(with_ici=False), ici_bound.seconds(with_ici=True)) == (4.0, 8.0)
    assert (ici_bound.mfu(with_ici=False), ici_bound.mfu(with_ici=True)) == pytest.approx((0.75, 0.375))


def test_an_unknown_ici_bandwidth_gives_no_ici_estimate():
    unknown = roofline(ici_bytes=800.0, ici_bytes_per_s=math.nan)
    assert math.isnan(unknown.seconds(with_ici=True)) and unknown.seconds(with_ici=False) == 4.0
    assert unknown.bound == "compute"
