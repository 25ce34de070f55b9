"""A stand-in for `python -m research.run` in the sweep's tests: its command line, workdir lock and
exit statuses, without JAX, so the workers' own behaviour is tested in seconds.

eval_loss = (log10(learning_rate) + 2.5)² + weight_decay. A learning rate above 1 diverges (exit 1).
The run takes STEPS steps of $FAKE_STEP_S seconds, each saved to <workdir>/step, so SIGTERM ends it
with status 75 and a rerun resumes ("resumed from step K" in its log). <workdir>/ran_by gets the
worker's pid (the parent) on every start.
"""

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from research.train.workdir_lock import WorkdirLock

STEPS = 10


def main(argv) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--workdir", type=Path)
    args, rest = parser.parse_known_args(argv)
    overrides = dict(item.removeprefix("--config.").split("=", 1) for item in rest)
    learning_rate = float(overrides.get("optimizer.learning_rate", "1e-3"))
    weight_decay = float(overrides.get("optimizer.weight_decay", "0"))
    stop_requested = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    with WorkdirLock(args.workdir):
        with (args.workdir / "ran_by").open("a") as ran_by:
            ran_by.write(f"{os.getppid()}\n")
        checkpoint = args.workdir / "step"
        step = int(checkpoint.read_text()) if checkpoint.exists() else 0
        print(f"resumed from step {step}" if step else "started", flush=True)
        if learning_rate > 1:
            print("research.run: loss is nan at step 1; stopping", flush=True)
            return 1
        while step < STEPS:
            time.sleep(float(os.environ.get("FAKE_STEP_S", "0")))
            step += 1
            checkpoint.write_text(str(step))
            if stop_requested:
                print(f"research.run: preempted at step {step}", flush=True)
                return 75
        loss = (math.log10(learning_rate) + 2.5) ** 2 + weight_decay
        (args.workdir / "results.json").write_text(json.dumps({"step": step, "eval_loss": loss}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
