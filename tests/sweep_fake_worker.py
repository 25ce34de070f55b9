"""`python -m tests.sweep_fake_worker ARGS`: a `research.sweep` worker (same arguments) whose trials
are tests/sweep_fake_run.py instead of research.run."""

import sys

from research import sweep


def fake_trial_command(planned, overrides, trial_dir):
    return [sys.executable, "-m", "tests.sweep_fake_run", "--config", planned.spec, "--workdir", str(trial_dir),
            *(f"--config.{field}={value}" for field, value in overrides.items())]


if __name__ == "__main__":
    sweep.trial_command = fake_trial_command
    sys.exit(sweep.main())
