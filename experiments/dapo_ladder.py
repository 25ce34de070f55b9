"""DAPO's ablation ladder (its Table 1 in shape): from naive GRPO, DAPO's techniques added one at a time.

Every rung is an RL run from the same SFT start on the same problems and steps (experiments/rl_runs.py),
each adding one switch of configs/rlvr.py's `rl` to the rung before:

    naive GRPO                 configs/rlvr.py:tiny_grpo (ε 0.2, β 0.04, per-sequence mean, std-scaled)
    + overlong filtering       truncated responses leave the loss (rl.overlong_filter)
    + clip-higher              ε_high 0.28 (rl.clip_high)
    + soft overlong punishment the length penalty over L_max − L_cache (rl.soft_overlong)
    + token-level loss         token mean over the batch (rl.aggregation = "token_mean")
    + dynamic sampling         groups whose rewards are all equal dropped and refilled (rl.dynamic_sampling)

The ladder keeps DeepSeekMath's β 0.04 KL term throughout (DAPO also drops it: configs/rlvr.py:tiny_dapo).
Dynamic sampling samples more than the other rungs (up to 3 refills a step); its extra rollouts are counted.
"""

from pathlib import Path

from matplotlib.figure import Figure

from experiments import rl_runs
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Estimate, Experiment, Outcome, Verdict
from research.train.metrics import read_metrics

RUNGS = (  # (run name, label, the switch this rung adds)
    ("grpo", "naive GRPO", ()),
    ("dapo_overlong_filter", "+ overlong filtering", ("rl.overlong_filter=True",)),
    ("dapo_clip_higher", "+ clip-higher", ("rl.clip_high=0.28",)),
    ("dapo_soft_overlong", "+ soft overlong punishment", ("rl.soft_overlong.enabled=True",)),
    ("dapo_token_loss", "+ token-level loss", ("rl.aggregation=token_mean",)),
    ("dapo_dynamic_sampling", "+ dynamic sampling", ("rl.dynamic_sampling=True",)),
)
MARGIN = 1 / rl_runs.FULL["eval_count"]  # one held-out evaluation problem

EXPERIMENT = Experiment(
    name="dapo_ladder",
    title="DAPO's ablation ladder: naive GRPO to DAPO, one technique at a time",
    paper="DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
    arxiv="2503.14476",
    reproduces="Table 1",
    claims=(Claim("full_beats_naive", "DAPO with all techniques beats naive GRPO (AIME 30 → 50 in the paper)"),
            Claim("each_rung_helps", "each technique adds accuracy over the rung before")),
    full_scale="configs/reasoning_pipeline.py:stage=dapo, model=moe; Qwen2.5-32B on AIME in the paper",
    cpu_minutes=59.1,  # SFT start 16.7 + naive GRPO 9.3 + five more rungs 33.1, wall minutes at load 1-6 on 2 cores
    paper_numbers={"grpo_held_out": 30, "dapo_overlong_filter_held_out": 36, "dapo_clip_higher_held_out": 38,
                   "dapo_soft_overlong_held_out": 41, "dapo_token_loss_held_out": 42,
                   "dapo_dynamic_sampling_held_out": 50},
)


def rung_overrides(index: int) -> list[str]:
    """The switches of rungs 1..index together."""
    return [field for _, _, fields in RUNGS[:index + 1] for field in fields]


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    _, sft = rl_runs.sft_start(out_dir, quick=quick, seed=seed)
    headline = {"sft_held_out": sft["held_out_pass@1"]}
    rows = []
    for index, (name, label, _) in enumerate(RUNGS):
        workdir, results = rl_runs.rl_run(out_dir, name, "grpo", quick=quick, seed=seed, overrides=rung_overrides(index))
        trace = rl_runs.curves(workdir)
        refills = int(sum(r.get("rollout_refills", 0) for r in read_metrics(str(workdir))))
        headline[f"{name}_held_out"] = results["held_out_pass@1"]
        rows.append({"rung": label, "in_domain_pass@1": results["in_domain_pass@1"],
                     "held_out_pass@1": results["held_out_pass@1"], "held_out_mean_length": results["held_out_mean_length"],
                     "final_rollout_accuracy": trace["accuracy"][-1], "refills": refills})
    plot = out_dir / "dapo_ladder.png"
    draw(rows, sft, plot)
    return Outcome(headline, rows, markdown(rows, sft, rl_runs.scale(quick)["eval_count"]), (plot,))


def draw(rows: list, sft: dict, path: Path) -> None:
    figure = Figure(figsize=(9, 4))
    axis = figure.subplots()
    positions = range(len(rows))
    axis.bar([p - 0.2 for p in positions], [r["in_domain_pass@1"] for r in rows], 0.4, label="in-domain pass@1")
    axis.bar([p + 0.2 for p in positions], [r["held_out_pass@1"] for r in rows], 0.4, label="held-out pass@1")
    axis.axhline(sft["held_out_pass@1"], color="black", linestyle=":", label="SFT start, held-out")
    axis.set_xticks(list(positions), [r["rung"] for r in rows], rotation=20, ha="right", fontsize=8)
    axis.set(ylabel="greedy pass@1", title="DAPO ladder (cumulative)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def markdown(rows: list, sft: dict, count: int) -> str:
    lines = ["| rung | in-domain pass@1 | held-out pass@1 | held-out length | last rollout accuracy | refills |",
             "|---|---|---|---|---|---|",
             f"| SFT start | {sft['in_domain_pass@1']:.3f} | {sft['held_out_pass@1']:.3f} | "
             f"{sft['held_out_mean_length']:.1f} | | |"]
    lines += [f"| {r['rung']} | {r['in_domain_pass@1']:.3f} | {r['held_out_pass@1']:.3f} | "
              f"{r['held_out_mean_length']:.1f} | {r['final_rollout_accuracy']:.3f} | {r['refills']} |" for r in rows]
    lines += ["", "Each rung adds its technique to all the ones above it. "
              f"Greedy pass@1 on {count} problems per split."]
    return "\n".join(lines) + "\n"


def judge(headline: dict[str, Estimate]) -> dict[str, Verdict]:
    accuracy = [headline[f"{name}_held_out"].mean for name, _, _ in RUNGS]
    gain = accuracy[-1] - accuracy[0]
    full = Verdict(HOLDS if gain > MARGIN else DOES_NOT_HOLD,
                   f"held-out pass@1 naive GRPO {accuracy[0]:.3f} → all of DAPO {accuracy[-1]:.3f} ({gain:+.3f})")
    steps = [after - before for before, after in zip(accuracy, accuracy[1:])]
    helped = sum(step > MARGIN for step in steps)
    described = ", ".join(f"{label} {step:+.3f}" for (_, label, _), step in zip(RUNGS[1:], steps))
    status = HOLDS if helped == len(steps) else HOLDS_IN_PART if helped else DOES_NOT_HOLD
    return {"full_beats_naive": full, "each_rung_helps": Verdict(status, f"{helped} of {len(steps)} rungs gain more "
                                                                          f"than one problem: {described}")}
