"""The PyTorch + transformers reference the speed benchmarks divide by, on the same LLaMA shape.

`transformers.LlamaForCausalLM` built from a `LlamaConfig` of the project's `config.model`
(untied output head, RMSNorm eps, RoPE θ, grouped K/V heads), float32 on the CPU:

  training step   loss = mean next-token NLL; backward; clip the global gradient norm to 1;
                  `torch.optim.AdamW` (β .9/.95, ε 1e-5, λ 0.1) — the project's step, op for op.
  decoding        `generate` greedy with its KV cache, exactly `new_tokens` tokens (no stop id).

torch and transformers come from the `bench` extra (setup.py); they are imported here only.
"""

import jax
import torch
import transformers


def versions() -> str:
    """"jax X, torch Y, transformers Z": the libraries both sides of a benchmark ran on."""
    return f"jax {jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}"


def hf_config(model_config) -> transformers.LlamaConfig:
    """A LlamaConfig of the same shape as the project's `config.model`."""
    return transformers.LlamaConfig(
        vocab_size=model_config.vocab_size, hidden_size=model_config.dim,
        intermediate_size=model_config.hidden_dim, num_hidden_layers=model_config.num_layers,
        num_attention_heads=model_config.num_heads, num_key_value_heads=model_config.num_kv_heads,
        max_position_embeddings=model_config.max_seq_len, rms_norm_eps=model_config.norm_eps,
        rope_theta=model_config.rope_theta, tie_word_embeddings=False, attn_implementation="sdpa")


def reference_model(model_config, seed: int = 0) -> transformers.LlamaForCausalLM:
    """A randomly initialised float32 `LlamaForCausalLM` of the project model's shape."""
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(hf_config(model_config)).float()


def train_step_runner(model_config, batch: int, seq: int, seed: int = 0):
    """`run()`: one training step (forward, backward, clipping, AdamW) on a fixed random batch."""
    model = reference_model(model_config, seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, model_config.vocab_size, (batch, seq + 1), generator=generator)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def run():
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def generate_runner(model_config, batch: int, prompt_len: int, new_tokens: int, seed: int = 0):
    """`run()`: greedy `generate` of exactly `new_tokens` tokens after random prompts `[batch, prompt_len]`."""
    model = reference_model(model_config, seed).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    prompts = torch.randint(3, model_config.vocab_size, (batch, prompt_len), generator=generator)
    attention_mask = torch.ones_like(prompts)

    def run():
        with torch.inference_mode():
            return model.generate(prompts, attention_mask=attention_mask, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                                  pad_token_id=0, eos_token_id=None)

    return run
