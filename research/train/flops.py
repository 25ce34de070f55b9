"""Model FLOPs per token and the hardware peak they are measured against (MFU).

Training FLOPs per token (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, App. B):

    F = 6·N_matmul + 6·L·H·d_h·S      (causal; 12·L·H·d_h·S without the causal mask)

N_matmul counts parameters used in matrix multiplies (all but the input embedding, which
is a gather); the second term is QKᵀ and AV over a context of S tokens, of which a causal
query sees S/2 on average. MFU = F · tokens/s ÷ peak FLOP/s of all devices.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bfloat16 peak FLOP/s per chip, from the vendors' datasheets.
PEAK_FLOPS_PER_CHIP = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
}


def flops_per_token(model_config, seq_len: int, matmul_params: int, *, causal: bool = True) -> float:
    """Training (forward + backward) FLOPs per token, F above."""
    head_dim = model_config.dim // model_config.num_heads
    attention = 12 * model_config.num_layers * model_config.num_heads * head_dim * seq_len
    return 6 * matmul_params + (attention / 2 if causal else attention)


def peak_flops_of(device) -> float | None:
    """The table's peak for a device kind (longest matching name), or None if unknown."""
    kind = device.device_kind
    matches = [name for name in PEAK_FLOPS_PER_CHIP if kind.startswith(name) or name in kind]
    return PEAK_FLOPS_PER_CHIP[max(matches, key=len)] if matches else None


def measured_matmul_flops(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 `size`² matmul on the default device, best of `repeats` (CPU fallback)."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def total_peak_flops(configured_per_device: float | None = None) -> float:
    """Peak FLOP/s of the whole job: per-device peak × devices, or, on CPU, a measured matmul.

    On CPU the fake devices share the host's cores, so the host's measured rate counts once per process.
    """
    devices = jax.devices()
    if configured_per_device:
        return configured_per_device * len(devices)
    per_chip = peak_flops_of(devices[0])
    if per_chip is not None:
        return per_chip * len(devices)
    return measured_matmul_flops() * jax.process_count()
