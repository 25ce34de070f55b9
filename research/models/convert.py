"""Hugging Face `LlamaForCausalLM` and `ChameleonForConditionalGeneration` checkpoints ⇄ our parameters.

    model_config, params = load_hf_llama("Llama-2-7b-hf")   # then Llama(model_config)
    save_hf_llama(model_config, params, "my-llama-hf")
    model_config, params = load_hf_chameleon("chameleon-7b")  # then make_model(model_config)
    save_hf_chameleon(model_config, params, "my-chameleon-hf")

A checkpoint is the folder `save_pretrained` writes: `config.json` plus `model.safetensors`,
or shards listed in `model.safetensors.index.json`. Tensors are read with safetensors into
numpy, no torch needed: F32, F16 or BF16 on disk, float32 in memory. The loaded config
computes in float32; set `model_config.dtype = "bfloat16"` for large models. Saving writes
float32. Only LLaMA checkpoints load (`model_type` "llama", `architectures`
["LlamaForCausalLM"]); tied embeddings (`tie_word_embeddings: true`), scaled RoPE variants
and sliding-window attention (`sliding_window`, as Mistral sets it) are refused: LLaMA-2 has
none of them.

Layout. HF `nn.Linear` weights are `[out, in]`; ours are `[in, ...]` with heads split out,
per layer, stacked along a leading `layers` axis (`nn.scan`):

    q  [d, h, hd]   ← q_proj [h·hd, d]        k, v [d, kv, hd] ← k_proj, v_proj [kv·hd, d]
    o  [h, hd, d]   ← o_proj [d, h·hd]        gate, up [d, f]  ← gate_proj, up_proj [f, d]
    down [f, d]     ← down_proj [d, f]        norm gains       = *_layernorm, model.norm
    embed [V, d]    = embed_tokens [V, d]     lm_head [d, V]   = lm_head [V, d]ᵀ

RoPE row permutation. Our RoPE (Meta's) rotates the feature pairs (2i, 2i+1) of a head by
the angle p·θ^(−2i/hd); HF's `rotate_half` rotates the pairs (i, i + hd/2) by the same
angle. The two give identical attention scores when the output rows of each q and k head
are permuted so that

    meta_row(2i + j) = hf_row(j·hd/2 + i),    i < hd/2,  j ∈ {0, 1},

that is, a head's rows viewed as [2, hd/2] are transposed to [hd/2, 2] when loading, and
back when saving. v and o are not rotated and keep their row order.

Chameleon (research/models/chameleon.py) is the same decoder plus QK-Norm, whose per-head gains
and biases `q_norm`, `k_norm` [heads, hd] take the rows' permutation (`RotaryNorm`), and
`swin_norm` from config.json. The image vocabulary comes from `vocabulary_map`: code c is the
entry IMGIMG<c's digits as letters A..J>Z, which must be id offset + c; the markers are
"<racm3:break>" and "<eoss>". The VQ tokenizer's encoder half, `model.vqmodel.*`, becomes
`params["image_tokenizer"]` in the layout of research/models/vq_image_tokenizer.py (its
docstring maps the names; conv kernels [out, in, kh, kw] ⇄ [kh, kw, in, out]), its config
`model_config.image_tokenizer` from `vq_config`.
"""

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import ml_dtypes  # noqa: F401  registers bfloat16 with numpy, so safetensors can read BF16 tensors
import numpy as np
import safetensors
from flax import traverse_util
from ml_collections import config_dict
from safetensors.numpy import save_file

from research.models import abstract_params
from research.models.chameleon import IMAGE_TOKENIZER, Z_LOSS_WEIGHT, validate_chameleon
from research.models.llama import hidden_dim_of
from research.models.llama_checks import validate_llama
from research.models.vq_image_tokenizer import latent_side

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
ROPE_BUFFER_SUFFIX = "rotary_emb.inv_freq"  # saved by old transformers; it follows from rope_theta
ARCHITECTURE = "LlamaForCausalLM"
HF_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class Same:
    """A tensor both sides store alike (embeddings, norm gains)."""

    @staticmethod
    def from_hf(w, shape):
        return w

    @staticmethod
    def to_hf(w):
        return w


class Transposed:
    """ours [in, out] = HF [out, in]ᵀ (FFN matrices, lm_head)."""

    @staticmethod
    def from_hf(w, shape):
        return w.T

    @staticmethod
    def to_hf(w):
        return w.T


class Heads:
    """ours [d, heads, hd] ⇄ HF [heads·hd, d] (v)."""

    @staticmethod
    def from_hf(w, shape):
        d, heads, head_dim = shape
        return w.reshape(heads, head_dim, d).transpose(2, 0, 1)

    @staticmethod
    def to_hf(w):
        d, heads, head_dim = w.shape
        return w.transpose(1, 2, 0).reshape(heads * head_dim, d)


class RotaryHeads:
    """ours [d, heads, hd] ⇄ HF [heads·hd, d] with meta_row(2i + j) = hf_row(j·hd/2 + i) per head (q, k)."""

    @staticmethod
    def from_hf(w, shape):
        d, heads, head_dim = shape
        halves = w.reshape(heads, 2, head_dim // 2, d)  # [head, j, i, d]
        return halves.transpose(3, 0, 2, 1).reshape(d, heads, head_dim)  # [d, head, 2i + j]

    @staticmethod
    def to_hf(w):
        d, heads, head_dim = w.shape
        pairs = w.reshape(d, heads, head_dim // 2, 2)  # [d, head, i, j]
        return pairs.transpose(1, 3, 2, 0).reshape(heads * head_dim, d)  # [head·hd + j·hd/2 + i, d]


class OutputHeads:
    """ours [heads, hd, d] ⇄ HF [d, heads·hd] (o)."""

    @staticmethod
    def from_hf(w, shape):
        return w.T.reshape(shape)

    @staticmethod
    def to_hf(w):
        heads, head_dim, d = w.shape
        return w.reshape(heads * head_dim, d).T


# our parameter path → (HF tensor name, `{}` = layer index for the stacked layers, layout)
TENSORS = {
    ("embed",): ("model.embed_tokens.weight", Same),
    ("norm", "scale"): ("model.norm.weight", Same),
    ("lm_head",): ("lm_head.weight", Transposed),
    ("layers", "attention_norm", "scale"): ("model.layers.{}.input_layernorm.weight", Same),
    ("layers", "attention", "q"): ("model.layers.{}.self_attn.q_proj.weight", RotaryHeads),
    ("layers", "attention", "k"): ("model.layers.{}.self_attn.k_proj.weight", RotaryHeads),
    ("layers", "attention", "v"): ("model.layers.{}.self_attn.v_proj.weight", Heads),
    ("layers", "attention", "o"): ("model.layers.{}.self_attn.o_proj.weight", OutputHeads),
    ("layers", "ffn_norm", "scale"): ("model.layers.{}.post_attention_layernorm.weight", Same),
    ("layers", "ffn", "gate"): ("model.layers.{}.mlp.gate_proj.weight", Transposed),
    ("layers", "ffn", "up"): ("model.layers.{}.mlp.up_proj.weight", Transposed),
    ("layers", "ffn", "down"): ("model.layers.{}.mlp.down_proj.weight", Transposed),
}


def is_stacked(path) -> bool:
    return path[0] == "layers"


def param_shapes(model_config) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Our flattened parameter paths and shapes for `model_config`."""
    flat = traverse_util.flatten_dict(abstract_params(model_config))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def hf_tensor_shapes(shapes: dict, tensors: dict = TENSORS) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of the checkpoint whose parameters have `shapes` (`param_shapes`), with its shape."""
    hf_shapes = {}
    for path, shape in shapes.items():
        name, layout = tensors[path]
        if is_stacked(path):
            layer = jax.eval_shape(layout.to_hf, jax.ShapeDtypeStruct(shape[1:], np.float32))
            hf_shapes.update({name.format(i): tuple(layer.shape) for i in range(shape[0])})
        else:
            hf_shapes[name] = tuple(jax.eval_shape(layout.to_hf, jax.ShapeDtypeStruct(shape, np.float32)).shape)
    return hf_shapes


def rope_theta_from_hf(hf: dict, config_path: Path) -> float:
    """θ from `rope_parameters` (transformers ≥ 5), or `rope_theta` (earlier; default 10000)."""
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"{config_path}: RoPE type {rope_type!r} is not supported, only plain RoPE ('default')")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config_from_hf(hf: dict, config_path: Path) -> ml_collections.ConfigDict:
    """`config.model` for the LlamaConfig fields in `hf`, absent optional ones at LlamaConfig's defaults."""
    if hf.get("model_type") != "llama":
        raise ValueError(f"{config_path}: model_type is {hf.get('model_type')!r}, expected 'llama'; "
                         "only LLaMA checkpoints load")
    if hf.get("architectures") not in (None, [ARCHITECTURE]):
        raise ValueError(f"{config_path}: architectures is {hf['architectures']!r}, expected [{ARCHITECTURE!r}]; "
                         "only LLaMA checkpoints load")
    if hf.get("sliding_window") is not None:
        raise ValueError(f"{config_path}: sliding_window={hf['sliding_window']!r} (sliding-window attention, as in "
                         "Mistral) is not supported; only LLaMA checkpoints load")
    model_config = decoder_config_from_hf(hf, config_path)
    try:
        validate_llama(model_config, seq_len=model_config.max_seq_len)
    except ValueError as error:
        raise ValueError(f"{config_path}: {error}") from None
    return model_config


def decoder_config_from_hf(hf: dict, config_path: Path) -> ml_collections.ConfigDict:
    """The LLaMA decoder's fields of `config.model` from the LlamaConfig fields in `hf` (Chameleon's
    config names them alike), absent optional ones at LlamaConfig's defaults; unchecked."""
    missing = [field for field in HF_SHAPE_FIELDS if field not in hf]
    if missing:
        raise ValueError(f"{config_path}: missing field(s) {missing}")
    unsupported = {
        "tie_word_embeddings": (hf.get("tie_word_embeddings", False), False),
        "hidden_act": (hf.get("hidden_act", "silu"), "silu"),
        "attention_bias": (hf.get("attention_bias", False), False),
        "mlp_bias": (hf.get("mlp_bias", False), False),
    }
    for field, (value, supported) in unsupported.items():
        if value != supported:
            raise ValueError(f"{config_path}: {field}={value!r} is not supported, only {supported!r}")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if head_dim * heads != hf["hidden_size"]:
        raise ValueError(f"{config_path}: head_dim={head_dim} × num_attention_heads={heads} "
                         f"is not hidden_size={hf['hidden_size']}")
    return ml_collections.ConfigDict(dict(
        vocab_size=hf["vocab_size"], dim=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
        hidden_dim=hf["intermediate_size"], ffn_dim_multiplier=config_dict.placeholder(float), multiple_of=256,
        max_seq_len=hf.get("max_position_embeddings", 2048), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta_from_hf(hf, config_path), dtype="float32", attention_impl="xla", remat="none", scan_layers=True,
    ))


def hf_config_from_model(model_config) -> dict:
    """The `config.json` of a float32 `LlamaForCausalLM`, readable by transformers 4 (rope_theta) and 5."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": model_config.vocab_size,
        "hidden_size": model_config.dim,
        "intermediate_size": hidden_dim_of(model_config),
        "num_hidden_layers": model_config.num_layers,
        "num_attention_heads": model_config.num_heads,
        "num_key_value_heads": model_config.num_kv_heads,
        "head_dim": model_config.dim // model_config.num_heads,
        "max_position_embeddings": model_config.max_seq_len,
        "rms_norm_eps": model_config.norm_eps,
        "rope_theta": model_config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": model_config.rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "dtype": "float32",
    }


def read_hf_config(directory: Path) -> dict:
    """The JSON object in `directory/config.json`; ValueError naming the file if absent or not one."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{config_path} not found: {directory} is not a Hugging Face checkpoint")
    try:
        hf = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{config_path} holds a JSON {type(hf).__name__}, expected an object of LlamaConfig fields")
    return hf


def weight_files(directory: Path) -> list[Path]:
    """The shards named by `model.safetensors.index.json`, else every `*.safetensors` file."""
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        try:
            shard_names = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{index_path} is not a safetensors index (JSON with a weight_map)") from None
        files = [directory / name for name in shard_names]
        absent = [str(file) for file in files if not file.is_file()]
        if absent:
            raise ValueError(f"{index_path} names shard(s) that do not exist: {absent}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{directory} holds no *.safetensors weights")
    return files


def open_safetensors(file: Path, stack: contextlib.ExitStack):
    """`safetensors.safe_open(file)` entered on `stack`; ValueError naming `file` if it is not
    a safetensors file (truncated, garbage, an unreadable header) or cannot be opened."""
    try:
        return stack.enter_context(safetensors.safe_open(file, framework="np"))
    except (safetensors.SafetensorError, OSError) as error:
        raise ValueError(f"{file}: not a readable safetensors file ({error})") from None


@contextlib.contextmanager
def opened_tensors(files: list[Path]):
    """{tensor name: (file, open safetensors handle)} over `files`; a name in two files is an error."""
    with contextlib.ExitStack() as stack:
        sources = {}
        for file in files:
            handle = open_safetensors(file, stack)
            for name in handle.keys():
                if name in sources:
                    raise ValueError(f"tensor {name} is in both {sources[name][0]} and {file}")
                sources[name] = (file, handle)
        yield sources


def check_tensors(sources: dict, expected: dict[str, tuple[int, ...]], directory: Path,
                  architecture: str = ARCHITECTURE) -> None:
    """Every expected tensor present, floating point and of its shape; no others (but the RoPE buffer)."""
    missing = sorted(set(expected) - set(sources))
    if missing:
        raise ValueError(f"{directory}: missing tensor(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    for name, (file, handle) in sources.items():
        if name.endswith(ROPE_BUFFER_SUFFIX):
            continue
        if name not in expected:
            raise ValueError(f"{file}: unexpected tensor {name} for a {architecture} of this config.json")
        tensor = handle.get_slice(name)
        if tuple(tensor.get_shape()) != expected[name]:
            raise ValueError(f"{file}: tensor {name} has shape {tuple(tensor.get_shape())}, "
                             f"expected {expected[name]} from config.json")
        if tensor.get_dtype() not in FLOAT_DTYPES:
            raise ValueError(f"{file}: tensor {name} has dtype {tensor.get_dtype()}, expected one of {FLOAT_DTYPES}")


def read_params(sources: dict, shapes: dict, tensors: dict = TENSORS) -> dict:
    """Our parameter tree (float32 numpy) of `shapes` (`param_shapes`) from the checked HF tensors."""

    def read(name):
        _, handle = sources[name]
        return handle.get_tensor(name).astype(np.float32)

    flat = {}
    for path, shape in shapes.items():
        name, layout = tensors[path]
        if is_stacked(path):
            flat[path] = np.stack([layout.from_hf(read(name.format(i)), shape[1:]) for i in range(shape[0])])
        else:
            flat[path] = np.ascontiguousarray(layout.from_hf(read(name), shape))
    return traverse_util.unflatten_dict(flat)


def load_hf_llama(checkpoint_dir) -> tuple[ml_collections.ConfigDict, dict]:
    """(model_config, params) of the `LlamaForCausalLM` checkpoint in `checkpoint_dir`.

    `Llama(model_config).apply({"params": params}, tokens)` gives the checkpoint's logits.
    Raises ValueError naming the file or tensor for a missing config.json or weights, a
    model_type other than llama, a missing, extra or misshapen tensor.
    """
    directory = Path(checkpoint_dir)
    model_config = model_config_from_hf(read_hf_config(directory), directory / CONFIG_FILE)
    with opened_tensors(weight_files(directory)) as sources:
        shapes = param_shapes(model_config)
        check_tensors(sources, hf_tensor_shapes(shapes), directory)
        params = read_params(sources, shapes)
    return model_config, params


def hf_tensors(expected: dict, params, tensors: dict = TENSORS) -> dict[str, np.ndarray]:
    """The HF tensors (contiguous float32) of our `params`, after checking their paths against the
    parameter shapes `expected` of model_config."""
    flat = traverse_util.flatten_dict(nn.meta.unbox(params))
    for path in sorted(set(expected) | set(flat)):
        where = "/".join(path)
        if path not in flat:
            raise ValueError(f"params lack {where} {expected[path]}")
        if path not in expected:
            raise ValueError(f"params hold {where}, which the model of model_config does not have")
        if tuple(np.shape(flat[path])) != expected[path]:
            raise ValueError(f"params {where} has shape {tuple(np.shape(flat[path]))}, "
                             f"expected {expected[path]} from model_config")
    hf = {}
    for path, value in flat.items():
        name, layout = tensors[path]
        value = np.asarray(value, np.float32)
        if is_stacked(path):
            hf.update({name.format(i): np.ascontiguousarray(layout.to_hf(layer)) for i, layer in enumerate(value)})
        else:
            hf[name] = np.ascontiguousarray(layout.to_hf(value))
    return hf


def replace_directory(staging: Path, target: Path) -> None:
    """Moves `staging` to `target` by renames, so `target` is never a half-written checkpoint."""
    if not target.exists():
        staging.rename(target)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    target.rename(previous / target.name)
    try:
        staging.rename(target)
    except OSError:
        (previous / target.name).rename(target)
        raise
    shutil.rmtree(previous)


def check_target(target: Path, overwrite: bool) -> None:
    """FileExistsError if `target` is a file, or a non-empty directory and not `overwrite`."""
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; pass overwrite=True to replace it")


def write_checkpoint(target: Path, tensors: dict[str, np.ndarray], hf_config: dict) -> None:
    """config.json and model.safetensors written to a temporary folder beside `target`, renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_file(tensors, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        os.chmod(staging, 0o755)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_hf_llama(model_config, params, checkpoint_dir, *, overwrite: bool = False) -> None:
    """Writes `params` as a float32 `LlamaForCausalLM` checkpoint: config.json + model.safetensors.

    The files are written to a temporary folder beside `checkpoint_dir` and renamed into
    place. An existing non-empty `checkpoint_dir` is replaced only with `overwrite=True`.
    """
    target = Path(checkpoint_dir)
    check_target(target, overwrite)
    write_checkpoint(target, hf_tensors(param_shapes(model_config), params), hf_config_from_model(model_config))


# Chameleon: transformers' `ChameleonForConditionalGeneration` (the decoder and the VQ tokenizer's encoder).

CHAMELEON_ARCHITECTURE = "ChameleonForConditionalGeneration"
VQ_PREFIX = "model.vqmodel."
BEGIN_IMAGE_TOKEN, END_IMAGE_TOKEN = "<racm3:break>", "<eoss>"  # transformers' ChameleonProcessor's markers
IMAGE_CODE_PREFIX = "IMGIMG"  # vocabulary_map's name of code c: IMGIMG, c's decimal digits as A..J, then Z
HF_VQ_DEFAULTS = dict(  # transformers' ChameleonVQVAEConfig defaults, for fields a config.json leaves out
    embed_dim=256, num_embeddings=8192, double_latent=False, latent_channels=256, resolution=512, in_channels=3,
    base_channels=128, channel_multiplier=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=None, dropout=0.0,
    attn_type="vanilla")
HF_VQ_NORM_GROUPS = 32  # ChameleonVQVAE's GroupNorms all have 32 groups
VQ_TRAINING_FIELDS = dict(  # the tokenizer's training fields, which a transformers checkpoint does not carry
    beta=0.25, codebook_update="gradient", ema_decay=0.99, ema_epsilon=1e-5, dead_code_steps=0)


class RotaryNorm:
    """ours [heads, hd] ⇄ HF [heads, hd] with meta(2i + j) = hf(j·hd/2 + i) per head (QK-Norm gains, biases)."""

    @staticmethod
    def from_hf(w, shape):
        heads, head_dim = shape
        return w.reshape(heads, 2, head_dim // 2).transpose(0, 2, 1).reshape(heads, head_dim)

    @staticmethod
    def to_hf(w):
        heads, head_dim = w.shape
        return w.reshape(heads, head_dim // 2, 2).transpose(0, 2, 1).reshape(heads, head_dim)


class ConvKernel:
    """ours [kh, kw, in, out] (flax) ⇄ HF [out, in, kh, kw] (PyTorch); both convolve without flipping."""

    @staticmethod
    def from_hf(w, shape):
        return w.transpose(2, 3, 1, 0)

    @staticmethod
    def to_hf(w):
        return w.transpose(3, 2, 0, 1)


CHAMELEON_TENSORS = {
    **TENSORS,
    ("layers", "attention", "q_norm", "scale"): ("model.layers.{}.self_attn.q_norm.weight", RotaryNorm),
    ("layers", "attention", "q_norm", "bias"): ("model.layers.{}.self_attn.q_norm.bias", RotaryNorm),
    ("layers", "attention", "k_norm", "scale"): ("model.layers.{}.self_attn.k_norm.weight", RotaryNorm),
    ("layers", "attention", "k_norm", "bias"): ("model.layers.{}.self_attn.k_norm.bias", RotaryNorm),
}


def vq_tensor(path: tuple[str, ...]) -> tuple[str, type]:
    """(HF name, layout) of the VQ tokenizer's parameter `path` (research/models/vq_image_tokenizer.py):
    levels and their blocks are numbered with dots (`encoder/down_1/block_0/conv1/kernel` →
    `model.vqmodel.encoder.down.1.block.0.conv1.weight`), the middle's `block_1` keeps its name."""
    if path == ("quantize", "embedding"):
        return VQ_PREFIX + "quantize.embedding.weight", Same
    modules = []
    for index, part in enumerate(path[:-1]):
        in_level = index > 0 and re.fullmatch(r"(down|up)_\d+", path[index - 1])
        if re.fullmatch(r"(down|up)_\d+", part) or (in_level and re.fullmatch(r"(block|attn)_\d+", part)):
            part = part.replace("_", ".")
        modules.append(part)
    leaf = "bias" if path[-1] == "bias" else "weight"  # a conv's kernel, a GroupNorm's scale
    return f"{VQ_PREFIX}{'.'.join(modules)}.{leaf}", ConvKernel if path[-1] == "kernel" else Same


def chameleon_param_shapes(model_config) -> dict[tuple[str, ...], tuple[int, ...]]:
    """The decoder's parameter paths and shapes, and under `image_tokenizer/` those of the VQ tokenizer
    that transformers' ChameleonVQVAE holds (all but the tokenizer's decoder)."""
    shapes = param_shapes(model_config)
    tokenizer = param_shapes(model_config[IMAGE_TOKENIZER])
    shapes.update({(IMAGE_TOKENIZER, *path): shape for path, shape in tokenizer.items() if path[0] != "decoder"})
    return shapes


def chameleon_tensors(shapes: dict) -> dict:
    """The (HF name, layout) of every parameter path in `shapes`, as TENSORS gives LLaMA's."""
    return {path: vq_tensor(path[1:]) if path[0] == IMAGE_TOKENIZER else CHAMELEON_TENSORS[path] for path in shapes}


def image_code_name(index: int) -> str:
    """vocabulary_map's name of codebook index `index`: 10 → IMGIMGBAZ."""
    return IMAGE_CODE_PREFIX + "".join(chr(ord("A") + int(digit)) for digit in str(index)) + "Z"


def image_code_index(name: str, config_path: Path) -> int:
    """The codebook index that the vocabulary_map name `name` (IMGIMG…Z) spells."""
    letters = name[len(IMAGE_CODE_PREFIX):-1]
    if not letters or any(not "A" <= letter <= "J" for letter in letters):
        raise ValueError(f"{config_path}: vocabulary_map entry {name!r} is no image code (IMGIMG, digits as A..J, Z)")
    return int("".join(str(ord(letter) - ord("A")) for letter in letters))


def vocabulary_from_hf(vocabulary_map: dict, config_path: Path) -> dict:
    """image_token_offset, num_image_codes, begin_image_id and end_image_id from `vocabulary_map`
    (token name → id); ValueError unless code c is id offset + c for every c < num_image_codes."""
    codes = {image_code_index(name, config_path): token_id for name, token_id in vocabulary_map.items()
             if name.startswith(IMAGE_CODE_PREFIX)}
    if not codes:
        raise ValueError(f"{config_path}: vocabulary_map names no image codes ({IMAGE_CODE_PREFIX}…)")
    offset = codes.get(0, -1)
    if sorted(codes) != list(range(len(codes))) or any(codes[c] != offset + c for c in codes):
        raise ValueError(f"{config_path}: vocabulary_map's image codes are not consecutive ids in codebook order "
                         "(code c at id offset + c), the only layout supported")
    for marker in (BEGIN_IMAGE_TOKEN, END_IMAGE_TOKEN):
        if marker not in vocabulary_map:
            raise ValueError(f"{config_path}: vocabulary_map has no {marker!r} (the image marker tokens)")
    return dict(image_token_offset=offset, num_image_codes=len(codes),
                begin_image_id=vocabulary_map[BEGIN_IMAGE_TOKEN], end_image_id=vocabulary_map[END_IMAGE_TOKEN])


def hf_vocabulary_map(model_config) -> dict[str, int]:
    """The image entries of transformers' vocabulary_map: the markers and every code's name."""
    codes = {image_code_name(c): int(model_config.image_token_offset + c) for c in range(model_config.num_image_codes)}
    return {BEGIN_IMAGE_TOKEN: model_config.begin_image_id, END_IMAGE_TOKEN: model_config.end_image_id, **codes}


def vq_config_from_hf(vq: dict, config_path: Path) -> ml_collections.ConfigDict:
    """`config.model.image_tokenizer` from transformers' `vq_config` (absent fields at its defaults), float32."""
    vq = {**HF_VQ_DEFAULTS, **vq}
    if vq["double_latent"]:
        raise ValueError(f"{config_path}: vq_config.double_latent=True is not supported")
    attention = vq["attn_type"] == "vanilla"
    return ml_collections.ConfigDict(dict(
        family="vq_image_tokenizer", resolution=vq["resolution"], in_channels=vq["in_channels"],
        base_channels=vq["base_channels"], channel_multiplier=tuple(vq["channel_multiplier"]),
        num_res_blocks=vq["num_res_blocks"], attn_resolutions=tuple(vq["attn_resolutions"] or ()) if attention else (),
        mid_attention=attention, latent_channels=vq["latent_channels"], embed_dim=vq["embed_dim"],
        num_embeddings=vq["num_embeddings"], norm_groups=HF_VQ_NORM_GROUPS, dtype="float32", **VQ_TRAINING_FIELDS,
    ))


def hf_vq_config(tokenizer) -> dict:
    """transformers' `vq_config` of `config.model.image_tokenizer`; ValueError for what it cannot express."""
    if tokenizer.norm_groups != HF_VQ_NORM_GROUPS:
        raise ValueError(f"config field model.{IMAGE_TOKENIZER}.norm_groups: {tokenizer.norm_groups}; transformers' "
                         f"ChameleonVQVAE has {HF_VQ_NORM_GROUPS} groups")
    if tokenizer.attn_resolutions and not tokenizer.mid_attention:
        raise ValueError(f"config field model.{IMAGE_TOKENIZER}.mid_attention: False with attn_resolutions "
                         f"{tokenizer.attn_resolutions}; transformers' attn_type switches both together")
    return {
        "model_type": "chameleon_vqgan", "embed_dim": tokenizer.embed_dim, "num_embeddings": tokenizer.num_embeddings,
        "double_latent": False, "latent_channels": tokenizer.latent_channels, "resolution": tokenizer.resolution,
        "in_channels": tokenizer.in_channels, "base_channels": tokenizer.base_channels,
        "channel_multiplier": list(tokenizer.channel_multiplier), "num_res_blocks": tokenizer.num_res_blocks,
        "attn_resolutions": list(tokenizer.attn_resolutions), "dropout": 0.0,
        "attn_type": "vanilla" if tokenizer.mid_attention else "none",
    }


def chameleon_config_from_hf(hf: dict, config_path: Path) -> ml_collections.ConfigDict:
    """`config.model` (family "chameleon") from a ChameleonConfig's fields: the decoder, QK-Norm always on,
    swin_norm, the image vocabulary and the VQ tokenizer; dropout 0 and the paper's z-loss weight."""
    if hf.get("architectures") not in (None, [CHAMELEON_ARCHITECTURE]):
        raise ValueError(f"{config_path}: architectures is {hf['architectures']!r}, expected "
                         f"[{CHAMELEON_ARCHITECTURE!r}]; only Chameleon checkpoints load")
    if hf.get("model_type") != "chameleon":
        raise ValueError(f"{config_path}: model_type is {hf.get('model_type')!r}, expected 'chameleon'; "
                         "only Chameleon checkpoints load")
    for field, supported in (("qk_layernorm", True), ("attention_dropout", 0.0)):
        if hf.get(field, supported) != supported:
            raise ValueError(f"{config_path}: {field}={hf[field]!r} is not supported, only {supported!r}")
    if not isinstance(hf.get("vocabulary_map"), dict):
        raise ValueError(f"{config_path}: no vocabulary_map (token name → id), which places the image codes")
    tokenizer = vq_config_from_hf(hf.get("vq_config") or {}, config_path)
    model_config = decoder_config_from_hf(hf, config_path)
    model_config.update(dict(
        family="chameleon", qk_norm=True, swin_norm=bool(hf.get("swin_norm", False)), dropout=0.0,
        z_loss_weight=Z_LOSS_WEIGHT, **vocabulary_from_hf(hf["vocabulary_map"], config_path),
        image_seq_len=latent_side(tokenizer) ** 2, image_tokenizer=tokenizer,
    ))
    try:
        validate_chameleon(model_config, seq_len=model_config.max_seq_len)
    except ValueError as error:
        raise ValueError(f"{config_path}: {error}") from None
    return model_config


def hf_config_from_chameleon(model_config) -> dict:
    """The `config.json` of a float32 `ChameleonForConditionalGeneration` (transformers 5)."""
    if not model_config.qk_norm:
        raise ValueError("config field model.qk_norm: False, but transformers' Chameleon always normalises q and k")
    if IMAGE_TOKENIZER not in model_config:
        raise ValueError(f"config field model.{IMAGE_TOKENIZER}: missing; transformers' Chameleon holds the VQ "
                         "tokenizer")
    hf = {key: value for key, value in hf_config_from_model(model_config).items() if key != "head_dim"}
    hf.update({
        "architectures": [CHAMELEON_ARCHITECTURE], "model_type": "chameleon", "swin_norm": model_config.swin_norm,
        "attention_dropout": 0.0, "model_parallel_size": 1, "vocabulary_map": hf_vocabulary_map(model_config),
        "vq_config": hf_vq_config(model_config[IMAGE_TOKENIZER]),
    })
    return hf


def load_hf_chameleon(checkpoint_dir) -> tuple[ml_collections.ConfigDict, dict]:
    """(model_config, params) of the `ChameleonForConditionalGeneration` checkpoint in `checkpoint_dir`.

    `make_model(model_config).apply({"params": params}, tokens)` gives its logits (transformers
    sets the image codes' logits to the float minimum; these are the unmasked ones), and
    `research.models.chameleon.image_tokens(model_config, params, pixels)` its image tokens:
    params hold the decoder's parameters and, under `image_tokenizer`, the VQ tokenizer's encoder,
    quant_conv, codebook and post_quant_conv. Raises ValueError naming the file or tensor for a
    missing config.json or weights, another architecture, a missing, extra or misshapen tensor.
    """
    directory = Path(checkpoint_dir)
    model_config = chameleon_config_from_hf(read_hf_config(directory), directory / CONFIG_FILE)
    shapes = chameleon_param_shapes(model_config)
    tensors = chameleon_tensors(shapes)
    with opened_tensors(weight_files(directory)) as sources:
        check_tensors(sources, hf_tensor_shapes(shapes, tensors), directory, CHAMELEON_ARCHITECTURE)
        params = read_params(sources, shapes, tensors)
    return model_config, params


def save_hf_chameleon(model_config, params, checkpoint_dir, *, overwrite: bool = False) -> None:
    """Writes `params` (the decoder's and `image_tokenizer`'s) as a float32 `ChameleonForConditionalGeneration`
    checkpoint: config.json + model.safetensors, as `save_hf_llama` writes. The VQ tokenizer's decoder,
    which transformers' ChameleonVQVAE does not have, is left out."""
    target = Path(checkpoint_dir)
    check_target(target, overwrite)
    hf_config = hf_config_from_chameleon(model_config)
    tokenizer = {name: tree for name, tree in params.get(IMAGE_TOKENIZER, {}).items() if name != "decoder"}
    shapes = chameleon_param_shapes(model_config)
    tensors = hf_tensors(shapes, {**params, IMAGE_TOKENIZER: tokenizer}, chameleon_tensors(shapes))
    write_checkpoint(target, tensors, hf_config)
