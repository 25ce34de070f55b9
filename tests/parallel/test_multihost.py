"""Two JAX processes on localhost (gloo) train a few steps together through research.run."""

import json
import os
import socket
import subprocess
import sys

from research.train.metrics import read_metrics
from tests.train.conftest import tiny_overrides


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_together_and_only_process_zero_writes(tmp_path):
    port = free_port()
    overrides = [f"--config.{o}" for o in tiny_overrides(train__steps=4, train__checkpoint_every=2,
                                                          train__eval_every=2)]
    processes = []
    for process_id in range(2):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(process_id)}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "research.run", "--config", "configs/llama2.py:tiny",
             "--workdir", str(tmp_path), *overrides],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["step"] == 4
    assert [r["step"] for r in read_metrics(str(tmp_path)) if "loss" in r] == [1, 2, 3, 4]
    assert '"eval_loss"' in outputs[0] and '"eval_loss"' not in outputs[1]
    assert {"4.0.json", "4.1.json"} <= set(os.listdir(tmp_path / "checkpoints" / "data_state"))
