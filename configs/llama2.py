"""LLaMA-2 language-model pretraining (Touvron et al., 2023).

Variants: `tiny` (trains on the bundled CPython docs in minutes on a CPU), `100m`
(a ~100M-parameter benchmark shape), and Meta's `7b`, `13b`, `70b` with the paper's
pretraining recipe (AdamW .9/.95, eps 1e-5, wd 0.1, 2000 warmup steps, cosine to 10%,
clip 1.0, 4096 context). Pick one with `configs/llama2.py:7b` or `:variant=7b`.

Layout. The full-size variants (and the configs built on them: seed_thinking, chameleon) shard
parameters, gradients and optimizer state over every chip (`mesh.fsdp=-1`, MaxText's
`ici_fsdp_parallelism=-1`) and take one sequence per chip per micro-step
(`train.micro_batch_per_device=1`), accumulating the 1024-sequence batch over 1024 / chips
micro-batches: the least activation memory, so the same config fits any slice large enough for
its state (LLaMA-2 7B from v5p-8 up; experiments/results/pod_fit.md). `python -m scripts.aot_compile
--search` finds faster layouts for a given slice. The small variants keep pure data parallelism
and one micro-batch.
"""

import ml_collections
from ml_collections import config_dict

from research.config import parse_arg

FULL_SIZE = ("7b", "13b", "70b")
MODELS = {
    # name: (dim, layers, heads, kv_heads, hidden_dim, ffn_dim_multiplier, multiple_of, vocab, max_seq_len)
    "tiny": (256, 4, 4, 2, 688, None, 256, 4096, 1024),
    "100m": (768, 12, 12, 4, 2048, None, 256, 32000, 2048),
    "7b": (4096, 32, 32, 32, None, None, 256, 32000, 4096),
    "13b": (5120, 40, 40, 40, None, None, 256, 32000, 4096),
    "70b": (8192, 80, 64, 8, None, 1.3, 4096, 32000, 4096),
}


def model_config(variant: str) -> ml_collections.ConfigDict:
    """The decoder's shape: Meta's published sizes for 7b/13b/70b."""
    if variant not in MODELS:
        raise ValueError(f"unknown llama2 variant {variant!r}; known: {sorted(MODELS)}")
    dim, layers, heads, kv_heads, hidden, multiplier, multiple_of, vocab, max_len = MODELS[variant]
    full_size = variant in FULL_SIZE
    return ml_collections.ConfigDict(dict(
        family="llama", vocab_size=vocab, dim=dim, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
        hidden_dim=config_dict.placeholder(int) if hidden is None else hidden,
        ffn_dim_multiplier=config_dict.placeholder(float) if multiplier is None else multiplier,
        multiple_of=multiple_of, max_seq_len=max_len, norm_eps=1e-5, rope_theta=10000.0,
        dtype="bfloat16" if full_size else "float32",
        attention_impl="xla", remat="full" if full_size else "none", scan_layers=True,
    ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, variant="tiny")
    tiny = args.variant == "tiny"
    full_size = args.variant in FULL_SIZE
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.trainer = "lm"
    config.halt_on_nan = True
    config.peak_flops = config_dict.placeholder(float)  # per device; None = known chip or measured
    config.model = model_config(args.variant)

    config.data = ml_collections.ConfigDict(dict(
        name="pydoc_topics" if tiny else "python_stdlib",
        data_dir=config_dict.placeholder(str),  # None = $RESEARCH_DATA_DIR or ~/.cache/research/data
        tokenizer="sentencepiece",
        vocab_size=config.model.get_ref("vocab_size"),
    ))
    config.train = ml_collections.ConfigDict(dict(
        steps=200 if tiny else 500_000,
        batch_size=8 if tiny else 1024,  # 1024 x 4096 = 4M tokens, the paper's batch
        seq_len=256 if tiny else config.model.max_seq_len,
        grad_accum_steps=1,
        micro_batch_per_device=1 if full_size else 0,  # > 0: grad_accum_steps = batch / (this × batch shards)
        log_every=10 if tiny else 100,
        eval_every=100 if tiny else 2000,
        eval_batches=8 if tiny else 100,
        checkpoint_every=100 if tiny else 1000,
        checkpoint_every_minutes=0.0 if tiny else 30.0,  # also save by time (0: by steps only)
        max_checkpoints=3,
        allow_config_change=False,  # resume with a config of another meaning (the old one kept as config.<step>.json)
        allowed_changes=(),  # fields a resume may change besides the cadences (research/train/workdir.py)
        fresh_start=False,  # a workdir with an earlier run's output but no usable checkpoint: move it aside
        profile_steps=(),  # (first, last): a jax.profiler trace of those steps in <workdir>/profile
    ))
    # Evaluators (research/train/evaluators.py), each at its own cadence (0: only at the end).
    config.evals = ml_collections.ConfigDict(dict(
        eval=dict(kind="loss", every=config.train.get_ref("eval_every"), batches=config.train.get_ref("eval_batches")),
        samples=dict(kind="samples", every=0, prompts=("The ", "A class ", "In Python, "), max_new_tokens=32,
                     temperature=0.8, top_k=40),
    ))
    # Where the first state comes from (research/train/init_from.py): kind "none" (random), "run"
    # (path: an earlier run's workdir; parts "params" or "all") or "hf_llama" (path: a Hugging Face directory);
    # `into` a '/'-path of the parameter tree to load into ("" = all of it).
    config.init_from = ml_collections.ConfigDict(dict(kind="none", path="", parts="params", into=""))
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=3e-3 if tiny else 3e-4, b1=0.9, b2=0.95, eps=1e-5,
        weight_decay=0.1, decay_mask="matrices", grad_clip_norm=1.0,
        schedule="warmup_cosine", warmup_steps=20 if tiny else 2000, final_lr_fraction=0.1,
        mu_dtype=config_dict.placeholder(str),
    ))
    # context > 1 adds a `context` axis that splits sequences (research/parallel/mesh.py)
    config.mesh = ml_collections.ConfigDict(dict(data=1 if full_size else -1, fsdp=-1 if full_size else 1, tensor=1,
                                                 expert=1, context=1))
    config.parallel = ml_collections.ConfigDict(dict(grad_reduce="auto"))  # research/parallel/grad_sync.py
    config.distributed = ml_collections.ConfigDict(dict(
        coordinator_address=config_dict.placeholder(str),
        num_processes=config_dict.placeholder(int),
        process_id=config_dict.placeholder(int),
    ))
    return config
