"""research/config.py and config_checks.py: loading, overrides, validation."""

import pytest

from research import config as config_lib

TINY = "configs/llama2.py:tiny"


def test_load_returns_frozen_validated_config():
    config = config_lib.load(TINY)
    assert config.trainer == "lm"
    assert config.model.num_heads % config.model.num_kv_heads == 0
    with pytest.raises((AttributeError, ValueError, TypeError)):
        config.model.dim = 1


def test_overrides_are_typed_by_the_field():
    config = config_lib.load(TINY, ["model.dim=128", "optimizer.learning_rate=1e-4", "--config.train.steps=7",
                                    "model.hidden_dim=None", "halt_on_nan=false"])
    assert config.model.dim == 128 and isinstance(config.model.dim, int)
    assert config.optimizer.learning_rate == 1e-4
    assert config.train.steps == 7
    assert config.model.hidden_dim is None
    assert config.halt_on_nan is False


def test_int_literal_for_a_float_field_becomes_float():
    assert config_lib.load(TINY, ["optimizer.learning_rate=1"]).optimizer.learning_rate == 1.0


def test_placeholder_fields_take_their_declared_type():
    config = config_lib.load(TINY, ["data.data_dir=/tmp/x", "peak_flops=1e12"])
    assert config.data.data_dir == "/tmp/x"
    assert config.peak_flops == 1e12


def test_unknown_key_names_the_closest_real_keys():
    with pytest.raises(ValueError, match="model.num_heads"):
        config_lib.load(TINY, ["model.num_head=4"])


def test_ill_typed_value_is_rejected():
    with pytest.raises(ValueError, match="train.steps"):
        config_lib.load(TINY, ["train.steps=many"])
    with pytest.raises(ValueError, match="model.dim"):
        config_lib.load(TINY, ["model.dim=1.5"])


def test_heads_not_divisible_by_kv_heads_names_the_field():
    with pytest.raises(ValueError, match="model.num_kv_heads"):
        config_lib.load(TINY, ["model.num_kv_heads=3"])


@pytest.mark.parametrize("override, field", [
    ("train.seq_len=4096", "train.seq_len"),
    ("train.steps=0", "train.steps"),
    ("optimizer.learning_rate=-1.0", "optimizer.learning_rate"),
    ("mesh.data=0", "mesh.data"),
    ("model.remat=sometimes", "model.remat"),
    ("model.dtype=float7", "model.dtype"),
    ("data.tokenizer=words", "data.tokenizer"),
    ("train.grad_accum_steps=3", "train.grad_accum_steps"),
])
def test_validation_names_the_field(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        config_lib.load(TINY, [override])


def test_vocab_size_override_follows_into_data():
    config = config_lib.load(TINY, ["model.vocab_size=2048"])
    assert config.data.vocab_size == 2048


@pytest.mark.parametrize("variant", ["tiny", "100m", "7b", "13b", "70b"])
def test_every_variant_loads(variant):
    assert config_lib.load(f"configs/llama2.py:{variant}").model.vocab_size > 0


def test_arg_pairs_and_bad_arguments():
    assert config_lib.load("configs/llama2.py:variant=7b").model.dim == 4096
    with pytest.raises(ValueError, match="unknown llama2 variant"):
        config_lib.load("configs/llama2.py:8b")
    with pytest.raises(ValueError, match="does not exist"):
        config_lib.load("configs/nope.py:tiny")
    with pytest.raises(ValueError, match="key=value"):
        config_lib.load(TINY, ["model.dim"])


@pytest.mark.parametrize("overrides, message", [
    (["model.moe.top_k=9"], r"model\.moe\.top_k=9 > moe\.num_experts=8"),
    (["mesh.expert=3"], r"model\.moe\.num_experts=8 is not divisible by mesh\.expert=3"),
    (["model.moe.capacity_factor=0.0"], r"model\.moe\.capacity_factor=0\.0 must be > 0"),
    (["model.moe.capacity_group_size=0"], r"model\.moe\.capacity_group_size=0 must be a positive int"),
    (["model.moe.router=hash"], r"model\.moe\.router='hash'"),
    (["model.moe.every_k_layers=3"], r"model\.moe\.every_k_layers: num_layers 4 is not divisible"),
    (["model.moe.load_balancing_weight=-1.0"], r"model\.moe\.load_balancing_weight"),
])
def test_moe_validation_names_the_field_before_building_anything(overrides, message):
    with pytest.raises(ValueError, match=message):
        config_lib.load("configs/seed_thinking.py:tiny", overrides)


@pytest.mark.parametrize("arg", ["tiny", "full", "tiny,dispatch=capacity,balance=0"])
def test_seed_thinking_variants_load(arg):
    moe = config_lib.load(f"configs/seed_thinking.py:{arg}").model.moe
    assert moe.top_k <= moe.num_experts and moe.dispatch in ("dropless", "capacity")
