"""LLaMA-2's margin ablation in shape (Tables 27/28): reward-model accuracy by preference strength
without a margin, with the small margin (1, 2/3, 1/3, 0) and with the large one (3, 2, 1, 0).

Each arm is configs/rlhf.py:tiny_rm (the helpfulness pairs: arithmetic, string and format prompts with
programmatically judged responses, research/data/tasks/preferences.py) with `reward_model.margin` set,
trained from scratch with the same seed and data order by research.train.loop in <out_dir>/<arm>/,
then scored on the pairs of other prompts (LLaMA-2 starts its reward models from the chat model; the
arms here share a random start instead, so the comparison between them stays fair). A finished arm
is not trained again.
"""

from pathlib import Path

from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Experiment, Outcome, Verdict
from experiments.runs import train_or_reuse
from research import config as config_lib
from research.data.tasks.preferences import STRENGTHS

ARMS = ("none", "small", "large")
STEPS, QUICK_STEPS = 150, 3
QUICK = ["model.dim=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2", "model.hidden_dim=64",
         "model.vocab_size=265", "data.tokenizer=byte", "train.seq_len=160", "data.preferences.count=60",
         "optimizer.warmup_steps=2", "train.log_every=1"]
COLUMNS = [name.split()[0] for name in STRENGTHS]

EXPERIMENT = Experiment(
    name="reward_margin",
    title="Reward-model margin ablation (LLaMA-2 Tables 27/28 in shape)",
    paper="LLaMA-2 (Touvron et al., 2023)", arxiv="2307.09288", reproduces="Tables 27/28",
    claims=(Claim("average", "a margin in the ranking loss raises average reward-model accuracy slightly"),
            Claim("separable", "the margin helps most on the most separable pairs (significantly better)")),
    full_scale="configs/rlhf.py:tiny_rm's recipe on a configs/llama2.py:7b backbone started from the SFT run "
                "(init_from), v5p-8 (the 7B row of experiments/results/pod_fit.md)",
    cpu_minutes=12,
    paper_numbers={"accuracy_none": 62.5, "accuracy_small": 63.0, "accuracy_large": 62.9},
)


def arm_config(margin: str, *, quick: bool, seed: int):
    overrides = [f"reward_model.margin={margin}", f"train.steps={QUICK_STEPS if quick else STEPS}",
                 "train.checkpoint_every=0", f"seed={seed}", "init_from.kind=none", "init_from.path=",
                 "init_from.into="]
    return config_lib.load("configs/rlhf.py:tiny_rm", overrides + (QUICK if quick else []))


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    """Trains the three arms and tabulates held-out accuracy (in %) per preference strength."""
    results = {arm: train_or_reuse(arm_config(arm, quick=quick, seed=seed), out_dir / arm) for arm in ARMS}
    rows = [{"margin": arm, **{c: 100 * r.get(f"preferences_accuracy_{c}", float("nan")) for c in COLUMNS},
             "average": 100 * r["preferences_accuracy"]} for arm, r in results.items()]
    lines = [f"configs/rlhf.py:tiny_rm{' (quick)' if quick else ''}, {QUICK_STEPS if quick else STEPS} steps per "
             "arm from scratch; accuracy = share of held-out pairs with r_chosen > r_rejected, in %.", "",
             "| margin | " + " | ".join(COLUMNS) + " | average |", "|---|" + "---|" * (len(COLUMNS) + 1)]
    lines += [f"| {row['margin']} | " + " | ".join(f"{row[c]:.1f}" for c in COLUMNS) + f" | {row['average']:.1f} |"
              for row in rows]
    headline = {f"accuracy_{row['margin']}": row["average"] for row in rows}
    headline.update({f"separable_{row['margin']}": row[COLUMNS[0]] for row in rows})
    return Outcome(headline=headline, rows=rows, markdown="\n".join(lines))


def judge(headline: dict) -> dict:
    """Average: a margin arm beats no margin by more than the seeds' spread (holds), within it (holds in
    part), or loses. Separable pairs: the same on the 'significantly better' column."""
    def compare(prefix: str, what: str) -> Verdict:
        none, best = headline[f"{prefix}_none"], max((headline[f"{prefix}_{a}"] for a in ARMS[1:]), key=lambda e: e.mean)
        gain, spread = best.mean - none.mean, max(best.std, none.std)
        text = f"{what}: no margin {none.mean:.1f}, best margin {best.mean:.1f} ({gain:+.1f} points, seed std {spread:.1f})"
        if gain > spread and gain > 0:
            return Verdict(HOLDS, text)
        return Verdict(HOLDS_IN_PART if gain > 0 else DOES_NOT_HOLD, text)
    return {"average": compare("accuracy", "average accuracy"),
            "separable": compare("separable", "accuracy on significantly-better pairs")}
