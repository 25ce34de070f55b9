"""Runs one experiment: `python -m research.run --config configs/X.py:ARG --workdir DIR [--config.a.b=v ...]`.

Loads and validates the config, joins a multi-host job if one is configured, then hands
over to the shared training loop. Running the same command again resumes the run.
"""

import argparse
import json
import logging
import sys

import jax

from research import config as config_lib
from research.parallel import distributed
from research.train.loop import train


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file and argument, e.g. configs/llama2.py:tiny")
    parser.add_argument("--workdir", required=True, help="where checkpoints, metrics and results go")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognised argument {item!r}; overrides look like --config.train.steps=100")
        overrides.append(item)
    return args, overrides


def main(argv=None) -> dict:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config = config_lib.load(args.config, overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    distributed.initialize(config)  # before anything asks jax for devices
    results = train(config, args.workdir)
    if jax.process_index() == 0:
        for sample in results.get("samples", []):
            print(f"  sample: {sample!r}")
        summary = {k: v for k, v in results.items() if k != "samples"}
        print(json.dumps(summary, indent=2))
    return results


if __name__ == "__main__":
    main()
