"""LLaMA-2's margin ablation in shape (Tables 27/28): reward-model accuracy by preference strength
without a margin, with the small margin (1, 2/3, 1/3, 0) and with the large one (3, 2, 1, 0).

    python -m experiments.reward_margin [--quick] [--steps N] [--init SFT_WORKDIR] [--workdir DIR]
                                        [--output PATH]

Each arm is configs/rlhf.py:tiny_rm (the helpfulness pairs: arithmetic, string and format prompts with
programmatically judged responses, research/data/tasks/preferences.py) with `reward_model.margin` set,
trained with the same seed and data order by research.train.loop in <workdir>/<arm>/, then scored on
the pairs of other prompts. The backbone starts from `--init` (an SFT run's workdir; LLaMA-2 starts
its reward models from the chat model) or, without it, from scratch. Writes <output>.md: accuracy per
strength and on average per arm, beside LLaMA-2's averages (62.5 / 63.0 / 62.9), and the verdict on
the paper's claim that a margin helps most on the pairs that differ most. An arm with a results.json
is not trained again.
"""

import argparse
import tempfile
from pathlib import Path


from experiments.runs import train_or_reuse
from research import config as config_lib
from research.data.tasks.preferences import STRENGTHS

ARMS = ("none", "small", "large")
PAPER_AVERAGE = {"none": 62.5, "small": 63.0, "large": 62.9}  # LLaMA-2 Table 28, Meta helpfulness test set
QUICK = ["model.dim=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2", "model.hidden_dim=64",
         "model.vocab_size=265", "data.tokenizer=byte", "train.seq_len=160", "data.preferences.count=60",
         "optimizer.warmup_steps=2", "train.log_every=1"]
COLUMNS = [name.split()[0] for name in STRENGTHS]


def arm_config(margin: str, args):
    overrides = [f"reward_model.margin={margin}", f"train.steps={args.steps}", "train.checkpoint_every=0"]
    if args.init:
        overrides += [f"init_from.path={args.init}"]
    else:
        overrides += ["init_from.kind=none", "init_from.path=", "init_from.into="]
    return config_lib.load("configs/rlhf.py:tiny_rm", overrides + (QUICK if args.quick else []))


def table(results: dict, args) -> str:
    """The markdown report of the arms' accuracies."""
    start = f"the SFT run {args.init}" if args.init else "scratch (no --init)"
    lines = [
        "# Reward-model margin ablation (LLaMA-2 Tables 27/28 in shape)", "",
        f"configs/rlhf.py:tiny_rm{' --quick' if args.quick else ''}, {args.steps} steps per arm, backbone from {start}; "
        "accuracy = share of held-out pairs with r_chosen > r_rejected, in %.", "",
        "| margin | " + " | ".join(COLUMNS) + " | average | LLaMA-2 average |",
        "|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    for arm, result in results.items():
        cells = [f"{100 * result.get(f'preferences_accuracy_{c}', float('nan')):.1f}" for c in COLUMNS]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {100 * result['preferences_accuracy']:.1f} | "
                     f"{PAPER_AVERAGE[arm]} |")
    best = max(results, key=lambda arm: results[arm]["preferences_accuracy"])
    strongest = {arm: r.get("preferences_accuracy_significantly", 0.0) for arm, r in results.items()}
    lines += ["", f"Verdict: best average with margin {best!r}; on 'significantly better' pairs the arms score "
              + ", ".join(f"{arm} {100 * value:.1f}" for arm, value in strongest.items())
              + ". LLaMA-2 reports that a margin helps most on the most separable pairs and slightly on average "
              "(62.5 → 63.0); "
              + ("this run agrees on the average." if results["none"]["preferences_accuracy"]
                 <= max(results["small"]["preferences_accuracy"], results["large"]["preferences_accuracy"])
                 else "this run does not reproduce the average gain.")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a minute: byte tokenizer, 2-layer model, few steps")
    parser.add_argument("--steps", type=int, default=None, help="steps per arm (default 150, --quick 8)")
    parser.add_argument("--init", default="", help="an SFT run's workdir to start each backbone from")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default=None, help="report path without suffix (default "
                        "experiments/results/reward_margin; --quick: inside the workdir)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (8 if args.quick else 150)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="reward_margin_"))
    results = {arm: train_or_reuse(arm_config(arm, args), workdir / arm) for arm in ARMS}
    report = table(results, args)
    default = workdir / "reward_margin" if args.quick else Path("experiments/results/reward_margin")
    output = Path(args.output) if args.output else default
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(report)
    print(report)
    return report


if __name__ == "__main__":
    main()
