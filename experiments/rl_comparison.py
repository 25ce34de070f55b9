"""GRPO against Kimi k1.5 (and PPO) on the same budget, from the same SFT start (experiments/rl_runs.py).

Every arm (ARMS: its run's name, the pipeline's RL stage, its overrides) samples the same number of
responses (4 arithmetic problems x 8 responses a step for 60 steps at learning rate 3e-4, the same problem
order), so the sampled-token totals differ only by the responses' lengths:

    grpo   DeepSeekMath's GRPO: clipped ratio (ε 0.2), β 0.04 k3 KL, group advantages scaled by std
    kimi   Kimi k1.5 §2.3: the squared surrogate (r − r̄ − τ·log π/π_old)², τ 0.1, no critic, the
           optimizer reset every step, the length reward (weight 0.5 after 10 warm-up steps)

    ppo    PPO with verifiable rewards (configs/rlvr.py:tiny_ppo, pipeline stage ppo_rlvr): one response to
           each of 32 problems a step (the same 32 responses), the verifier reward at the last token, β 0.02
           k1 KL in the reward, a critic started from the SFT decoder, GAE (γ 1, λ 0.95), clip 0.2

Plots: rollout accuracy and held-out greedy pass@1 per step; response length per step.
"""

import dataclasses
from pathlib import Path

from matplotlib.figure import Figure

from experiments import rl_runs
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Estimate, Experiment, Outcome, Verdict


@dataclasses.dataclass(frozen=True)
class Arm:
    """One RL method of the race: `name` keys its run directory and headline numbers, `label` its table row
    and plot lines; `stage` is the reasoning pipeline's RL stage, `overrides` ("rl.field=value") apply last."""
    name: str
    label: str
    stage: str
    overrides: tuple[str, ...] = ()


ARMS = (Arm("grpo", "GRPO", "grpo"), Arm("kimi", "k1.5", "kimi"), Arm("ppo", "PPO", "ppo_rlvr"))
LABELS = {arm.name: arm.label for arm in ARMS}
TIE = 1 / rl_runs.FULL["eval_count"]  # one held-out problem: differences below it are within the resolution

EXPERIMENT = Experiment(
    name="rl_comparison",
    title="GRPO vs Kimi k1.5 vs PPO on the same sampling budget",
    paper="Kimi k1.5: Scaling Reinforcement Learning with LLMs (with DeepSeekMath's GRPO as the baseline)",
    arxiv="2501.12599",
    reproduces="§2.3 (policy optimisation without a value network) in shape",
    claims=(
        Claim("rl_raises_held_out", "RL from the SFT start raises held-out (harder) accuracy above the SFT start"),
        Claim("k15_matches_grpo", "k1.5's squared surrogate, without a critic, learns as well as GRPO on the "
                                  "same budget"),
    ),
    full_scale="configs/reasoning_pipeline.py:stage=grpo / stage=kimi, model=moe on a v5p-64 slice",
    cpu_minutes=35.5,  # SFT start 16.7 + GRPO 9.3 + k1.5 9.2 (side by side) + report 0.3, wall minutes at load 4-9
    paper_numbers={},
)


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    _, sft = rl_runs.sft_start(out_dir, quick=quick, seed=seed)
    runs = {arm.name: rl_runs.rl_run(out_dir, arm.name, arm.stage, quick=quick, seed=seed, overrides=arm.overrides)
            for arm in ARMS}
    headline = {"sft_held_out": sft["held_out_pass@1"], "sft_in_domain": sft["in_domain_pass@1"]}
    rows = [{"method": "SFT start", "in_domain_pass@1": sft["in_domain_pass@1"],
             "held_out_pass@1": sft["held_out_pass@1"], "held_out_mean_length": sft["held_out_mean_length"],
             "sampled_responses": 0, "sampled_tokens": 0}]
    traces = {}
    for name, (workdir, results) in runs.items():
        traces[name] = rl_runs.curves(workdir)
        tokens = sum(traces[name]["length"]) * scale_of(workdir)
        headline.update({f"{name}_held_out": results["held_out_pass@1"], f"{name}_in_domain": results["in_domain_pass@1"],
                         f"{name}_length": results["held_out_mean_length"]})
        rows.append({"method": LABELS[name], "in_domain_pass@1": results["in_domain_pass@1"],
                     "held_out_pass@1": results["held_out_pass@1"], "held_out_mean_length": results["held_out_mean_length"],
                     "sampled_responses": len(traces[name]["length"]) * scale_of(workdir), "sampled_tokens": int(tokens)})
    plot = out_dir / "rl_comparison.png"
    draw(traces, sft, plot)
    return Outcome(headline, rows, markdown(rows, rl_runs.scale(quick)["eval_count"]), (plot,))


def scale_of(workdir: Path) -> int:
    """Responses sampled per step of the run in `workdir` (prompts x group; PPO: one to each prompt)."""
    config = rl_runs.run_config(workdir)
    return config.ppo.prompts_per_step if config.trainer == "ppo" else config.rl.prompts_per_step * config.rl.group_size


def draw(traces: dict, sft: dict, path: Path) -> None:
    figure = Figure(figsize=(10, 4))
    accuracy, length = figure.subplots(1, 2)
    for index, (name, trace) in enumerate(traces.items()):
        color = f"C{index}"
        accuracy.plot(trace["step"], trace["accuracy"], color=color, alpha=0.5, label=f"{LABELS[name]} rollouts")
        accuracy.plot([0] + trace["eval_step"], [sft["held_out_pass@1"]] + trace["held_out"], "o-", color=color,
                      label=f"{LABELS[name]} held-out pass@1")
        length.plot(trace["step"], trace["length"], color=color, label=LABELS[name])
    accuracy.set(xlabel="RL step", ylabel="accuracy", title="accuracy (rollouts: in-domain, sampled)")
    length.set(xlabel="RL step", ylabel="response tokens", title="mean rollout response length")
    accuracy.legend(fontsize=7)
    length.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def markdown(rows: list, count: int) -> str:
    lines = ["| method | in-domain pass@1 | held-out pass@1 | held-out length | sampled responses | sampled tokens |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['in_domain_pass@1']:.3f} | {r['held_out_pass@1']:.3f} | "
              f"{r['held_out_mean_length']:.1f} | {r['sampled_responses']} | {r['sampled_tokens']} |" for r in rows]
    lines += ["", f"Greedy decoding on {count} in-domain (1-3 steps) and {count} held-out (4-5 steps) arithmetic "
              "problems. PPO samples one response to each of 32 problems a step (GRPO and k1.5: 8 to each of 4), "
              "rewarded by the same verifier, with a critic started from the SFT decoder."]
    return "\n".join(lines) + "\n"


def judge(headline: dict[str, Estimate]) -> dict[str, Verdict]:
    sft = headline["sft_held_out"].mean
    gains = {name: headline[f"{name}_held_out"].mean - sft for name in LABELS}
    best = max(gains, key=gains.get)
    numbers = ", ".join(f"{label} {headline[f'{name}_held_out'].mean:.3f}" for name, label in LABELS.items())
    if gains[best] > TIE:
        raised = Verdict(HOLDS if min(gains.values()) > TIE else HOLDS_IN_PART,
                         f"held-out pass@1 from {sft:.3f} (SFT) to {numbers}")
    else:
        raised = Verdict(DOES_NOT_HOLD, f"held-out pass@1 {sft:.3f} (SFT) vs {numbers}: no gain beyond one problem")
    in_domain = {name: headline[f"{name}_in_domain"].mean - headline["sft_in_domain"].mean for name in LABELS}
    detail = f"in-domain gain over SFT: GRPO {in_domain['grpo']:+.3f}, k1.5 {in_domain['kimi']:+.3f}"
    if in_domain["kimi"] < -TIE:
        matches = Verdict(DOES_NOT_HOLD, detail + " (k1.5 falls below its SFT start)")
    elif max(in_domain.values()) <= TIE:
        matches = Verdict(DOES_NOT_HOLD, detail + ": neither gains more than one problem, nothing to compare")
    elif in_domain["kimi"] >= in_domain["grpo"] - TIE:
        matches = Verdict(HOLDS, detail)
    elif in_domain["kimi"] > TIE:
        matches = Verdict(HOLDS_IN_PART, detail + " (k1.5 learns, less than GRPO)")
    else:
        matches = Verdict(DOES_NOT_HOLD, detail)
    return {"rl_raises_held_out": raised, "k15_matches_grpo": matches}
