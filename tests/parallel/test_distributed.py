"""research/parallel/distributed.py: explicit settings, JAX's cluster detection, a SLURM job of two processes."""

import os
import subprocess
import sys

import ml_collections
import pytest

from research.parallel import distributed
from tests.parallel.test_multihost import free_port

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
JAX_VARIABLES = tuple(distributed.ENVIRONMENT.values())


def config_with(**fields):
    settings = dict.fromkeys(distributed.FIELDS) | fields
    return ml_collections.ConfigDict({"distributed": settings})


def slurm_environment(process_id: int, port: int) -> dict:
    """What `srun --ntasks=2` on one node sets for task `process_id` (the job's port pinned)."""
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(process_id), "SLURM_LOCALID": str(process_id), "SLURM_STEP_NUM_NODES": "1",
            "JAX_COORDINATOR_PORT": str(port)}


@pytest.fixture
def no_cluster(monkeypatch):
    for name in SLURM_VARIABLES + JAX_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_nothing_given_and_no_cluster_is_a_single_process(no_cluster):
    assert distributed.detected_cluster() is None
    assert distributed.distributed_settings(config_with()) is None


def test_config_fields_override_the_environment(no_cluster):
    no_cluster.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    no_cluster.setenv("JAX_NUM_PROCESSES", "4")
    no_cluster.setenv("JAX_PROCESS_ID", "3")
    settings, source = distributed.distributed_settings(config_with(process_id=0))
    assert settings == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 0}
    assert "config.distributed" in source


def test_a_coordinator_without_a_cluster_names_the_missing_fields(no_cluster):
    with pytest.raises(ValueError, match="distributed: .* needs num_processes and process_id"):
        distributed.distributed_settings(config_with(coordinator_address="10.0.0.1:1234"))


def test_slurm_is_detected_and_explicit_fields_stay_overrides(no_cluster):
    for name, value in slurm_environment(1, 12345).items():
        no_cluster.setenv(name, value)
    assert distributed.detected_cluster() == "slurm"
    settings, source = distributed.distributed_settings(config_with())
    assert settings == {} and "slurm" in source  # JAX fills every field from the cluster
    settings, source = distributed.distributed_settings(config_with(coordinator_address="node7:999"))
    assert settings == {"coordinator_address": "node7:999"} and "overridden: coordinator_address" in source


JOIN = """
import logging, sys
import jax, ml_collections
from research.parallel import distributed
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
distributed.initialize(ml_collections.ConfigDict())
print("joined", jax.process_count(), jax.process_index(), jax.device_count(), flush=True)
"""


def test_two_processes_under_slurm_variables_join_one_job(no_cluster):
    port = free_port()
    processes = []
    for process_id in range(2):
        env = {**os.environ, **slurm_environment(process_id, port), "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
        processes.append(subprocess.Popen([sys.executable, "-c", JOIN], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    for process_id, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, output[-3000:]
        assert f"joined 2 {process_id} 2" in output, output[-3000:]
        assert "settings from the slurm cluster JAX detected" in output
