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

The SFT start is rl_runs.SMALL_PIECES (3 layers of width 96 on SentencePiece pieces). GRPO also runs from two
more starts, fine-tuned the same way: rl_runs.WIDE_BYTES (4 layers of width 128 on bytes, every digit a token;
the lengths scaled to bytes) and rl_runs.CODING (SMALL_PIECES's decoder on the coding suite, 1-2 operations in
training and 3-4 held out, judged by unit tests in the sandbox), where the start is far off the floor.

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
# (headline prefix, start, its arms, what its rows add to the method's name)
STARTS = (("", rl_runs.SMALL_PIECES, ARMS, ""), ("wide_bytes_", rl_runs.WIDE_BYTES, ARMS[:1], ", 4x128 on bytes"),
          ("coding_", rl_runs.CODING, ARMS[:1], ", coding"))
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
    # wall minutes, each at load 2-9: SFT start 16.7, GRPO 9.3, k1.5 9.2, PPO 10.5; 4x128 on bytes: SFT 29.7,
    # GRPO 6.2; coding: SFT 15.6, GRPO 10.5
    cpu_minutes=107.7,
    paper_numbers={},
)


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    headline, rows, traces = {}, [], {}
    for prefix, start, arms, tag in STARTS:
        _, sft = rl_runs.sft_start(out_dir, quick=quick, seed=seed, start=start)
        headline.update({f"{prefix}sft_held_out": sft["held_out_pass@1"],
                         f"{prefix}sft_in_domain": sft["in_domain_pass@1"]})
        rows.append({"method": f"SFT start{tag}", "in_domain_pass@1": sft["in_domain_pass@1"],
                     "held_out_pass@1": sft["held_out_pass@1"], "held_out_mean_length": sft["held_out_mean_length"],
                     "sampled_responses": 0, "sampled_tokens": 0})
        for arm in arms:
            workdir, results = rl_runs.rl_run(out_dir, arm.name, arm.stage, quick=quick, seed=seed,
                                              overrides=arm.overrides, start=start)
            label, trace = f"{arm.label}{tag}", rl_runs.curves(workdir)
            traces[label] = (trace, sft["held_out_pass@1"])
            headline.update({f"{prefix}{arm.name}_held_out": results["held_out_pass@1"],
                             f"{prefix}{arm.name}_in_domain": results["in_domain_pass@1"],
                             f"{prefix}{arm.name}_length": results["held_out_mean_length"]})
            rows.append({"method": label, "in_domain_pass@1": results["in_domain_pass@1"],
                         "held_out_pass@1": results["held_out_pass@1"],
                         "held_out_mean_length": results["held_out_mean_length"],
                         "sampled_responses": len(trace["length"]) * scale_of(workdir),
                         "sampled_tokens": int(sum(trace["length"]) * scale_of(workdir))})
    plot = out_dir / "rl_comparison.png"
    draw(traces, plot)
    return Outcome(headline, rows, markdown(rows, rl_runs.scale(quick)["eval_count"]), (plot,))


def scale_of(workdir: Path) -> int:
    """Responses sampled per step of the run in `workdir` (prompts x group; PPO: one to each prompt)."""
    config = rl_runs.run_config(workdir)
    return config.ppo.prompts_per_step if config.trainer == "ppo" else config.rl.prompts_per_step * config.rl.group_size


def draw(traces: dict, path: Path) -> None:
    """Per run (`traces`: its label -> (rl_runs.curves, its SFT start's held-out pass@1)): rollout accuracy,
    held-out pass@1 from the start (step 0) to the evaluations, response lengths."""
    figure = Figure(figsize=(10, 4))
    accuracy, length = figure.subplots(1, 2)
    for index, (label, (trace, start_held_out)) in enumerate(traces.items()):
        color = f"C{index}"
        accuracy.plot(trace["step"], trace["accuracy"], color=color, alpha=0.5, label=f"{label} rollouts")
        accuracy.plot([0] + trace["eval_step"], [start_held_out] + trace["held_out"], "o-", color=color,
                      label=f"{label} held-out pass@1")
        length.plot(trace["step"], trace["length"], color=color, label=label)
    accuracy.set(xlabel="RL step", ylabel="accuracy", title="accuracy (rollouts: in-domain, sampled)")
    length.set(xlabel="RL step", ylabel="response tokens (or bytes)", title="mean rollout response length")
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
              "rewarded by the same verifier, with a critic started from the SFT decoder. Rows \"4x128 on bytes\" "
              "start from a 4-layer, width-128 decoder fine-tuned on bytes (every digit a token); their lengths "
              "are in bytes. Rows \"coding\" are on the coding suite (1-2 operations in training, 3-4 held out; "
              f"{count} problems each), judged by unit tests in the sandbox."]
    return "\n".join(lines) + "\n"


def judge(headline: dict[str, Estimate]) -> dict[str, Verdict]:
    gains, numbers = {}, []
    for prefix, _, arms, tag in STARTS:
        sft = headline[f"{prefix}sft_held_out"].mean
        runs = ", ".join(f"{arm.label} {headline[f'{prefix}{arm.name}_held_out'].mean:.3f}" for arm in arms)
        numbers.append(f"from {sft:.3f} (SFT{tag}) to {runs}")
        gains.update({f"{arm.label}{tag}": headline[f"{prefix}{arm.name}_held_out"].mean - sft for arm in arms})
    best = max(gains, key=gains.get)
    if gains[best] > TIE:
        raised = Verdict(HOLDS if min(gains.values()) > TIE else HOLDS_IN_PART,
                         f"held-out pass@1 {'; '.join(numbers)} (best: {best}, {gains[best]:+.3f})")
    else:
        raised = Verdict(DOES_NOT_HOLD, f"held-out pass@1 {'; '.join(numbers)}: no gain beyond one problem")
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
