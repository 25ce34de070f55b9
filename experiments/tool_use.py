"""Calling a python tool vs answering alone: one tiny LLaMA, fine-tuned on both kinds of traces, answers
large-number arithmetic and list problems with the sandboxed tool offered and without it (Toolformer's
Table 4 comparison, API calls enabled vs disabled, in shape).

Data: the tool_tasks suite (research/data/tasks/tool_tasks.py: products and sums of 2- to 4-digit
numbers, sums of the k largest of a list; held out: 5 and 6 digits). A byte-level LLaMA is fine-tuned
with the LM trainer's step on batches of either kind in turn:
- tool traces (research/rl/tool_calls.py): the tools prompt, the model's call `print(<expression>)`,
  the tool's turn with the printed answer, the model's final answer; the loss on the model's turns only;
- direct traces: the plain prompt, the worked line as the thinking ("4821 * 7734 = 37285614"), the answer.
Evaluation, greedy, on problems drawn with another seed:
- with tools: the tools prompt, multi-turn rollouts (research/rl/agentic_rollout.py) whose calls run in
  the sandbox (research/rl/sandbox.py), at most 2 calls, the final turn's answer judged;
- without tools: the plain prompt, one answer, judged the same way.
Accuracy is the share of problems whose integer answer is exactly right; the tool-call rate is the share
of with-tools episodes that called the tool (a malformed call counts: it gets an error as the tool's turn).
"""

import dataclasses
import time
from pathlib import Path

import flax.linen as nn
import jax
import matplotlib
import numpy as np

from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Estimate, Experiment, Outcome, Verdict
from research import config as config_lib
from research.data.reasoning import parse_completion, stop_ids
from research.data.tasks import generate_problems
from research.data.tokenizer import END_OF_TURN, END_THINK, ByteTokenizer
from research.decoding.sampling import generate
from research.models import make_model
from research.optim import make_optimizer, make_schedule
from research.rl.agentic_rollout import play, policy_turns
from research.rl.task_eval import prompt_ids, response_length
from research.rl.tool_calls import run_python, tool_trace, tools_prompt_ids, trace_ids
from research.rl.verifiers import problem_score
from research.train.trainers.lm import make_init_state, make_train_step

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

EXPERIMENT = Experiment(
    name="tool_use",
    title="Answering with a sandboxed python tool vs alone, on large-number arithmetic and lists",
    paper="Toolformer: Language Models Can Teach Themselves to Use Tools (Schick et al., 2023)",
    arxiv="2302.04761",
    reproduces="Table 4 (math benchmarks, API calls enabled vs disabled) in shape",
    claims=(
        Claim("tools_raise_accuracy", "The same model answers arithmetic far more accurately when it may call a "
                                      "tool (a calculator there, a python sandbox here) than when it answers alone."),
        Claim("tools_help_beyond_training", "The tool's advantage holds on harder problems than those trained on "
                                            "(more digits)."),
    ),
    full_scale="this module's full run (byte LLaMA width 64, 2 layers, 800 SFT steps of 8 traces); RL on top: "
               "configs/rlvr.py:tiny_grpo with rl.tools=True, rl.suites=('tool_tasks',), one CPU host",
    cpu_minutes=5.8,
    # Toolformer's Table 4 figures are not copied here: they could not be checked against the paper offline
)

MODEL = ["model.vocab_size=265", "data.tokenizer=byte", "model.max_seq_len=1024", "optimizer.learning_rate=3e-3"]


@dataclasses.dataclass(frozen=True)
class Scale:
    shape: tuple[str, ...]
    steps: int
    batch_size: int
    problems: int  # evaluated per split
    turn_tokens: int  # per model turn (with tools) or per answer (without)


FULL = Scale(("model.dim=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
              "model.hidden_dim=172"), steps=800, batch_size=8, problems=32, turn_tokens=128)
QUICK = Scale(("model.dim=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1",
               "model.hidden_dim=64"), steps=12, batch_size=4, problems=4, turn_tokens=32)
MAX_TOOL_TURNS = 2


def training_example(tokenizer, problem, with_tools: bool):
    """(ids, model mask) of one trace: the tool trace after the tools prompt, or the direct one after the
    plain prompt."""
    if with_tools:
        return trace_ids(tokenizer, tools_prompt_ids(tokenizer, problem), tool_trace(problem))
    direct = [(f"{problem.reasoning}{END_THINK}{problem.answer}{END_OF_TURN}", True)]
    return trace_ids(tokenizer, prompt_ids(tokenizer, problem), direct)


def training_rows(examples, seq_len: int) -> dict:
    """LM rows (one example each, right-padded): the loss on the model's tokens only."""
    fields = {name: np.zeros((len(examples), seq_len), np.int32) for name in ("inputs", "targets", "positions",
                                                                             "segment_ids")}
    weights = np.zeros((len(examples), seq_len), np.float32)
    for row, (ids, mask) in enumerate(examples):
        length = len(ids) - 1
        fields["inputs"][row, :length], fields["targets"][row, :length] = ids[:-1], ids[1:]
        fields["positions"][row, :length], fields["segment_ids"][row, :length] = np.arange(length), 1
        weights[row, :length] = mask[1:]
    return {**fields, "weights": weights}


def fine_tune(config, tokenizer, scale: Scale, seed: int):
    """(model, params, losses) after `scale.steps` AdamW steps, batches of tool traces and of direct traces
    in turn (each padded to its own kind's longest: the tools prompt makes tool traces ~3x longer)."""
    problems = generate_problems("tool_tasks", "train", 2000, seed=seed)
    kinds = [[training_example(tokenizer, problem, with_tools) for problem in problems[start::2]]
             for start, with_tools in ((0, True), (1, False))]
    seq_lens = [max(len(ids) for ids, _ in examples) - 1 for examples in kinds]
    model = make_model(config.model)
    optimizer = make_optimizer(config.optimizer, scale.steps)
    state = make_init_state(model, optimizer, max(seq_lens))(jax.random.key(seed))
    step = jax.jit(make_train_step(model, optimizer, make_schedule(config.optimizer, scale.steps), 1))
    rng, losses = np.random.default_rng(seed), []
    for index in range(scale.steps):
        examples, seq_len = kinds[index % 2], seq_lens[index % 2]
        batch = training_rows([examples[i] for i in rng.integers(len(examples), size=scale.batch_size)], seq_len)
        state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(seed), index))
        losses.append(float(metrics["loss"]))
    return model, nn.meta.unbox(state.params), losses


def with_tools(model, params, tokenizer, problems, turn_tokens: int) -> list[dict]:
    """Per problem: correct, called the tool, model tokens, of greedy multi-turn answers with the tool."""
    prompts = [tools_prompt_ids(tokenizer, problem) for problem in problems]
    max_length = max(map(len, prompts)) + 2 * turn_tokens + 64
    sampler = policy_turns(model, params, tokenizer, jax.random.key(0), batch_size=len(problems),
                           max_length=max_length, turn_tokens=turn_tokens, temperature=0.0)
    episodes = play(sampler, tokenizer, prompts, max_length=max_length, max_tool_turns=MAX_TOOL_TURNS,
                    run_tools=run_python)
    return [{"correct": problem_score(problem, parse_completion(tokenizer, episode.final_turn).answer).correct,
             "called": episode.tool_calls > 0, "model_tokens": sum(episode.model_mask)}
            for problem, episode in zip(problems, episodes)]


def without_tools(model, params, tokenizer, problems, turn_tokens: int) -> list[dict]:
    """Per problem: correct, called the tool (never), response tokens, of greedy direct answers."""
    prompts = [prompt_ids(tokenizer, problem) for problem in problems]
    tokens = np.asarray(generate(model, params, prompts, max_new_tokens=turn_tokens, eos_id=stop_ids(tokenizer),
                                 pad_id=tokenizer.pad_id))
    responses = [row[len(prompt):len(prompt) + turn_tokens] for row, prompt in zip(tokens, prompts)]
    return [{"correct": problem_score(problem, parse_completion(tokenizer, response).answer).correct,
             "called": False, "model_tokens": response_length(response, tokenizer)}
            for problem, response in zip(problems, responses)]


def summary(records: list[dict]) -> dict:
    return {"accuracy": float(np.mean([r["correct"] for r in records])),
            "tool_call_rate": float(np.mean([r["called"] for r in records])),
            "model_tokens": float(np.mean([r["model_tokens"] for r in records]))}


def plot(out_dir: Path, rows, losses) -> Path:
    figure, (bars, curve) = plt.subplots(1, 2, figsize=(10, 3.8))
    splits = sorted({row["split"] for row in rows}, reverse=True)
    for offset, mode in ((-0.2, "with_tools"), (0.2, "without_tools")):
        values = [next(r["accuracy"] for r in rows if r["split"] == split and r["mode"] == mode) for split in splits]
        bars.bar(np.arange(len(splits)) + offset, values, width=0.4, label=mode.replace("_", " "))
    bars.set_xticks(range(len(splits)), splits)
    bars.set_ylim(0, 1)
    bars.set_ylabel("accuracy (exact integer)")
    bars.legend()
    curve.plot(losses)
    curve.set_xlabel("SFT step")
    curve.set_ylabel("loss on the model's tokens")
    curve.set_yscale("log")
    figure.tight_layout()
    path = out_dir / "tool_use.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    """Fine-tune, then evaluate with and without the tool on in-distribution and held-out problems."""
    start = time.monotonic()
    scale = QUICK if quick else FULL
    config = config_lib.load("configs/llama2.py:tiny", [*MODEL, *scale.shape, f"seed={seed}",
                                                        f"optimizer.warmup_steps={scale.steps // 10}"])
    tokenizer = ByteTokenizer(vocab_size=config.model.vocab_size)
    model, params, losses = fine_tune(config, tokenizer, scale, seed)
    splits = {"in_distribution": generate_problems("tool_tasks", "train", scale.problems, seed=seed + 1),
              "held_out": generate_problems("tool_tasks", "held_out", scale.problems, seed=seed + 1)}
    rows = []
    for mode, evaluate in (("with_tools", with_tools), ("without_tools", without_tools)):
        records = evaluate(model, params, tokenizer, [p for problems in splits.values() for p in problems],
                           scale.turn_tokens)
        rows += [{"split": name, "mode": mode, **summary(records[i * scale.problems:(i + 1) * scale.problems])}
                 for i, name in enumerate(splits)]
    accuracy = {(row["split"], row["mode"]): row["accuracy"] for row in rows}
    headline = {
        "accuracy_with_tools": accuracy["in_distribution", "with_tools"],
        "accuracy_without_tools": accuracy["in_distribution", "without_tools"],
        "held_out_accuracy_with_tools": accuracy["held_out", "with_tools"],
        "held_out_accuracy_without_tools": accuracy["held_out", "without_tools"],
        "tool_call_rate": rows[0]["tool_call_rate"],
        "final_loss": float(np.mean(losses[-10:])),
        "problems": float(scale.problems),
    }
    plots = (plot(Path(out_dir), rows, losses),)
    return Outcome(headline=headline, rows=rows, markdown=report(rows, headline, scale, time.monotonic() - start),
                   plots=plots)


def report(rows, headline, scale: Scale, seconds: float) -> str:
    lines = [f"Byte-level LLaMA ({', '.join(s.split('=')[0].split('.')[1] + ' ' + s.split('=')[1] for s in scale.shape)}),"
             f" {scale.steps} SFT steps of {scale.batch_size} traces (tool and direct batches in turn), "
             f"final loss {headline['final_loss']:.3f}; {scale.problems} problems per split, greedy; "
             f"{seconds:.0f} s.", "",
             "| split | mode | accuracy | tool-call rate | model tokens / problem |", "|---|---|---|---|---|"]
    lines += [f"| {r['split']} | {r['mode'].replace('_', ' ')} | {r['accuracy']:.3f} | {r['tool_call_rate']:.2f} | "
              f"{r['model_tokens']:.1f} |" for r in rows]
    lines += ["", "In distribution: products and sums of 2- to 4-digit numbers and sums of the k largest of a "
              "list; held out: 5- and 6-digit numbers. With tools the model's call runs in the sandbox and its "
              "output comes back as a tool turn; the answer of its last turn is judged."]
    return "\n".join(lines) + "\n"


def _advantage_verdict(with_key: str, without_key: str, headline: dict[str, Estimate]) -> Verdict:
    """Holds when accuracy with tools beats without by more than two standard errors (binomial over the
    problems, plus the seeds' spread); in part when it is ahead by less."""
    n = headline["problems"].mean
    p, q = headline[with_key].mean, headline[without_key].mean
    error = np.sqrt(p * (1 - p) / n + q * (1 - q) / n + headline[with_key].std ** 2 + headline[without_key].std ** 2)
    numbers = f"with tools {p:.3f} vs without {q:.3f} on {n:.0f} problems (2 s.e. = {2 * error:.3f})"
    if p - q > 2 * error:
        return Verdict(HOLDS, numbers)
    if p > q:
        return Verdict(HOLDS_IN_PART, numbers + ": ahead, but within two standard errors")
    return Verdict(DOES_NOT_HOLD, numbers)


def judge(headline: dict[str, Estimate]) -> dict[str, Verdict]:
    return {"tools_raise_accuracy": _advantage_verdict("accuracy_with_tools", "accuracy_without_tools", headline),
            "tools_help_beyond_training": _advantage_verdict("held_out_accuracy_with_tools",
                                                             "held_out_accuracy_without_tools", headline)}
