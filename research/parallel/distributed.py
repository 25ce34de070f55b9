"""Multi-host start-up: `jax.distributed.initialize` from the config, the environment or the cluster.

Sources, the first that says anything wins, field by field:

1. `config.distributed.{coordinator_address, num_processes, process_id}` (explicit overrides);
2. the variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID;
3. the cluster JAX detects (`jax._src.clusters`): a Cloud TPU pod slice (GCE or GKE), SLURM
   (`srun`), Open MPI (`mpirun`), Kubernetes; `jax.distributed.initialize` fills every field
   that 1 and 2 leave unset from it;
4. none of them: a single process, nothing to initialise.

Which source was used is logged. A coordinator address without a cluster needs the other two
fields. On CPU the processes talk over gloo.
"""

import logging
import os

import jax

log = logging.getLogger(__name__)

FIELDS = ("coordinator_address", "num_processes", "process_id")
ENVIRONMENT = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
               "process_id": "JAX_PROCESS_ID"}


def explicit_settings(config) -> dict:
    """The fields the config (first) or the JAX_* variables set: {field: value}, possibly empty."""
    settings = config.get("distributed", {})
    explicit = {}
    for field in FIELDS:
        value = settings.get(field)
        if value is None or value == "":
            value = os.environ.get(ENVIRONMENT[field]) or None
        if value is not None:
            explicit[field] = value if field == "coordinator_address" else int(value)
    return explicit


def detected_cluster() -> str | None:
    """The name of the cluster JAX's auto-detection finds here ("slurm", "ompi", "gce_tpu", ...), else
    None. JAX keeps its detectors in a private module; where it has moved, nothing is detected."""
    try:
        from jax._src.clusters import ClusterEnv
        detectors = list(ClusterEnv._cluster_types)
    except (ImportError, AttributeError):
        log.warning("this jax (%s) offers no cluster detection; set config.distributed or JAX_COORDINATOR_ADDRESS",
                    jax.__version__)
        return None
    present = (env for env in detectors if not getattr(env, "opt_in_only_method", False) and env.is_env_present())
    env = next(present, None)
    return None if env is None else getattr(env, "name", "") or env.__name__


def distributed_settings(config) -> tuple[dict, str] | None:
    """(keyword arguments for `jax.distributed.initialize`, the source in words) for a multi-process
    run, else None. A ValueError names the fields a coordinator address without a cluster lacks."""
    explicit = explicit_settings(config)
    cluster = detected_cluster()
    if cluster is not None:
        overrides = f" (overridden: {', '.join(sorted(explicit))})" if explicit else ""
        return explicit, f"the {cluster} cluster JAX detected{overrides}"
    if "coordinator_address" not in explicit:
        return None
    missing = [field for field in FIELDS if field not in explicit]
    if missing:
        raise ValueError(f"config field distributed: a coordinator_address with no cluster detected needs "
                         f"{' and '.join(missing)} (or {' and '.join(ENVIRONMENT[f] for f in missing)})")
    return explicit, "config.distributed and JAX_* variables"


def initialize(config) -> None:
    """Joins the multi-process job described by the config, environment or cluster, if any."""
    found = distributed_settings(config)
    if found is None or jax.distributed.is_initialized():
        return
    settings, source = found
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; accelerators ignore it
    jax.distributed.initialize(**settings)
    log.info("joined a job of %d processes as process %d; settings from %s", jax.process_count(),
             jax.process_index(), source)
