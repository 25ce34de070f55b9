"""Hugging Face LlamaForCausalLM interop: logits against transformers, exact round trips, bad input.

The test data (testdata/hf_tiny_llama) was written by transformers through
scripts/make_hf_llama_testdata.py: a GQA model with RoPE θ = 500 and its logits.
"""

import json
import shutil
import struct
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from ml_collections import config_dict
from safetensors.numpy import load_file, save_file

from research.models import abstract_params
from research.models.convert import load_hf_llama, save_hf_llama
from research.models.llama import Llama, hidden_dim_of

TESTDATA = Path(__file__).parent / "testdata" / "hf_tiny_llama"
WEIGHTS = "model.safetensors"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
# config.json fields transformers' LlamaConfig reads to build the model
MODEL_FIELDS = ("architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
                "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "max_position_embeddings", "rms_norm_eps", "rope_parameters", "hidden_act",
                "attention_bias", "mlp_bias", "tie_word_embeddings")


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file: {name: {dtype, shape, data_offsets}, "__metadata__": ...}."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def names_dtypes_shapes(path: Path) -> dict:
    return {name: (entry["dtype"], entry["shape"]) for name, entry in safetensors_header(path).items()
            if name != "__metadata__"}


def assert_trees_equal(a, b):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for path in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[path]), np.asarray(flat_b[path]), err_msg=str(path))


@pytest.fixture(scope="module")
def loaded():
    return load_hf_llama(TESTDATA)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A writable copy of the transformers-written checkpoint."""
    directory = tmp_path / "hf"
    directory.mkdir()
    for name in ("config.json", WEIGHTS):
        shutil.copy(TESTDATA / name, directory / name)
    return directory


def edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def edit_tensors(directory: Path, edit) -> None:
    tensors = load_file(directory / WEIGHTS)
    edit(tensors)
    save_file(tensors, directory / WEIGHTS, metadata={"format": "pt"})


def test_loaded_checkpoint_reproduces_transformers_logits(loaded):
    model_config, params = loaded
    tokens = np.load(TESTDATA / "input_tokens.npy")
    expected = np.load(TESTDATA / "expected_logits.npy")
    logits = np.asarray(jax.jit(Llama(model_config).apply)({"params": params}, tokens))
    assert logits.shape == expected.shape == (2, 16, 128)
    assert np.abs(logits - expected).max() < 1e-4


def test_loaded_config_and_params_follow_the_model(loaded):
    model_config, params = loaded
    assert (model_config.num_heads, model_config.num_kv_heads, model_config.hidden_dim) == (4, 2, 128)
    assert model_config.rope_theta == 500.0 and model_config.norm_eps == 1e-5
    expected = jax.tree.map(lambda s: (s.shape, np.dtype(np.float32)), abstract_params(model_config))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == expected


def test_save_then_load_is_exact(loaded, tmp_path):
    model_config, params = loaded
    save_hf_llama(model_config, params, tmp_path / "saved")
    reloaded_config, reloaded_params = load_hf_llama(tmp_path / "saved")
    assert reloaded_config.to_dict() == model_config.to_dict()
    assert_trees_equal(reloaded_params, params)


def test_saved_checkpoint_has_the_transformers_layout(loaded, tmp_path):
    model_config, params = loaded
    save_hf_llama(model_config, params, tmp_path / "saved")
    assert names_dtypes_shapes(tmp_path / "saved" / WEIGHTS) == names_dtypes_shapes(TESTDATA / WEIGHTS)
    assert safetensors_header(tmp_path / "saved" / WEIGHTS)["__metadata__"] == {"format": "pt"}
    saved, original = load_file(tmp_path / "saved" / WEIGHTS), load_file(TESTDATA / WEIGHTS)
    for name in original:
        np.testing.assert_array_equal(saved[name], original[name], err_msg=name)
    saved_config = json.loads((tmp_path / "saved" / "config.json").read_text())
    original_config = json.loads((TESTDATA / "config.json").read_text())
    assert {f: saved_config[f] for f in MODEL_FIELDS} == {f: original_config[f] for f in MODEL_FIELDS}
    assert saved_config["rope_theta"] == 500.0  # what transformers 4 reads


def test_our_random_params_round_trip_through_hf(tmp_path):
    """MHA, FFN width by Meta's rule, params still boxed as `init` returns them."""
    model_config = ml_collections.ConfigDict(dict(
        vocab_size=96, dim=48, num_layers=3, num_heads=6, num_kv_heads=6,
        hidden_dim=config_dict.placeholder(int), ffn_dim_multiplier=1.3, multiple_of=32, max_seq_len=32,
        norm_eps=1e-6, rope_theta=1234.0, dtype="float32", attention_impl="xla", remat="none", scan_layers=True))
    shapes = jax.eval_shape(Llama(model_config).init, jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    rng = np.random.default_rng(0)
    boxed = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
    save_hf_llama(model_config, boxed, tmp_path / "saved")
    reloaded_config, reloaded_params = load_hf_llama(tmp_path / "saved")
    assert reloaded_config.hidden_dim == hidden_dim_of(model_config) == 192
    assert reloaded_config.rope_theta == 1234.0 and reloaded_config.num_kv_heads == 6
    assert_trees_equal(reloaded_params, nn.meta.unbox(boxed))


def shard_in_two(directory: Path) -> None:
    """Replaces model.safetensors by SHARDS (layer 1 in the second) and their index."""
    tensors = load_file(directory / WEIGHTS)
    (directory / WEIGHTS).unlink()
    shards = {shard: {} for shard in SHARDS}
    for name, tensor in tensors.items():
        shards[SHARDS["layers.1." in name]][name] = tensor
    for shard, shard_tensors in shards.items():
        save_file(shard_tensors, directory / shard, metadata={"format": "pt"})
    weight_map = {name: shard for shard, shard_tensors in shards.items() for name in shard_tensors}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_sharded_checkpoint_loads_like_one_file(loaded, checkpoint):
    shard_in_two(checkpoint)
    assert_trees_equal(load_hf_llama(checkpoint)[1], loaded[1])


def test_half_precision_weights_load_as_float32(checkpoint):
    def to_half(tensors):
        for i, name in enumerate(sorted(tensors)):
            tensors[name] = tensors[name].astype(ml_dtypes.bfloat16 if i % 2 else np.float16)

    edit_tensors(checkpoint, to_half)
    rounded = {name: t.astype(np.float32) for name, t in load_file(checkpoint / WEIGHTS).items()}
    _, params = load_hf_llama(checkpoint)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    np.testing.assert_array_equal(params["lm_head"], rounded["lm_head.weight"].T)
    np.testing.assert_array_equal(params["layers"]["ffn"]["up"][1], rounded["model.layers.1.mlp.up_proj.weight"].T)


def test_transformers_4_checkpoint_loads(loaded, checkpoint):
    """Config with top-level rope_theta and rope_scaling null; old files also hold the inv_freq buffer."""
    config = json.loads((checkpoint / "config.json").read_text())
    del config["rope_parameters"]
    config.update(rope_theta=500.0, rope_scaling=None, torch_dtype="float32")
    (checkpoint / "config.json").write_text(json.dumps(config))
    edit_tensors(checkpoint, lambda t: t.update({
        "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}))
    model_config, params = load_hf_llama(checkpoint)
    assert model_config.to_dict() == loaded[0].to_dict()
    assert_trees_equal(params, loaded[1])


def drop_config(d):
    (d / "config.json").unlink()


def drop_weights(d):
    (d / WEIGHTS).unlink()


def drop_lm_head(d):
    edit_tensors(d, lambda t: t.pop("lm_head.weight"))


def add_third_layer_tensor(d):
    edit_tensors(d, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": np.zeros((128, 64), np.float32)}))


def truncate_k_proj(d):
    edit_tensors(d, lambda t: t.update({"model.layers.1.self_attn.k_proj.weight": np.zeros((64, 64), np.float32)}))


def truncate_file(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def truncate_second_shard(d):
    shard_in_two(d)
    truncate_file(d / SHARDS[1])


def index_missing_shard(d):
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "lm_head.weight": "model-00002-of-00002.safetensors"}}))


BAD_CHECKPOINTS = [
    (drop_config, "config.json not found"),
    (drop_weights, "no \\*.safetensors"),
    (lambda d: edit_config(d, model_type="mistral"), "model_type is 'mistral'"),
    (lambda d: edit_config(d, tie_word_embeddings=True), "tie_word_embeddings=True"),
    (lambda d: edit_config(d, rope_parameters={"rope_type": "linear", "factor": 2.0}), "RoPE type 'linear'"),
    (lambda d: edit_config(d, num_key_value_heads=3), "num_kv_heads"),
    (drop_lm_head, "missing tensor.*lm_head.weight"),
    (add_third_layer_tensor, "unexpected tensor model.layers.2.mlp.up_proj.weight"),
    (truncate_k_proj, "model.layers.1.self_attn.k_proj.weight has shape \\(64, 64\\), expected \\(32, 64\\)"),
    (index_missing_shard, "model-00002-of-00002.safetensors"),
    (lambda d: (d / "model.safetensors.index.json").write_text("[]"), "not a safetensors index"),
    (lambda d: truncate_file(d / WEIGHTS), f"{WEIGHTS}: not a readable safetensors file \\(.*incomplete"),
    (lambda d: (d / WEIGHTS).write_bytes(bytes(range(256)) * 8), f"{WEIGHTS}: not a readable safetensors file"),
    (lambda d: (d / WEIGHTS).write_bytes(b""), f"{WEIGHTS}: not a readable safetensors file"),
    (truncate_second_shard, f"{SHARDS[1]}: not a readable safetensors file"),
    (lambda d: (d / "config.json").write_text('["llama"]'), "config.json holds a JSON list, expected an object"),
    (lambda d: (d / "config.json").write_text('"llama"'), "config.json holds a JSON str, expected an object"),
    (lambda d: (d / "config.json").write_text('{"model_type": "llama",'), "config.json is not valid JSON"),
    (lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00garbage"), "config.json is not valid JSON"),
    (lambda d: edit_config(d, architectures=["MistralForCausalLM"]),
     "architectures is \\['MistralForCausalLM'\\], expected \\['LlamaForCausalLM'\\]; only LLaMA checkpoints load"),
    (lambda d: edit_config(d, sliding_window=4096), "sliding_window=4096 .*only LLaMA checkpoints load"),
    (lambda d: edit_config(d, model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=4096),
     "model_type is 'mistral', expected 'llama'; only LLaMA checkpoints load"),
]


@pytest.mark.parametrize("corrupt, message", BAD_CHECKPOINTS, ids=[m for _, m in BAD_CHECKPOINTS])
def test_bad_checkpoint_raises_naming_the_problem(checkpoint, corrupt, message):
    corrupt(checkpoint)
    with pytest.raises(ValueError, match=message):
        load_hf_llama(checkpoint)


def test_null_sliding_window_and_absent_architectures_load(loaded, checkpoint):
    """What a config written from LlamaConfig alone (no model class) or by hand may hold."""
    config = json.loads((checkpoint / "config.json").read_text())
    del config["architectures"]
    config["sliding_window"] = None
    (checkpoint / "config.json").write_text(json.dumps(config))
    model_config, params = load_hf_llama(checkpoint)
    assert model_config.to_dict() == loaded[0].to_dict()
    assert_trees_equal(params, loaded[1])


def test_save_refuses_a_non_empty_directory_unless_overwrite(loaded, tmp_path):
    model_config, params = loaded
    target = tmp_path / "saved"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_hf_llama(model_config, params, target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    save_hf_llama(model_config, params, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", WEIGHTS]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_save_of_misshapen_params_writes_nothing(loaded, tmp_path):
    model_config, params = loaded
    bad = jax.tree.map(lambda x: x, params)
    bad["layers"]["attention"]["k"] = bad["layers"]["attention"]["q"]
    with pytest.raises(ValueError, match="layers/attention/k has shape"):
        save_hf_llama(model_config, bad, tmp_path / "saved")
    assert list(tmp_path.iterdir()) == []
