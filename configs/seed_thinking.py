"""A mixture-of-experts reasoning model at Seed-Thinking-v1.5's scale (200B total, 20B activated).

    configs/seed_thinking.py:tiny    (trains on the bundled CPython docs on a CPU)
    configs/seed_thinking.py:full    (the 200B / 20B layout, for a pod)
    configs/seed_thinking.py:mixtral_8x7b    (Mixtral 8x7B's shape, 46.7B / 12.9B, a second pod-scale MoE)
    configs/seed_thinking.py:tiny,dispatch=capacity,balance=0

The decoder is the project's LLaMA stack (research/models/llama.py) with every feed-forward
block a mixture of experts (research/models/moe.py); the training recipe is LLaMA-2's
(configs/llama2.py).

`full`. Seed-Thinking-v1.5 publishes only its totals: 200B parameters, 20B activated per token.
This layout is DeepSeek-V3-like (fine-grained routed experts plus one always-on shared expert,
softmax-then-top-k routing with renormalised weights, all layers MoE) with LLaMA's GQA attention:

    dim 6144, 50 layers, 48 query heads of 128, 8 K/V heads, vocabulary 128,000 (untied),
    96 routed experts of width 2176, top-6, 1 shared expert of width 2176

    per layer: attention 2·6144·(48 + 8)·128 = 88.1M, router 6144·96 = 0.6M,
               one expert 3·6144·2176 = 40.1M
    total  = 2·128000·6144 + 50·(88.1M + 0.6M + (96 + 1)·40.1M) ≈ 200.53B  (+0.27%)
    active = 2·128000·6144 + 50·(88.1M + 0.6M + (6 + 1)·40.1M)  ≈ 20.04B  (+0.22%)

(`count_params` gives the exact figures; the test holds both within 2%.) Ten times as many
parameters as are active, as in the paper; 6 of 96 experts (plus the shared one) is DeepSeek-V3's
sparsity (8 of 256 + 1) coarsened so that each expert stays a matmul-friendly width.

`mixtral_8x7b`: Mixtral of Experts (Jiang et al., 2024, arXiv:2401.04088, Table 1): dim 4096, 32 layers,
32 query heads of 128, 8 K/V heads, vocabulary 32,000, 8 experts of width 14336, top-2, no shared expert,
RoPE θ 1e6: 46.7B total, 12.9B active. Only the shape is Mixtral's; routing (softmax then top-2, renormalised,
which equals Mixtral's top-2 then softmax), auxiliary losses and the training recipe are this file's.

`tiny`: LLaMA-2 tiny's attention and shapes (dim 256, 4 layers, 4 heads, 2 K/V heads) with
8 experts of width 344, top-2: its activated FFN width 2·344 = 688 equals the dense tiny's,
so the two are equal in activated parameters up to the router (experiments/moe_vs_dense.py).

Arguments: `variant` (tiny, full, mixtral_8x7b), `dispatch` (dropless, capacity), `balance` (the
load-balancing loss weight α; 0 turns it off).
"""

import os

import ml_collections

from research.config import load_module, parse_arg

LLAMA2 = load_module(os.path.join(os.path.dirname(__file__), "llama2.py"))

LAYOUTS = {
    # name: (dim, layers, heads, kv_heads, vocab, max_seq_len, experts, top_k, shared, expert_hidden)
    "tiny": (256, 4, 4, 2, 4096, 1024, 8, 2, 0, 344),
    "full": (6144, 50, 48, 8, 128_000, 32_768, 96, 6, 1, 2176),
    "mixtral_8x7b": (4096, 32, 32, 8, 32_000, 32_768, 8, 2, 0, 14336),
}


def moe_config(experts, top_k, shared, expert_hidden, dispatch, balance, seq_len) -> ml_collections.ConfigDict:
    """`config.model.moe`: the Switch Transformer's auxiliary-loss weights (α 0.01, z-loss 0.001).

    Capacity groups of min(1024, seq_len) tokens (Mesh TensorFlow's GShard default 1024, at most one sequence):
    tiny (seq_len 256) one sequence a group, full (seq_len 4096) a quarter of one. A group within a sequence is
    the same group however the batch's rows are split over devices, so expert parallelism drops what one
    device drops. The one-hot dispatch and combine einsums cost (2/3)·G/h of the experts' matmuls (h the
    expert width; 0.31 for full): smaller groups are cheaper but drop more under uneven routing. An override
    of train.seq_len leaves the group size as it is. `grouped_matmul` "auto": the dropless path's expert matmuls
    run as the Pallas grouped-matmul kernel on TPU and GPU, as `jax.lax.ragged_dot` on CPU.
    """
    return ml_collections.ConfigDict({
        "num_experts": experts, "top_k": top_k, "num_shared_experts": shared, "expert_hidden_dim": expert_hidden,
        "every_k_layers": 1, "capacity_factor": 1.25, "capacity_group_size": min(1024, seq_len),
        "router": "softmax_topk", "renormalize": True, "router_jitter": 0.0, "dispatch": dispatch,
        "load_balancing_weight": balance, "z_loss_weight": 1e-3, "grouped_matmul": "auto",
    })


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, variant="tiny", dispatch="dropless", balance=0.01)
    if args.variant not in LAYOUTS:
        raise ValueError(f"unknown seed_thinking variant {args.variant!r}; known: {sorted(LAYOUTS)}")
    tiny = args.variant == "tiny"
    config = LLAMA2.get_config("tiny" if tiny else "7b")
    dim, layers, heads, kv_heads, vocab, max_len, experts, top_k, shared, hidden = LAYOUTS[args.variant]
    model = config.model
    model.update({"dim": dim, "num_layers": layers, "num_heads": heads, "num_kv_heads": kv_heads,
                  "vocab_size": vocab, "max_seq_len": max_len})
    if not tiny:
        model.rope_theta = 1e6  # long reasoning traces
        config.data.tokenizer = "sentencepiece"
    model.moe = moe_config(experts, top_k, shared, hidden, args.dispatch, args.balance, config.train.seq_len)
    return config
