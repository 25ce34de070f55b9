"""Where a Pallas attention kernel runs, from its `interpret` argument and the default backend."""

import jax


def compile_target(interpret) -> str:
    """"interpret" (the default on CPU), "gpu" (Triton) or "tpu" (Mosaic).

    A CPU default backend with interpret=False means lowering ahead of time for TPU.
    """
    backend = jax.default_backend()
    if interpret or (interpret is None and backend == "cpu"):
        return "interpret"
    return "gpu" if backend == "gpu" else "tpu"
