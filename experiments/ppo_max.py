"""Vanilla PPO against PPO-max and its ablations, "Secrets of RLHF" (Zheng et al., 2023) Fig. 5 in shape.

Every arm is one PPO run (research/train/trainers/ppo.py) of the tiny LLaMA: the policy from a tiny SFT
run, the reward model from a tiny helpfulness reward-model run (both trained here first, and reused
when finished), on the helpfulness prompts. The arms:

    vanilla            configs/rlhf.py:tiny_ppo: clipped surrogate, per-token KL in the reward, GAE
    ppo_max            configs/rlhf.py:tiny_ppo_max: reward normalised and clipped from running
                       statistics, advantages whitened and clipped, value clipping, the critic from the
                       reward model, global gradient clipping, 2 inner epochs × 2 mini-batches
    no_<switch>        PPO-max with one switch off (reward normalisation, advantage normalisation,
                       value clipping, critic from the RM, KL penalty, gradient clipping)
    with_ptx           PPO-max plus the pretraining loss (PPO-ptx, γ 0.5)

All arms share one learning rate, ten times configs/rlhf.py's, so that the runs go far enough from
the SFT policy in a few dozen steps for the instabilities of the paper to show. Logged per rollout
and drawn over training: the reward model's score, the KL to the reference (summed over a response),
the response length, the policy's perplexity on its own responses, and distinct-2 of the responses.
An arm has collapsed when its distinct-2 ends below half its first value (the responses degenerate
into repeats) or its KL ends above KL_BLOWUP nats (the policy left the reference far behind): the
paper's pattern model collapse, a reward that still rises while the KL and perplexity run away.

    python -m experiments run ppo_max [--quick]

`quick` trains a 2-layer byte-level model: SFT for 2 steps, the reward model for 3, vanilla and PPO-max
for 3 steps each; its numbers check the plumbing, not the paper.
"""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Estimate, Experiment, Outcome, Verdict
from experiments.runs import train_or_reuse
from research import config as config_lib
from research.train.metrics import read_metrics

ARMS = {  # name: (configs/rlhf.py variant, overrides)
    "vanilla": ("tiny_ppo", ()),
    "ppo_max": ("tiny_ppo_max", ()),
    "no_reward_norm": ("tiny_ppo_max", ("ppo.normalize_reward=False", "ppo.reward_clip=0.0")),
    "no_advantage_norm": ("tiny_ppo_max", ("ppo.normalize_advantage=False", "ppo.advantage_clip=0.0")),
    "no_value_clip": ("tiny_ppo_max", ("ppo.value_clip=0.0",)),
    "no_critic_from_rm": ("tiny_ppo_max", ("ppo.critic_from_reward=False",)),
    "no_kl_penalty": ("tiny_ppo_max", ("ppo.kl_coef=0.0",)),
    "no_grad_clip": ("tiny_ppo_max", ("optimizer.grad_clip_norm=0.0",)),
    "with_ptx": ("tiny_ppo_max", ("ppo.ptx_coef=0.5", "train.seq_len=128")),
}
CURVES = ("score", "kl", "response_length", "perplexity", "distinct_2")
KL_BLOWUP = 20.0  # nats per response: far beyond the few nats a healthy RLHF run drifts
QUICK_MODEL = ["model.dim=32", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
               "model.hidden_dim=64", "model.vocab_size=265", "data.tokenizer=byte"]
# Each scale: overrides of the model (every run), of the SFT, reward-model and PPO runs, the arms, the
# learning rate of every arm.
FULL = dict(model=[], sft=["train.steps=200"], rm=["train.steps=150"], ppo=["train.steps=40"], arms=tuple(ARMS),
            learning_rate=1e-4)
QUICK = dict(
    model=QUICK_MODEL,
    sft=["train.steps=2", "train.seq_len=320", "train.batch_size=4", "data.sft.count=20",
         "data.sft.suites=('arithmetic',)", "train.eval_batches=1", "train.checkpoint_every=0",
         "optimizer.warmup_steps=0", *(f"evals.{name}.{field}" for name in ("in_domain", "held_out")
                                     for field in ("count=1", "max_new_tokens=4"))],
    rm=["train.steps=3", "train.seq_len=160", "train.batch_size=8", "data.preferences.count=16",
        "evals.preferences.batches=1", "optimizer.learning_rate=3e-3", "optimizer.warmup_steps=0",
        "train.checkpoint_every=0"],
    ppo=["train.steps=3", "ppo.max_prompt_len=120", "ppo.max_new_tokens=8", "ppo.num_prompts=32",
         "ppo.prompts_per_step=8"],
    arms=("vanilla", "ppo_max"), learning_rate=1e-3)


WORKDIR = Path("workdir") / "experiments"  # the full runs' workdirs (the SFT and RM runs shared with
#                                           experiments/rlhf_comparison.py); quick runs go under out_dir


def scale(quick: bool) -> dict:
    return QUICK if quick else FULL


EXPERIMENT = Experiment(
    name="ppo_max",
    title="PPO-max against vanilla PPO, and each PPO-max switch ablated",
    paper="Secrets of RLHF in Large Language Models Part I: PPO (Zheng et al., 2023)",
    arxiv="2307.04964",
    reproduces="Fig. 5 (vanilla PPO's pattern collapse) and the PPO-max ablations (§5.3, Fig. 6/7)",
    claims=(
        Claim("stability", "PPO-max trains stably where vanilla PPO collapses: vanilla's KL to the reference and "
                           "its perplexity run away and its responses degenerate, PPO-max's stay bounded."),
        Claim("tricks", "Each PPO-max switch contributes: with any one of them off the run drifts further from "
                        "the reference (higher KL) or collapses."),
    ),
    full_scale="configs/rlhf.py:tiny_ppo / tiny_ppo_max with model=7b, the policy and reward model from "
               "LLaMA-2-7B SFT and RM runs, prompts_per_step=512, on a v5p-64 slice",
    cpu_minutes=38.7,  # measured on the medium scale (experiments/results/ppo_max.md) at a machine load of ~30
)


def sft_and_reward_runs(root: Path, *, quick: bool, seed: int) -> tuple[Path, Path]:
    """Workdirs of the tiny SFT run and of the helpfulness reward model started from it, each trained
    unless done (`quick`: the 2-layer byte-level model, a few steps each)."""
    sft, rm = root / "sft", root / "rm"
    runs = scale(quick)
    train_or_reuse(config_lib.load("configs/rlhf.py:tiny_sft", runs["model"] + runs["sft"] + [f"seed={seed}"]), sft)
    train_or_reuse(config_lib.load("configs/rlhf.py:tiny_rm", runs["model"] + runs["rm"] + [
        f"seed={seed}", f"init_from.path={sft}"]), rm)
    return sft, rm


def arm_config(arm: str, *, quick: bool, seed: int, sft: Path, rm: Path):
    """The config of one arm: the policy from the SFT run, the reward model from `rm`."""
    variant, overrides = ARMS[arm]
    runs = scale(quick)
    return config_lib.load(f"configs/rlhf.py:{variant}", runs["model"] + runs["ppo"] + [
        f"seed={seed}", f"optimizer.learning_rate={runs['learning_rate']}", "train.log_every=1",
        "train.checkpoint_every=0", f"init_from.path={sft}", f"init_from.extra.reward.path={rm}", *overrides])


def curves(workdir: Path) -> dict[str, np.ndarray]:
    """{"step", and each of CURVES}: the rollout statistics of every logged step."""
    records = [r for r in read_metrics(str(workdir)) if "rollout_score" in r]
    return {"step": np.asarray([r["step"] for r in records]),
            **{name: np.asarray([r[f"rollout_{name}"] for r in records], float) for name in CURVES}}


def collapsed(curve: dict) -> bool:
    """The module docstring's collapse: distinct-2 halved, or the KL past KL_BLOWUP, or a non-finite score."""
    return bool(curve["distinct_2"][-1] < 0.5 * curve["distinct_2"][0] or curve["kl"][-1] > KL_BLOWUP
                or not np.all(np.isfinite(curve["score"])))


def final(values: np.ndarray) -> float:
    """The mean of the last quarter of a curve (at least its last point)."""
    return float(np.mean(values[-max(1, len(values) // 4):]))


def headline_of(arm_curves: dict) -> dict[str, float]:
    numbers = {}
    for arm, curve in arm_curves.items():
        numbers |= {f"{arm}_{name}": final(curve[name]) for name in CURVES}
        numbers[f"{arm}_score_gain"] = final(curve["score"]) - float(curve["score"][0])
        numbers[f"{arm}_collapsed"] = float(collapsed(curve))
    return numbers


def plot(arm_curves: dict, path: Path) -> Path:
    titles = {"score": "reward-model score", "kl": "KL to the reference (nats / response)",
              "response_length": "response length (tokens)", "perplexity": "perplexity on own responses",
              "distinct_2": "distinct-2 of responses"}
    figure = Figure(figsize=(4 * len(CURVES), 3.4), layout="constrained")
    axes = figure.subplots(1, len(CURVES))
    for axis, name in zip(axes, CURVES):
        for arm, curve in arm_curves.items():
            style = {"vanilla": dict(color="tab:red", lw=2.2), "ppo_max": dict(color="tab:blue", lw=2.2)}.get(
                arm, dict(lw=1, alpha=0.7, ls="--"))
            axis.plot(curve["step"], curve[name], label=arm, **style)
        axis.set_title(titles[name], fontsize=9)
        axis.set_xlabel("PPO step")
    axes[0].legend(fontsize=7)
    figure.savefig(path, dpi=110)
    return path


def markdown(arm_curves: dict, headline: dict, *, quick: bool) -> str:
    setting = ("quick: a 2-layer byte-level model, SFT for 2 steps and a reward model for 3, "
               f"{len(next(iter(arm_curves.values()))['step'])} steps per arm" if quick else
               "the tiny LLaMA from tiny SFT and reward-model runs, "
               f"{len(next(iter(arm_curves.values()))['step'])} PPO steps per arm")
    lines = ["# PPO-max against vanilla PPO (\"Secrets of RLHF\" Fig. 5 in shape)", "",
             f"Setting: {setting}; learning rate {scale(quick)['learning_rate']:g} for every arm. Final = mean of "
             "the last quarter of the steps. Collapsed: distinct-2 below half its first value or KL above {KL_BLOWUP:g} nats.", "",
             "| arm | score | score gain | KL | length | perplexity | distinct-2 | collapsed |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in arm_curves:
        cells = [headline[f"{arm}_{name}"] for name in ("score", "score_gain", "kl", "response_length", "perplexity",
                                                         "distinct_2")]
        lines.append(f"| {arm} | " + " | ".join(f"{value:.3f}" for value in cells)
                     + f" | {'yes' if headline[f'{arm}_collapsed'] else 'no'} |")
    lines += ["", "![curves](ppo_max.png)"]
    return "\n".join(lines) + "\n"


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    """Trains (or reuses) every arm and draws their curves into out_dir/ppo_max.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = out_dir / "runs" if quick else WORKDIR / f"rlhf_seed{seed}"
    arms = scale(quick)["arms"]
    sft, rm = sft_and_reward_runs(root, quick=quick, seed=seed)
    arm_curves = {}
    for arm in arms:
        workdir = root / f"ppo_{arm}"
        train_or_reuse(arm_config(arm, quick=quick, seed=seed, sft=sft, rm=rm), workdir)
        arm_curves[arm] = curves(workdir)
    headline = headline_of(arm_curves)
    rows = [{"arm": arm, "step": int(step), **{name: float(curve[name][i]) for name in CURVES}}
            for arm, curve in arm_curves.items() for i, step in enumerate(curve["step"])]
    return Outcome(headline=headline, rows=rows, markdown=markdown(arm_curves, headline, quick=quick),
                   plots=(plot(arm_curves, out_dir / "ppo_max.png"),))


def judge(headline: dict[str, Estimate]) -> dict[str, Verdict]:
    def mean(key):
        return headline[key].mean

    vanilla, ppo_max = mean("vanilla_collapsed") >= 0.5, mean("ppo_max_collapsed") >= 0.5
    kls = f"final KL vanilla {mean('vanilla_kl'):.2f} vs PPO-max {mean('ppo_max_kl'):.2f} nats"
    diversity = f"distinct-2 {mean('vanilla_distinct_2'):.2f} vs {mean('ppo_max_distinct_2'):.2f}"
    if vanilla and not ppo_max:
        stability = Verdict(HOLDS, f"vanilla PPO collapsed and PPO-max did not ({kls}; {diversity})")
    elif not ppo_max and mean("ppo_max_kl") < mean("vanilla_kl"):
        stability = Verdict(HOLDS_IN_PART, f"neither collapsed here, but PPO-max stayed closer to the reference "
                                           f"({kls}; {diversity})")
    else:
        stability = Verdict(DOES_NOT_HOLD, f"{'PPO-max collapsed' if ppo_max else 'PPO-max drifted as far'} ({kls}; "
                                           f"{diversity})")
    ablations = sorted({key.removesuffix("_collapsed") for key in headline if key.startswith(("no_", "with_"))
                        and key.endswith("_collapsed")} - {"with_ptx"})
    reference_kl = mean("ppo_max_kl")
    matters = {arm: mean(f"{arm}_collapsed") >= 0.5 or mean(f"{arm}_kl") > 1.5 * max(reference_kl, 1e-3)
               for arm in ablations}
    reasons = ", ".join(f"{arm} KL {mean(f'{arm}_kl'):.2f}{' (collapsed)' if mean(f'{arm}_collapsed') >= 0.5 else ''}"
                        for arm in ablations)
    reason = f"PPO-max KL {reference_kl:.2f}; {reasons}; a switch counts when its removal collapses the run or " \
             "raises the KL by half"
    if ablations and all(matters.values()):
        tricks = Verdict(HOLDS, reason)
    elif any(matters.values()):
        tricks = Verdict(HOLDS_IN_PART, f"{sum(matters.values())} of {len(matters)} switches matter: {reason}")
    else:
        tricks = Verdict(DOES_NOT_HOLD, f"no switch's removal mattered: {reason}" if ablations else
                         "no ablation arm was run")
    return {"stability": stability, "tricks": tricks}
