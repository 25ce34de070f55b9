"""Where a Pallas attention kernel runs, from its `interpret` argument, the default backend and
`lowering_for` (ahead-of-time lowering for an accelerator this host does not have)."""

import contextlib
import contextvars

import jax

_LOWERING_TARGET = contextvars.ContextVar("pallas_lowering_target", default=None)
TARGETS = ("tpu", "gpu")


def compile_target(interpret) -> str:
    """"interpret", "gpu" (Triton) or "tpu" (Mosaic).

    interpret=True: the interpreter. Inside `lowering_for(target)`: that target. Otherwise the
    default backend's compiler, and on a CPU backend the interpreter (interpret=None) or Mosaic
    (interpret=False: lowering ahead of time for TPU).
    """
    if interpret:
        return "interpret"
    target = _LOWERING_TARGET.get()
    if target is not None:
        return target
    backend = jax.default_backend()
    if interpret is None and backend == "cpu":
        return "interpret"
    return "gpu" if backend == "gpu" else "tpu"


@contextlib.contextmanager
def lowering_for(target: str):
    """Kernels traced inside this context compile for `target` ("tpu" or "gpu") unless they ask for
    the interpreter, whatever the default backend: research/tools/aot.py lowers a model's train
    step for TPU on a CPU host, where the kernels would otherwise be interpreted (plain HLO loops
    that say nothing of the real kernels' memory or speed)."""
    if target not in TARGETS:
        raise ValueError(f"lowering target {target!r} is not one of {TARGETS}")
    token = _LOWERING_TARGET.set(target)
    try:
        yield
    finally:
        _LOWERING_TARGET.reset(token)
