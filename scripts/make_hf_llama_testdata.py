"""Writes tests/models/testdata/hf_tiny_llama: a tiny random `LlamaForCausalLM` and its logits.

Run once, in an environment with torch and transformers (not dependencies of `research`):

    python -m scripts.make_hf_llama_testdata [--out DIR]

The model has grouped-query attention (4 heads sharing 2 KV heads), RoPE θ = 500 (not the
default 10000) and random RMSNorm gains, so a wrong q/k row permutation, KV-head mapping,
θ or norm shows in the logits. Weights are redrawn with variance 1/fan_in (embeddings 1) so
the logits are O(1) rather than near zero, as they are under transformers' 0.02 init.

Writes `config.json` and `model.safetensors` (via `save_pretrained`), `input_tokens.npy`
(int32 [2, 16]) and `expected_logits.npy` (float32 [2, 16, 128]): the HF forward pass in
float32 with eager attention.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "models" / "testdata" / "hf_tiny_llama"
SEED = 0
BATCH, SEQ_LEN = 2, 16


def tiny_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=False,
        attn_implementation="eager",
    )


def redraw_weights(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Norm gains ~ U(0.5, 1.5); embeddings ~ N(0, 1); Linear [out, in] weights ~ N(0, 1/in)."""
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.ndim == 1:
                weight.copy_(0.5 + torch.rand(weight.shape, generator=generator))
            elif name.endswith("embed_tokens.weight"):
                weight.copy_(torch.randn(weight.shape, generator=generator))
            else:
                weight.copy_(torch.randn(weight.shape, generator=generator) / weight.shape[1] ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out = parser.parse_args().out

    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    config = tiny_config()
    model = LlamaForCausalLM(config).eval()
    redraw_weights(model, generator)
    tokens = torch.randint(0, config.vocab_size, (BATCH, SEQ_LEN), generator=generator)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits

    model.save_pretrained(out, safe_serialization=True)
    np.save(out / "input_tokens.npy", tokens.numpy().astype(np.int32))
    np.save(out / "expected_logits.npy", logits.numpy().astype(np.float32))
    print(f"wrote {out}: logits {tuple(logits.shape)}, max |logit| {logits.abs().max().item():.3f}")


if __name__ == "__main__":
    main()
