"""The sections every experiment config has, for the toy trainers of the loop's tests."""

import ml_collections
from ml_collections import config_dict


def toy_config(trainer: str, input_shape: tuple, outputs: int, **train) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.trainer = trainer
    config.peak_flops = 1e12
    config.model = ml_collections.ConfigDict(dict(family="tests.train.toy_family", input_shape=input_shape,
                                                  hidden=16, outputs=outputs))
    config.data = ml_collections.ConfigDict()
    config.train = ml_collections.ConfigDict(dict(steps=20, batch_size=8, seq_len=1, log_every=1, eval_every=0,
                                                  checkpoint_every=5, max_checkpoints=3, profile_steps=(), allow_config_change=False,
                                                  fresh_start=False, **train))
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, decay_mask="matrices",
        grad_clip_norm=1.0, schedule="constant", warmup_steps=0, final_lr_fraction=1.0,
        mu_dtype=config_dict.placeholder(str)))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1, context=1))
    return config
