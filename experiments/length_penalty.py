"""Kimi k1.5's length penalty and long2short: response tokens and accuracy with and without them.

From the same SFT start and budget (experiments/rl_runs.py), k1.5's loss (configs/rlvr.py:tiny_kimi):

    k1.5, no length reward    rl.length_reward.weight = 0
    k1.5 + length reward      λ = 0.5 − (len − min)/(max − min) within each group (correct: λ, wrong:
                              min(0, λ)), weight 0.5 after 10 warm-up steps (§2.3.3)
    + long2short              from the run above, fine-tuning on the shortest correct of each group's
                              8 samples (shortest rejection sampling, §2.4; research/rl/long2short.py)

Lengths are the mean response tokens of greedy answers to the evaluation problems of experiments/rl_runs.py.
"""

from pathlib import Path

from matplotlib.figure import Figure

from experiments import rl_runs
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Estimate, Experiment, Outcome, Verdict

ARMS = (  # (run name, label, the stage its policy starts from: "sft" or a run name, overrides)
    ("kimi_no_length", "k1.5, no length reward", "sft", ("rl.length_reward.weight=0.0",)),
    ("kimi", "k1.5 + length reward", "sft", ()),
    ("kimi_long2short", "k1.5 + length reward, then long2short", "kimi",
     ("rl.loss=grpo", "rl.long2short=True", "rl.kl_coef=0.0", "rl.length_reward.weight=0.0",
      "rl.reset_optimizer=False", "init_from.into=")),
)
SHORTER = 0.02  # a length change counts from 2%
ACCURACY_TOLERANCE = 2 / rl_runs.FULL["eval_count"]  # two evaluation problems

EXPERIMENT = Experiment(
    name="length_penalty",
    title="Kimi k1.5's length penalty and long2short",
    paper="Kimi k1.5: Scaling Reinforcement Learning with LLMs",
    arxiv="2501.12599",
    reproduces="§2.3.3 (length penalty) and §2.4 / Fig. 7 (long2short) in shape",
    claims=(Claim("length_reward_shortens", "the length reward shortens responses at about the same accuracy"),
            Claim("long2short_shortens", "long2short shortens responses further at about the same accuracy")),
    full_scale="configs/reasoning_pipeline.py:stage=kimi, model=moe, then configs/rlvr.py:tiny_long2short",
    cpu_minutes=35.0,  # SFT start 16.7 + k1.5 9.2 + two more RL runs and the report 9.1, wall minutes at load 2-9
    paper_numbers={},
)


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    _, sft = rl_runs.sft_start(out_dir, quick=quick, seed=seed)
    workdirs, rows, headline = {}, [], {}
    for name, label, start, overrides in ARMS:
        fields = list(overrides) if start == "sft" else [*overrides, f"init_from.path={workdirs[start]}"]
        stage = "kimi" if start == "sft" else "grpo"
        workdirs[name], results = rl_runs.rl_run(out_dir, name, stage, quick=quick, seed=seed, overrides=fields)
        trace = rl_runs.curves(workdirs[name])
        headline.update({f"{name}_in_domain": results["in_domain_pass@1"], f"{name}_held_out": results["held_out_pass@1"],
                         f"{name}_length": results["in_domain_mean_length"]})
        rows.append({"arm": label, "in_domain_pass@1": results["in_domain_pass@1"],
                     "held_out_pass@1": results["held_out_pass@1"], "in_domain_length": results["in_domain_mean_length"],
                     "held_out_length": results["held_out_mean_length"], "rollout_length_last": trace["length"][-1]})
    plot = out_dir / "length_penalty.png"
    draw(rows, sft, plot)
    return Outcome(headline, rows, markdown(rows, sft, rl_runs.scale(quick)["eval_count"]), (plot,))


def draw(rows: list, sft: dict, path: Path) -> None:
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    points = [("SFT start", sft["in_domain_mean_length"], sft["in_domain_pass@1"])]
    points += [(r["arm"], r["in_domain_length"], r["in_domain_pass@1"]) for r in rows]
    for label, length, accuracy in points:
        axis.scatter(length, accuracy, label=label)
    axis.set(xlabel="mean response tokens (in-domain, greedy)", ylabel="in-domain pass@1",
             title="accuracy against length")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def markdown(rows: list, sft: dict, count: int) -> str:
    lines = ["| arm | in-domain pass@1 | held-out pass@1 | in-domain tokens | held-out tokens |", "|---|---|---|---|---|",
             f"| SFT start | {sft['in_domain_pass@1']:.3f} | {sft['held_out_pass@1']:.3f} | "
             f"{sft['in_domain_mean_length']:.1f} | {sft['held_out_mean_length']:.1f} |"]
    lines += [f"| {r['arm']} | {r['in_domain_pass@1']:.3f} | {r['held_out_pass@1']:.3f} | {r['in_domain_length']:.1f} | "
              f"{r['held_out_length']:.1f} |" for r in rows]
    lines += ["", f"Tokens: mean greedy response length (the stop token included) on {count} problems per split."]
    return "\n".join(lines) + "\n"


def shorter_verdict(headline: dict[str, Estimate], before: str, after: str) -> Verdict:
    length = headline[f"{after}_length"].mean / max(headline[f"{before}_length"].mean, 1e-9) - 1
    accuracy = headline[f"{after}_in_domain"].mean - headline[f"{before}_in_domain"].mean
    reason = f"in-domain tokens {length:+.1%}, in-domain pass@1 {accuracy:+.3f} ({before} → {after})"
    if length < -SHORTER and accuracy >= -ACCURACY_TOLERANCE:
        return Verdict(HOLDS, reason)
    if length < -SHORTER:
        return Verdict(HOLDS_IN_PART, reason + ": shorter, but less accurate")
    return Verdict(DOES_NOT_HOLD, reason + ": not shorter")


def judge(headline: dict[str, Estimate]) -> dict[str, Verdict]:
    return {"length_reward_shortens": shorter_verdict(headline, "kimi_no_length", "kimi"),
            "long2short_shortens": shorter_verdict(headline, "kimi", "kimi_long2short")}
