"""research/train/lora_state.py: LoRA as a trainer switch. A tiny LoRA SFT run keeps only adapters (and
their optimizer moments) in its checkpoints, and its merged export, loaded by transformers, gives the
adapted model's logits; the reward-model, DPO and PPO trainers train adapters over a base they never
save; bad LoRA fields are named."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from flax import traverse_util
from transformers import LlamaForCausalLM

from research import config as config_lib
from research.models import make_model
from research.train import lora_state
from research.train.loop import train
from research.train.trainers import ppo
from tests.train import test_dpo, test_ppo, test_reward_model
from tests.train.test_loop import ONE_DEVICE, losses

LOGITS_ATOL = 1e-4  # float32 JAX against float32 PyTorch, the tolerance of tests/models/test_convert.py
LORA_SFT = {"model.dim": 32, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2,
            "model.hidden_dim": 64, "model.vocab_size": 265, "data.tokenizer": "byte", "train.seq_len": 320,
            "train.batch_size": 4, "train.steps": 3, "train.log_every": 1, "train.checkpoint_every": 0,
            "train.eval_batches": 1, "data.sft.count": 20, "data.sft.suites": "('arithmetic',)",
            "optimizer.warmup_steps": 0, "optimizer.learning_rate": 0.05, "lora.enabled": True, "lora.rank": 2,
            **{f"evals.{name}.{field}": value for name in ("in_domain", "held_out")
               for field, value in (("count", 1), ("max_new_tokens", 4))}}


def lora_sft_config(**overrides):
    fields = {**LORA_SFT, **{key.replace("__", "."): value for key, value in overrides.items()}}
    return config_lib.load("configs/rlhf.py:tiny_sft", [f"{k}={v}" for k, v in fields.items()])


def saved_state(workdir):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    restored = manager.restore(manager.latest_step())["state"]
    manager.close()
    return restored


def test_a_lora_sft_run_saves_adapters_alone_and_exports_the_adapted_model(tmp_path):
    workdir, exported = tmp_path / "run", tmp_path / "hf"
    results = train(lora_sft_config(), str(workdir), devices=ONE_DEVICE)
    assert np.isfinite(results["eval_loss"])  # evaluators ran on the merged model

    state = saved_state(str(workdir))
    paths = traverse_util.flatten_dict(state["params"])
    assert paths and all(path[0] == lora_state.ADAPTERS for path in paths)
    assert {path[-1] for path in paths} == {"a", "b"}
    adapter_sizes = sorted(leaf.size for leaf in paths.values())
    moments = [leaf for leaf in jax.tree.leaves(state["opt_state"]) if np.ndim(leaf) > 0]
    assert sorted(leaf.size for leaf in moments) == sorted(adapter_sizes * 2)  # Adam's μ and ν of the adapters
    assert any(np.abs(leaf).max() > 0 for path, leaf in paths.items() if path[-1] == "b")  # B left its zeros

    lora_state.export_hf_llama(str(workdir), exported)
    config, params = lora_state.run_parameters(str(workdir))
    tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (2, 12))
    adapted = lora_state.AdaptedModel(make_model(config.model), config.lora)
    expected = np.asarray(jax.jit(adapted.apply)({"params": params}, tokens))
    hf_model = LlamaForCausalLM.from_pretrained(exported, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf_model(torch.as_tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=LOGITS_ATOL, rtol=0)
    base_logits = np.asarray(jax.jit(make_model(config.model).apply)(
        {"params": params[lora_state.BASE]}, tokens))
    assert np.abs(base_logits - expected).max() > 10 * LOGITS_ATOL  # the adapters changed the model


LORA = dict(lora__enabled=True, lora__rank=2, train__steps=2, optimizer__warmup_steps=0)
TRAINERS = {
    "reward_model": lambda: test_reward_model.rm_config(**LORA, optimizer__learning_rate=0.05),
    "dpo": lambda: test_dpo.dpo_config("tiny_dpo", **LORA, optimizer__learning_rate=0.05),
    "ppo": lambda: test_ppo.ppo_config("tiny_ppo_max", **LORA, optimizer__learning_rate=0.05),
}


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_every_post_training_trainer_trains_adapters_over_an_unsaved_base(tmp_path, monkeypatch, trainer):
    monkeypatch.setattr(ppo, "score_responses", test_ppo.share_of_even_tokens)
    train(TRAINERS[trainer](), str(tmp_path), devices=ONE_DEVICE)
    assert np.all(np.isfinite(np.asarray(losses(str(tmp_path)), dtype=float)))
    paths = traverse_util.flatten_dict(saved_state(str(tmp_path))["params"])
    assert not any(lora_state.BASE in path for path in paths)
    trained_b = [leaf for path, leaf in paths.items() if lora_state.ADAPTERS in path and path[-1] == "b"
                 and path[0] != "reference"]
    assert trained_b and any(np.abs(leaf).max() > 0 for leaf in trained_b)


@pytest.mark.parametrize("fields, message", [
    ({"lora.rank": 0}, "lora.rank: must be an int >= 1"),
    ({"lora.base.kind": "nowhere"}, "lora.base.kind: 'nowhere' is not one of"),
    ({"lora.base.kind": "run"}, "lora.base.path: empty, but lora.base.kind is 'run'"),
    ({"init_from.kind": "run", "init_from.path": "elsewhere"},
     "init_from.kind: a LoRA run keeps its base out of the train state"),
])
def test_bad_lora_fields_are_named(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        train(lora_sft_config(**fields), str(tmp_path), devices=ONE_DEVICE)
