"""The token budget: the fewest tokens from each state to an accepting one, and the rule that
keeps a document finishable.

dist[s] = 0 for accepting s, else 1 + min over tokens t of dist[next(s, t)]: a shortest-path
fixed point on the token graph, relaxed backwards over its distinct edges until nothing
changes (UNREACHABLE where no accepting state can be reached).

Mask: with n tokens left (this one included), token t from state s is allowed iff
next(s, t) ≠ −1 and dist[next(s, t)] ≤ n − 1; stop ids iff s is accepting. If dist[s] ≤ n
holds before a step it holds after it (a token on a shortest path is allowed), and
dist[start] ≤ max_new_tokens holds at the start, so when the budget runs out the state is
accepting: every row ends with a complete document.
"""

import numpy as np

UNREACHABLE = np.iinfo(np.int32).max


def distance_to_accept(next_state: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """[num_states] int32: the fewest tokens from each state to an accepting state."""
    sources, tokens = np.nonzero(next_state >= 0)
    edges = np.unique(np.stack([sources, next_state[sources, tokens]], axis=1), axis=0)
    distance = np.where(accepting, 0, UNREACHABLE).astype(np.int64)
    while True:
        through = distance[edges[:, 1]] + 1
        relaxed = distance.copy()
        np.minimum.at(relaxed, edges[:, 0], through)
        relaxed = np.minimum(relaxed, UNREACHABLE)
        if (relaxed == distance).all():
            return distance.astype(np.int32)
        distance = relaxed
