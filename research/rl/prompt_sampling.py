"""Which problems of a fixed pool the next RL batch asks: uniform, by curriculum, or prioritized
(Kimi k1.5 §2.3), as pure functions of the pool's difficulties and running success counts.

Over a pool of N problems, problem j with normalised difficulty h_j ∈ [0, 1] (its level's rank among
its suite's training levels, 0 the easiest, 1 the hardest) and, so far, a_j attempts of which c_j were
correct (success rate s_j = c_j / a_j, 0 before any attempt):

    "uniform"      P(j) = 1 / N
    "curriculum"   P(j) ∝ [h_j ≤ p],  p = min(1, step / curriculum_steps): only the easiest level at the
                   start, one harder level unlocked after another, every problem from `curriculum_steps` on
    "prioritized"  P(j) ∝ 1 − s_j: problems the policy fails are asked more, solved ones less;
                   uniform once every problem is always solved (nothing left to prioritise)

A batch draws `count` distinct problems from P (with replacement only when fewer than `count` have
P > 0), the draw a function of (seed, step, draw) alone, so a resumed run that restores the counts
draws what an uninterrupted one would.
"""

import numpy as np

SAMPLINGS = ("uniform", "curriculum", "prioritized")


def normalised_difficulty(levels, suite_levels) -> np.ndarray:
    """h_j: each level's rank in its suite's sorted training levels over (count − 1) (0 for one level).

    `levels [N]` are the problems' difficulties, `suite_levels [N]` each problem's suite's training
    levels (a sequence each); ValueError naming a level its suite does not train on."""
    ranks = []
    for index, (level, known) in enumerate(zip(levels, suite_levels)):
        ordered = sorted(known)
        if level not in ordered:
            raise ValueError(f"problem {index}: difficulty {level} is not one of its suite's levels {ordered}")
        ranks.append(ordered.index(level) / max(len(ordered) - 1, 1))
    return np.asarray(ranks, np.float64)


def curriculum_probabilities(difficulty, progress: float) -> np.ndarray:
    """P(j) ∝ [h_j ≤ progress], uniform over the unlocked problems (the easiest level is always unlocked)."""
    difficulty = np.asarray(difficulty, np.float64)
    unlocked = difficulty <= max(progress, difficulty.min())
    return unlocked / unlocked.sum()


def success_rates(attempts, successes) -> np.ndarray:
    """s_j = c_j / a_j, 0 for problems not attempted yet."""
    attempts, successes = np.asarray(attempts, np.float64), np.asarray(successes, np.float64)
    return np.divide(successes, attempts, out=np.zeros_like(attempts), where=attempts > 0)


def prioritized_probabilities(attempts, successes) -> np.ndarray:
    """P(j) ∝ 1 − s_j; uniform when every problem has s_j = 1."""
    priority = 1.0 - success_rates(attempts, successes)
    total = priority.sum()
    return priority / total if total > 0 else np.full(priority.shape, 1.0 / priority.size)


def curriculum_progress(step: int, curriculum_steps: int) -> float:
    """p = min(1, step / curriculum_steps); ValueError for a non-positive `curriculum_steps`."""
    if curriculum_steps < 1:
        raise ValueError(f"curriculum_steps must be >= 1, got {curriculum_steps}")
    return min(1.0, step / curriculum_steps)


def sampling_probabilities(sampling: str, *, difficulty, attempts, successes, step: int,
                           curriculum_steps: int) -> np.ndarray:
    """P over the pool under `sampling` (one of SAMPLINGS; ValueError naming it otherwise)."""
    if sampling == "uniform":
        return np.full(len(difficulty), 1.0 / len(difficulty))
    if sampling == "curriculum":
        return curriculum_probabilities(difficulty, curriculum_progress(step, curriculum_steps))
    if sampling == "prioritized":
        return prioritized_probabilities(attempts, successes)
    raise ValueError(f"sampling {sampling!r} is not one of {SAMPLINGS}")


def draw_problems(probabilities, count: int, *, seed: int, step: int, draw: int = 0) -> np.ndarray:
    """`count` pool indices drawn from `probabilities`, distinct while enough have P > 0; the same
    (seed, step, draw) always gives the same indices."""
    probabilities = np.asarray(probabilities, np.float64)
    rng = np.random.default_rng((seed, step, draw))
    distinct = count <= np.count_nonzero(probabilities)
    return rng.choice(probabilities.size, size=count, replace=not distinct, p=probabilities)


def updated_counts(attempts, successes, indices, correct) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) after the responses to `indices [K]` (pool positions, repeats allowed) were judged
    `correct [K, G]` (G responses each): a_j += G and c_j += their correct ones, per occurrence."""
    correct = np.asarray(correct, np.float32)
    attempts, successes = np.array(attempts, np.float32), np.array(successes, np.float32)
    np.add.at(attempts, np.asarray(indices), correct.shape[1])
    np.add.at(successes, np.asarray(indices), correct.sum(axis=1))
    return attempts, successes
