"""Speculative decoding in expectation (Leviathan et al., 2023, §3.1–3.4): what the acceptance rate buys.

A proposal x ~ q after a prefix is accepted with probability

    β = Σ_x q(x) · min(1, p(x)/q(x)) = Σ_x min(p(x), q(x)) = 1 − TV(p, q),

and the acceptance rate α = E[β] averages β over the prefixes decoding meets. Taking the γ
acceptances of a round as independent with probability α, a target call yields its accepted
prefix plus one token (the correction, or the bonus token when all γ are accepted), a capped
geometric count:

    E[tokens per target call] = Σ_{i=0..γ} α^i = (1 − α^{γ+1}) / (1 − α)        (γ + 1 at α = 1).

A round costs one target call and γ draft calls, a draft call taking c target calls' time, so the
expected wall-clock improvement over decoding with the target alone is

    speedup = (1 − α^{γ+1}) / ((1 − α)(γc + 1)).

Table 1 of the paper lists this at c = 0 (the improvement in target calls): α = 0.8, γ = 5 → 3.69;
α = 0.9, γ = 10 → 6.86.
"""

import math
import numbers

from research.decoding.sampling import checked_int


def is_real(value) -> bool:
    """A Python or numpy real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def checked_alpha(alpha) -> float:
    """`alpha` as a float in [0, 1]; ValueError otherwise."""
    if not is_real(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def expected_tokens_per_target_call(alpha: float, num_draft_tokens: int) -> float:
    """(1 − α^{γ+1}) / (1 − α): the mean tokens one target call yields with γ proposals (γ + 1 at α = 1)."""
    alpha = checked_alpha(alpha)
    gamma = checked_int("num_draft_tokens", num_draft_tokens, 0)
    if alpha == 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, num_draft_tokens: int, cost_ratio: float) -> float:
    """(1 − α^{γ+1}) / ((1 − α)(γc + 1)): the expected wall-clock improvement over the target alone,
    with c = `cost_ratio` the time of a draft call over that of a target call."""
    if not is_real(cost_ratio) or not math.isfinite(cost_ratio) or cost_ratio < 0:
        raise ValueError(f"cost_ratio must be a finite number >= 0, got {cost_ratio!r}")
    tokens = expected_tokens_per_target_call(alpha, num_draft_tokens)
    return tokens / (num_draft_tokens * cost_ratio + 1.0)
