"""research/train/metrics.py: metrics.jsonl and TensorBoard scalars, written without importing PyTorch."""

import subprocess
import sys

from research.train.metrics import MetricsWriter, read_metrics

WRITE_THEN_REPORT_TORCH = """
import sys
from research.train.metrics import MetricsWriter
MetricsWriter(sys.argv[1]).write(1, {"loss": 2.5})
print("torch" in sys.modules)
import torch  # still importable afterwards
print(torch.tensor([1.0, 2.0]).sum().item())
"""


def test_a_resumed_writer_drops_the_lines_after_its_step_and_writes_tensorboard_events(tmp_path):
    first = MetricsWriter(str(tmp_path))
    for step in (1, 2, 3):
        first.write(step, {"loss": float(step)})
    MetricsWriter(str(tmp_path), resume_step=2).write(3, {"loss": 30.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path))] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert any(p.name.startswith("events") for p in (tmp_path / "tensorboard").iterdir())


def test_the_tensorboard_writer_leaves_torch_unimported_and_importable(tmp_path):
    completed = subprocess.run([sys.executable, "-c", WRITE_THEN_REPORT_TORCH, str(tmp_path)], capture_output=True,
                               text=True)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["False", "3.0"]
    assert [r["loss"] for r in read_metrics(str(tmp_path))] == [2.5]
