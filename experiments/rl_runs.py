"""The runs the RL-with-verifiable-rewards experiments share: one SFT start, RL runs from it, and
sampled evaluation of any run's policy.

The chain is configs/reasoning_pipeline.py's (model "llama") at a CPU-sized shape (a `Start`): a decoder
fine-tuned from scratch on worked solutions (the CPython-docs pretraining stage teaches no arithmetic, so it
is left out; 1200 steps of 8 packed rows from 20,000 distinct problems), then RL on problems of the training
difficulties (60 steps), judged greedily on 128 problems of the training levels ("in_domain") and 128 of the
held-out levels ("held_out"). SMALL_PIECES, the default, is 3 layers of width 96 on SentencePiece pieces and
arithmetic (1 to 3 steps in training, 4 and 5 held out); WIDE_BYTES is 4 layers of width 128 on bytes;
CODING is SMALL_PIECES's decoder on the coding suite (1 or 2 operations in training, 3 or 4 held out).
`quick` swaps in runs.QUICK_MODEL (byte tokenizer, width 32) and a few steps each: the experiments' tests.

Runs live in `shared_dir(out_dir)`, the gallery's work directory for the seed (work/rl_runs/seed_K),
so each experiment of the same seed trains the SFT start and an RL variant once and reuses it
(experiments/runs.py `train_or_reuse`).

    python -m experiments.rl_runs WORKDIR [--samples 16] [--temperature 1.0]

prints pass@1, pass@K, maj@K and the mean response length of the run's policy on both splits.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from experiments.runs import QUICK_MODEL, train_or_reuse
from research import config as config_lib
from research.data.reasoning import parse_completion, stop_ids
from research.data.tasks import generate_problems
from research.data.tokenizer import get_tokenizer
from research.decoding.sampling import generate
from research.models import abstract_params, make_model
from research.rl.task_eval import majority_correct, prompt_ids, response_length
from research.rl.verifiers import problem_score
from research.train.checkpoint import Checkpointer
from research.train.metrics import read_metrics
from research.train.trainers.ppo import value_config

PIPELINE = "configs/reasoning_pipeline.py:stage={stage},model=llama"
EVAL_SEED = 1  # the evaluation problems' seed, apart from training's (0)
FULL = {"eval_count": 128, "new_tokens": 160, "sft_steps": 1200, "rl_steps": 60, "eval_every": 0}
SCALAR_HEADED = ("value", "reward")  # a PPO run's critic and reward model: decoders under a scalar head


@dataclasses.dataclass(frozen=True)
class Start:
    """A decoder, tokenizer and task suite for the SFT start and the lengths in its tokens (full scale; `quick`
    runs use QUICK_MODEL and QUICK's lengths): `suffix` names its runs (sft{suffix}, grpo{suffix}), `fields` set
    the decoder and tokenizer in every stage, SFT packs `sft_seq_len` tokens a row of `suite`'s worked
    solutions, RL asks `suite`'s prompts of at most `rl_prompt_len` tokens for `rl_new_tokens`, and the
    evaluations decode up to `eval_new_tokens` on `suite`'s problems."""
    suffix: str
    fields: tuple[str, ...]
    sft_seq_len: int
    rl_prompt_len: int
    rl_new_tokens: int
    eval_new_tokens: int
    suite: str = "arithmetic"


# 3 layers of width 96 on the configs' 4096-piece SentencePiece vocabulary (numbers mostly split digit by digit)
SMALL_PIECES = Start("", ("model.dim=96", "model.num_layers=3", "model.num_heads=4", "model.num_kv_heads=2",
                          "model.hidden_dim=256"), sft_seq_len=256, rl_prompt_len=128,
                     rl_new_tokens=FULL["new_tokens"], eval_new_tokens=FULL["new_tokens"])
# a wider, deeper decoder on bytes: every digit a token, 2.6x the tokens of an arithmetic solution (256 cover
# 98% of the held-out solutions, 288 every training prompt)
WIDE_BYTES = Start("_wide_bytes", ("model.dim=128", "model.num_layers=4", "model.num_heads=4", "model.num_kv_heads=2",
                                   "model.hidden_dim=384", "data.tokenizer=byte", "model.vocab_size=265"),
                   sft_seq_len=512, rl_prompt_len=288, rl_new_tokens=192, eval_new_tokens=256)
# SMALL_PIECES's decoder on small coding problems (research/data/tasks/coding.py), judged in the sandbox: no
# arithmetic in a solution, so the start gets most training-level problems right
CODING = Start("_coding", SMALL_PIECES.fields, sft_seq_len=384, rl_prompt_len=160, rl_new_tokens=256,
               eval_new_tokens=384, suite="coding")
QUICK = {"eval_count": 2, "new_tokens": 8, "sft_steps": 4, "rl_steps": 2, "eval_every": 0}


def scale(quick: bool) -> dict:
    return QUICK if quick else FULL


def evals(quick: bool, every: int, start: Start = SMALL_PIECES) -> list[str]:
    """Greedy pass@1 and mean length on in-domain and held-out problems of `start`'s suite, every `every` steps
    (0: at the end only)."""
    s = scale(quick)
    new_tokens = s["new_tokens"] if quick else start.eval_new_tokens
    return [f"evals.{name}.{field}={value}" for name in ("in_domain", "held_out") for field, value in (
        ("count", s["eval_count"]), ("max_new_tokens", new_tokens), ("every", every), ("seed", EVAL_SEED),
        ("suites", f"('{start.suite}',)"))]


def sft_config(*, quick: bool, seed: int, start: Start = SMALL_PIECES) -> ml_collections.FrozenConfigDict:
    """The shared SFT start: worked solutions of `start`'s suite in its tokens, from a random initialisation."""
    s = scale(quick)
    fields = [f"seed={seed}", "init_from.kind=none", "init_from.path=", f"data.sft.suites=('{start.suite}',)",
              f"train.steps={s['sft_steps']}", "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=25"]
    fields += (QUICK_MODEL + ["data.sft.count=40"] if quick else
               [*start.fields, "train.batch_size=8", f"train.seq_len={start.sft_seq_len}", "data.sft.count=20000",
                "optimizer.learning_rate=3e-3"])
    config = config_lib.load(PIPELINE.format(stage="sft"), fields + evals(quick, every=0, start=start))
    config = config_lib.unfrozen(config)
    del config.evals["eval"]  # the validation loss: not an accuracy
    return ml_collections.FrozenConfigDict(config)


def rl_config(stage: str, sft_dir: Path, *, quick: bool, seed: int, overrides=(),
              start: Start = SMALL_PIECES) -> ml_collections.FrozenConfigDict:
    """RL stage `stage` (grpo, dapo, drgrpo, kimi, or ppo_rlvr: PPO on the same rewards) of the pipeline from the
    SFT run in `sft_dir` (of `start`'s tokens): 4 problems x 8 responses a step (PPO: one response to each of 32
    problems), learning rate 3e-4, `overrides` ("rl.field=value", or "ppo.field=value" for PPO) last."""
    s = scale(quick)
    block = "ppo" if stage == "ppo_rlvr" else "rl"
    prompts, group = (2, 4) if quick else (4, 8)
    sampling = [f"ppo.prompts_per_step={prompts * group}"] if block == "ppo" else [
        f"rl.prompts_per_step={prompts}", f"rl.group_size={group}"]
    fields = [f"seed={seed}", f"init_from.path={sft_dir}", f"{block}.suites=('{start.suite}',)",
              f"train.steps={s['rl_steps']}", "train.log_every=1", "train.checkpoint_every=0"]
    if quick:
        fields += QUICK_MODEL + [f"{block}.max_prompt_len=288", f"{block}.max_new_tokens={s['new_tokens']}", *sampling,
                                 f"{block}.soft_overlong.max_length=8", f"{block}.soft_overlong.cache_length=4"]
    else:
        fields += [*start.fields, f"{block}.max_prompt_len={start.rl_prompt_len}",
                   f"{block}.max_new_tokens={start.rl_new_tokens}", *sampling, "optimizer.learning_rate=3e-4",
                   f"{block}.soft_overlong.max_length={start.rl_new_tokens}", f"{block}.soft_overlong.cache_length=32"]
    return config_lib.load(PIPELINE.format(stage=stage),
                           fields + evals(quick, s["eval_every"], start) + list(overrides))


def shared_dir(out_dir: Path) -> Path:
    """work/rl_runs/seed_K for an experiment's out_dir work/NAME/seed_K."""
    out_dir = Path(out_dir)
    return out_dir.parent.parent / "rl_runs" / out_dir.name


def run_dir(out_dir: Path, name: str, *, quick: bool, start: Start) -> Path:
    """work/rl_runs/seed_K/NAME{start.suffix}[_quick]."""
    return shared_dir(out_dir) / f"{name}{start.suffix}{'_quick' if quick else ''}"


def sft_start(out_dir: Path, *, quick: bool, seed: int, start: Start = SMALL_PIECES) -> tuple[Path, dict]:
    """(workdir, results) of the shared SFT start in `start`'s tokens, trained once per seed."""
    workdir = run_dir(out_dir, "sft", quick=quick, start=start)
    return workdir, train_or_reuse(sft_config(quick=quick, seed=seed, start=start), workdir)


def rl_run(out_dir: Path, name: str, stage: str, *, quick: bool, seed: int, overrides=(),
           start: Start = SMALL_PIECES) -> tuple[Path, dict]:
    """(workdir, results) of the RL run `name` from the shared SFT start in `start`'s tokens, trained once per
    seed."""
    sft_dir, _ = sft_start(out_dir, quick=quick, seed=seed, start=start)
    workdir = run_dir(out_dir, name, quick=quick, start=start)
    config = rl_config(stage, sft_dir, quick=quick, seed=seed, overrides=overrides, start=start)
    return workdir, train_or_reuse(config, workdir)


def curves(workdir: Path) -> dict[str, list]:
    """Per step (from metrics.jsonl): rollout accuracy and response length, and the evaluations' steps with
    held-out and in-domain greedy pass@1 and mean length."""
    records = read_metrics(str(workdir))
    rollouts = [r for r in records if "rollout_accuracy" in r]
    evaluated = [r for r in records if "held_out_pass@1" in r]
    return {"step": [r["step"] for r in rollouts], "accuracy": [r["rollout_accuracy"] for r in rollouts],
            "length": [r["rollout_response_length"] for r in rollouts],
            "eval_step": [r["step"] for r in evaluated], "held_out": [r["held_out_pass@1"] for r in evaluated],
            "in_domain": [r["in_domain_pass@1"] for r in evaluated],
            "held_out_length": [r["held_out_mean_length"] for r in evaluated]}


def run_config(workdir: Path) -> ml_collections.FrozenConfigDict:
    """The resolved config the run in `workdir` wrote."""
    return ml_collections.FrozenConfigDict(json.loads((Path(workdir) / "config.json").read_text()))


def policy_params(workdir: Path, model_config):
    """The decoder's parameters in the newest checkpoint of the run in `workdir` (an RL run's "policy"
    beside its "reference" and, for PPO, the critic's "value" and the reward model's "reward", which are
    decoders under a scalar head; or an SFT run's whole tree), on the first device."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def placed(config):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_params(config))

    decoder = placed(model_config)
    with Checkpointer(Path(workdir) / "checkpoints", read_only=True) as reader:
        step = reader.newest_step()
        roles = {name.split("/")[1] for name in reader.saved_arrays(step) if name.startswith("params/")}
        if "policy" not in roles:
            return reader.restore_params(step, decoder)
        abstract = {role: placed(value_config(model_config)) if role in SCALAR_HEADED else decoder for role in roles}
        return reader.restore_params(step, abstract)["policy"]


def sampled_answers(workdir: Path, split: str, *, samples: int, temperature: float, count: int,
                    max_new_tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`samples` responses to each of `count` problems of `split` (of the suite the run in `workdir` is evaluated
    on) from that run's policy: {"correct": [count, samples] bool, "answers": [count, samples] str, "length":
    [count, samples]}. All count x samples rows are decoded in one call (one compilation per split)."""
    config = run_config(workdir)
    suites = config.evals.held_out.suites
    if len(suites) != 1:
        raise ValueError(f"{workdir} is evaluated on the suites {list(suites)}; sampled answers need one")
    tokenizer = get_tokenizer(config.data)
    model, params = make_model(config.model), policy_params(workdir, config.model)
    problems = generate_problems(suites[0], split, count, EVAL_SEED)
    prompts = [prompt_ids(tokenizer, problem) for problem in problems for _ in range(samples)]
    tokens = np.asarray(generate(model, params, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                 rng=jax.random.key(seed), eos_id=stop_ids(tokenizer), pad_id=tokenizer.pad_id))
    responses = [row[len(prompt):len(prompt) + max_new_tokens] for row, prompt in zip(tokens, prompts)]
    parsed = [parse_completion(tokenizer, response) for response in responses]
    correct = [problem_score(problems[i // samples], p.answer).correct for i, p in enumerate(parsed)]
    shape = (count, samples)
    return {"correct": np.reshape(correct, shape), "answers": np.reshape([" ".join(p.answer.split()) for p in parsed],
                                                                          shape),
            "length": np.reshape([response_length(r, tokenizer) for r in responses], shape)}


def pass_at_k(correct, k: int) -> float:
    """Chen et al.'s unbiased pass@k from c correct of n samples per problem: mean of 1 − C(n−c, k)/C(n, k)
    (`correct` [problems, n] bool, 1 ≤ k ≤ n)."""
    correct = np.asarray(correct, bool)
    n = correct.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the samples per problem), got {k}")
    failures = n - correct.sum(axis=1)
    # C(n−c, k)/C(n, k) = Π_{i=0}^{k−1} (n−c−i)/(n−i), 0 once n−c < k
    none_correct = np.prod([np.clip(failures - i, 0, None) / (n - i) for i in range(k)], axis=0)
    return float(np.mean(1.0 - none_correct))


def maj_at_k(answers, correct, k: int, *, draws: int = 32, seed: int = 0) -> float:
    """maj@k: the share of problems whose most frequent answer among k samples is correct (ties to the
    first drawn), averaged over `draws` random k-subsets of the n samples per problem (all n when k = n)."""
    answers, correct = np.asarray(answers), np.asarray(correct, bool)
    n = correct.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the samples per problem), got {k}")
    rng = np.random.default_rng(seed)
    subsets = [np.arange(n)] if k == n else [rng.permutation(n)[:k] for _ in range(draws)]
    return float(np.mean([[majority_correct(list(a[s]), list(c[s])) for a, c in zip(answers, correct)]
                          for s in subsets]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="pass@1, pass@K, maj@K and length of a run's policy")
    parser.add_argument("workdir")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=144)
    args = parser.parse_args(argv)
    table = {}
    for split in ("train", "held_out"):
        drawn = sampled_answers(Path(args.workdir), split, samples=args.samples, temperature=args.temperature,
                                count=args.count, max_new_tokens=args.max_new_tokens)
        table[split] = {"pass@1": pass_at_k(drawn["correct"], 1), f"pass@{args.samples}": pass_at_k(drawn["correct"],
                                                                                                   args.samples),
                        f"maj@{args.samples}": maj_at_k(drawn["answers"], drawn["correct"], args.samples),
                        "mean_length": float(drawn["length"].mean())}
        print(split, json.dumps(table[split]))
    return table


if __name__ == "__main__":
    main()
