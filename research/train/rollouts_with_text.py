"""A batch source of on-policy rollouts with pretraining text beside them (PPO-ptx, InstructGPT §3.5).

Each step's batch is the rollout batch of an `OnPolicyBatches` (made on the devices from the current
policy) with one more entry, `text_key`, holding the next packed rows of a host text iterator
(`IteratorBatches`: the LM trainer's corpus rows). The checkpoint keeps both kinds of state: the
rollouts' array state (prompt cursor, running reward statistics, ...) and the text iterator's host
position, so a resumed run reads the same text beside the same rollouts.
"""

from research.train.batches import IteratorBatches, OnPolicyBatches


class RolloutsWithText:
    """`rollouts` (their batch a dict) with `text`'s rows added under `text_key`."""

    def __init__(self, rollouts: OnPolicyBatches, text: IteratorBatches, text_key: str):
        self.rollouts, self.text, self.text_key = rollouts, text, text_key
        self.init = rollouts.init

    def next(self, train_state, source_state, rng):
        batch, source_state = self.rollouts.next(train_state, source_state, rng)
        rows, _ = self.text.next(train_state, {}, rng)
        return {**batch, self.text_key: rows}, source_state

    def host_state(self):
        return self.text.host_state()

    def set_host_state(self, position) -> None:
        self.text.set_host_state(position)
