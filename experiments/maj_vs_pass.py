"""DeepSeekMath's Figure 7 in shape: maj@K and pass@K for K = 1..16 before and after RL.

DeepSeekMath (§5.2.2) finds that GRPO raises maj@K (the majority answer of K samples) but not pass@K
(any of K samples correct): RL makes the output distribution more robust, it does not add
capabilities. Here: 16 samples at temperature 0.7 for each of 64 arithmetic problems of the training
levels ("in-domain") and 64 of the held-out levels, from the SFT start and from the GRPO run of
experiments/rl_comparison.py (experiments/rl_runs.py shares both); pass@K is Chen et al.'s unbiased
estimator over the 16 samples, maj@K the mean over 32 random K-subsets.
"""

from pathlib import Path

from matplotlib.figure import Figure

from experiments import rl_runs
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Estimate, Experiment, Outcome, Verdict

SPLITS = {"train": "in-domain", "held_out": "held-out"}
FULL = {"samples": 16, "count": 64}
QUICK = {"samples": 2, "count": 2}
TEMPERATURE = 0.7
MARGIN = 1 / 64  # one problem of 64: smaller differences are within the evaluation's resolution

EXPERIMENT = Experiment(
    name="maj_vs_pass",
    title="RL raises maj@K but not pass@K",
    paper="DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
    arxiv="2402.03300",
    reproduces="Fig. 7",
    claims=(Claim("maj_not_pass", "RL raises maj@K but not pass@K (K = 16, in-domain problems)"),
            Claim("maj_not_pass_held_out", "the same on held-out (harder) problems")),
    full_scale="configs/reasoning_pipeline.py:stage=grpo, model=moe; 64 samples per problem on GSM8K/MATH",
    cpu_minutes=28.9,  # SFT start 16.7 + GRPO 9.3 + sampling 2.9, wall minutes at load 4-9 on 2 cores
    paper_numbers={},
)


def curves(workdir: Path, split: str, *, quick: bool) -> dict[str, list]:
    """pass@K and maj@K for K = 1..samples of the policy in `workdir` on `split`."""
    scale = QUICK if quick else FULL
    drawn = rl_runs.sampled_answers(workdir, split, samples=scale["samples"], temperature=TEMPERATURE,
                                    count=scale["count"], max_new_tokens=rl_runs.scale(quick)["new_tokens"])
    ks = list(range(1, scale["samples"] + 1))
    return {"k": ks, "pass": [rl_runs.pass_at_k(drawn["correct"], k) for k in ks],
            "maj": [rl_runs.maj_at_k(drawn["answers"], drawn["correct"], k) for k in ks]}


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    sft_dir, _ = rl_runs.sft_start(out_dir, quick=quick, seed=seed)
    rl_dir, _ = rl_runs.rl_run(out_dir, "grpo", "grpo", quick=quick, seed=seed)
    table = {(policy, split): curves(workdir, split, quick=quick)
             for policy, workdir in (("sft", sft_dir), ("rl", rl_dir)) for split in SPLITS}
    k = table["sft", "train"]["k"][-1]
    headline, rows = {}, []
    for (policy, split), curve in table.items():
        prefix = f"{policy}_{split}"
        headline.update({f"{prefix}_pass@1": curve["pass"][0], f"{prefix}_pass@{k}": curve["pass"][-1],
                         f"{prefix}_maj@{k}": curve["maj"][-1]})
        rows += [{"policy": policy, "split": split, "k": kk, "pass@k": p, "maj@k": m}
                 for kk, p, m in zip(curve["k"], curve["pass"], curve["maj"])]
    plot = out_dir / "maj_vs_pass.png"
    draw(table, plot)
    return Outcome(headline, rows, markdown(table, k), (plot,))


def draw(table: dict, path: Path) -> None:
    figure = Figure(figsize=(10, 4))
    for axis, (split, label) in zip(figure.subplots(1, 2), SPLITS.items()):
        for policy, color in (("sft", "tab:gray"), ("rl", "tab:blue")):
            curve = table[policy, split]
            name = "SFT" if policy == "sft" else "SFT + GRPO"
            axis.plot(curve["k"], curve["maj"], "o-", color=color, label=f"{name} maj@K")
            axis.plot(curve["k"], curve["pass"], "s--", color=color, label=f"{name} pass@K")
        axis.set(xlabel="K (samples)", ylabel="accuracy", title=f"{label} arithmetic", xscale="log", xticks=[1, 2, 4, 8, 16],
                 xticklabels=["1", "2", "4", "8", "16"])
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def markdown(table: dict, k: int) -> str:
    lines = [f"| split | policy | pass@1 | pass@{k} | maj@{k} |", "|---|---|---|---|---|"]
    for split, label in SPLITS.items():
        for policy in ("sft", "rl"):
            curve = table[policy, split]
            lines.append(f"| {label} | {'SFT' if policy == 'sft' else 'SFT + GRPO'} | {curve['pass'][0]:.3f} | "
                         f"{curve['pass'][-1]:.3f} | {curve['maj'][-1]:.3f} |")
    lines += ["", f"{k} samples per problem at temperature {TEMPERATURE}; pass@K unbiased (Chen et al.), maj@K "
              "averaged over 32 random K-subsets. The full curves are the CSV rows and the plot."]
    return "\n".join(lines) + "\n"


def verdict(headline: dict[str, Estimate], split: str) -> Verdict:
    k = max(int(name.rsplit("@", 1)[1]) for name in headline if name.startswith("sft_train_pass@"))
    maj = headline[f"rl_{split}_maj@{k}"].mean - headline[f"sft_{split}_maj@{k}"].mean
    passed = headline[f"rl_{split}_pass@{k}"].mean - headline[f"sft_{split}_pass@{k}"].mean
    reason = f"after RL maj@{k} {maj:+.3f}, pass@{k} {passed:+.3f} ({SPLITS[split]})"
    if maj > MARGIN and passed <= MARGIN:
        return Verdict(HOLDS, reason)
    if maj > MARGIN:
        return Verdict(HOLDS_IN_PART, reason + ": maj@K rises, but pass@K rises too")
    return Verdict(DOES_NOT_HOLD, reason + ": maj@K does not rise beyond one problem")


def judge(headline: dict[str, Estimate]) -> dict[str, Verdict]:
    return {"maj_not_pass": verdict(headline, "train"), "maj_not_pass_held_out": verdict(headline, "held_out")}
