"""research/train/trainers/medusa.py: Medusa-1 and Medusa-2 started from a tiny LM run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.parallel.mesh import make_mesh
from research.train.loop import train
from research.train.metrics import read_metrics
from research.train.step import step_layout
from research.train.task import build_task
from research.train.trainers.medusa import head_targets
from tests.train.conftest import tiny_overrides
from tests.train.test_loop import ONE_DEVICE, final_params

MEDUSA_OVERRIDES = [
    "model.dim=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2", "model.hidden_dim=64",
    "model.vocab_size=260", "data.tokenizer=byte", "train.seq_len=32", "train.batch_size=8", "train.log_every=1",
    "train.eval_every=0", "train.eval_batches=1", "train.checkpoint_every=0", "optimizer.warmup_steps=0",
    "optimizer.schedule=constant", "model.medusa.num_heads=2",
]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A 4-step tiny LM run to start from."""
    workdir = tmp_path_factory.mktemp("lm")
    overrides = tiny_overrides(train__steps=4, train__eval_every=0, train__checkpoint_every=0)
    train(config_lib.load("configs/llama2.py:tiny", overrides), str(workdir), devices=ONE_DEVICE)
    return workdir


def medusa_config(lm_workdir, stage: int, steps: int, learning_rate: float = 1e-2):
    return config_lib.load(f"configs/medusa.py:tiny,stage={stage}", MEDUSA_OVERRIDES + [
        f"train.steps={steps}", f"optimizer.learning_rate={learning_rate}", "init_from.kind=run",
        f"init_from.path={lm_workdir}"])


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_medusa_1_trains_the_heads_from_an_lm_run_and_keeps_its_backbone(lm_run, tmp_path):
    results = train(medusa_config(lm_run, stage=1, steps=8, learning_rate=3e-2), str(tmp_path), devices=ONE_DEVICE)
    params = final_params(str(tmp_path))
    assert_trees_equal(params["backbone"], final_params(str(lm_run)))
    heads_losses = [r["medusa_loss"] for r in read_metrics(str(tmp_path)) if "medusa_loss" in r]
    assert len(heads_losses) == 8 and np.mean(heads_losses[-3:]) < heads_losses[0] - 0.1
    assert np.abs(np.asarray(params["medusa"]["w"])).max() > 0  # the zero-initialised residual blocks learned
    assert {"heads_head1_top1", "heads_head2_top1", "heads_lm_loss"} <= set(results)
    assert 0 <= results["heads_head2_top1"] <= 1


def test_medusa_2_trains_the_backbone_too(lm_run):
    config = medusa_config(lm_run, stage=2, steps=2)
    mesh = make_mesh(config.mesh, ONE_DEVICE)
    task = build_task(config, mesh)
    source = final_params(str(lm_run))
    state = nn.meta.unbox(task.init_state(jax.random.key(0), {"backbone": source}))
    batch, _ = task.batches(step_layout(task, mesh).batch_shardings).next(None, {}, None)
    state, metrics = jax.jit(task.train_step)(state, batch, jax.random.key(1))
    assert not np.array_equal(np.asarray(state.params["backbone"]["lm_head"]), np.asarray(source["lm_head"]))
    assert float(metrics["loss"]) == pytest.approx(float(metrics["lm_loss"] + 0.2 * metrics["medusa_loss"]))


@pytest.mark.parametrize("stage, backbone_moments", [(1, False), (2, True)])
def test_only_trained_parts_hold_adam_moments(lm_run, stage, backbone_moments):
    config = medusa_config(lm_run, stage=stage, steps=2)
    task = build_task(config, make_mesh(config.mesh, ONE_DEVICE))
    state = jax.eval_shape(task.init_state, jax.random.key(0))
    heads = sum(x.size for x in jax.tree.leaves(state.params["medusa"]))
    backbone = sum(x.size for x in jax.tree.leaves(state.params["backbone"]))
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
    assert moments == 2 * (heads + backbone * backbone_moments)


def test_head_targets_look_k_plus_one_tokens_ahead_within_a_document():
    targets = jnp.array([[1, 2, 3, 4, 5]])
    batch = {"targets": targets, "weights": jnp.ones((1, 5)), "segment_ids": jnp.array([[1, 1, 1, 2, 2]])}
    shifted, weights = head_targets(batch, num_heads=2)
    assert shifted.tolist() == [[[2, 3, 4, 5, 0]], [[3, 4, 5, 0, 0]]]
    assert weights.tolist() == [[[1, 1, 0, 1, 0]], [[1, 0, 0, 0, 0]]]
