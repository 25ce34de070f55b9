"""Multi-host start-up: `jax.distributed.initialize` from the config or the environment.

Sources, first match wins: `config.distributed.{coordinator_address, num_processes,
process_id}`; the variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID;
otherwise a single process (nothing to initialise). On CPU the processes talk over gloo.
"""

import os

import jax


def distributed_settings(config) -> dict | None:
    """{coordinator_address, num_processes, process_id} for a multi-process run, else None."""
    settings = config.get("distributed", {})
    address = settings.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        return None
    num = settings.get("num_processes") or os.environ.get("JAX_NUM_PROCESSES")
    pid = settings.get("process_id")
    pid = os.environ.get("JAX_PROCESS_ID") if pid is None else pid
    if num is None or pid is None:
        raise ValueError("config field distributed: a coordinator_address needs num_processes and process_id "
                         "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    return {"coordinator_address": address, "num_processes": int(num), "process_id": int(pid)}


def initialize(config) -> None:
    """Joins the multi-process job described by the config or environment, if any."""
    settings = distributed_settings(config)
    if settings is None or jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; accelerators ignore it
    jax.distributed.initialize(**settings)
