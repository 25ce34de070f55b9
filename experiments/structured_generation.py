"""JSON extraction by a tiny fine-tuned LLaMA: unconstrained, prompt-only (Kor style) and constrained.

    python -m experiments run structured_generation [--quick] [--seeds N]

Data: procedural extraction examples. Each of the 32 schemas (flat records, enums, formats,
arrays, nested objects, anyOf, then mixes of them) lists fields; an example draws values,
renders them as a sentence ("name Ada Moreau, age 36, lives in Lyon") and pairs the prompt
"Extract name, age, city: <sentence>\\nJSON: " with the compact JSON of the values (its fields
in the schema's order). A byte-level LLaMA (configs/llama2.py:tiny with a smaller width) is
trained on random examples of all schemas with the LM trainer's step
(research/train/trainers/lm.py), the loss on the JSON and EOS only.

Evaluation on fresh examples, greedy:
- unconstrained: the prompt, free generation, the first JSON value of the text;
- prompt-only: `generate_json(..., constrained=False)`: the schema and one worked example before
  the prompt, free generation, the first JSON value;
- constrained: `generate_json(...)` under the schema's constraint.
Validity = parses and validates with `jsonschema` (formats checked); field accuracy = the share
of the schema's top-level fields equal to the truth. The run also measures the index build time
and per-token overhead against outlines-core and llguidance and the keyword coverage of each
(scripts/bench_structured.py) on the byte vocabulary and the pydoc SentencePiece vocabulary
(--quick: one bench schema, byte vocabulary, ours alone: the comparison libraries are bench
dependencies that tests never import).
The full run (300 steps) takes about 10 minutes on 2 CPU cores; `--quick` trains 5 steps of a
very small model on 2 schemas. The seed sets the initialisation, the training examples and the
fresh evaluation examples.
"""

import dataclasses
import functools
import json
from pathlib import Path

import flax.linen as nn
import jax
import jsonschema
import numpy as np

from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Claim, Experiment, Outcome, Verdict
from research import config as config_lib
from research.data import corpus
from research.data.tokenizer import ByteTokenizer, corpus_sentencepiece
from research.decoding.sampling import generate
from research.decoding.structured import generate_json
from research.decoding.structured.generate_json import completions
from research.decoding.structured.prompt_only import first_json_value
from research.models import make_model
from research.optim import make_optimizer, make_schedule
from research.train.trainers.lm import make_init_state, make_train_step
from scripts import bench_structured

FIRST = ["Ada", "Bob", "Chen", "Dana", "Emil", "Fatou", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lea"]
LAST = ["Moreau", "Smith", "Okafor", "Silva", "Novak", "Tanaka", "Berg", "Rossi"]
CITIES = ["Lyon", "Oslo", "Lagos", "Quito", "Pune", "Graz", "Turin", "Leeds", "Osaka", "Cusco"]
STREETS = ["Elm St", "Main Rd", "Lake Ave", "Hill Ln", "Park Way"]
TAGS = ["red", "blue", "green", "gold"]
PETS = ["cat", "dog", "fish"]


def _name(rng):
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _date(rng):
    return f"{rng.integers(1950, 2024)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"


def _uuid(rng):
    digits = "".join(rng.choice(list("0123456789abcdef"), 32))
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


# field: (schema, draw(rng) -> value, render(value) -> text)
FIELDS = {
    "name": ({"type": "string", "maxLength": 24}, _name, lambda v: f"name {v}"),
    "age": ({"type": "integer", "minimum": 0, "maximum": 120}, lambda r: int(r.integers(1, 100)), lambda v: f"age {v}"),
    "city": ({"type": "string", "maxLength": 16}, lambda r: str(r.choice(CITIES)), lambda v: f"lives in {v}"),
    "level": ({"enum": ["low", "medium", "high"]}, lambda r: str(r.choice(["low", "medium", "high"])),
              lambda v: f"level {v}"),
    "active": ({"type": "boolean"}, lambda r: bool(r.integers(2)), lambda v: "active" if v else "inactive"),
    "score": ({"type": "number", "minimum": 0, "maximum": 100}, lambda r: round(float(r.uniform(0, 100)), 1),
              lambda v: f"score {v}"),
    "email": ({"type": "string", "format": "email"},
              lambda r: f"{r.choice(FIRST).lower()}@{r.choice(CITIES).lower()}.org", lambda v: f"email {v}"),
    "born": ({"type": "string", "format": "date"}, _date, lambda v: f"born {v}"),
    "id": ({"type": "string", "format": "uuid"}, _uuid, lambda v: f"id {v}"),
    "tags": ({"type": "array", "items": {"enum": TAGS}, "maxItems": 3},
             lambda r: [str(t) for t in r.choice(TAGS, int(r.integers(0, 4)), replace=False)],
             lambda v: "tags " + ("/".join(v) if v else "none")),
    "digits": ({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1,
                "maxItems": 4}, lambda r: [int(d) for d in r.integers(0, 10, int(r.integers(1, 5)))],
               lambda v: "digits " + " ".join(map(str, v))),
    "address": ({"type": "object", "properties": {"street": {"type": "string", "maxLength": 20},
                                                  "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                 "required": ["street", "zip"], "additionalProperties": False},
                lambda r: {"street": f"{r.integers(1, 99)} {r.choice(STREETS)}", "zip": f"{r.integers(0, 99999):05d}"},
                lambda v: f"address {v['street']} zip {v['zip']}"),
    "pets": ({"type": "array", "items": {"type": "object", "properties": {"kind": {"enum": PETS},
                                                                          "count": {"type": "integer", "minimum": 1,
                                                                                    "maximum": 5}},
                                         "required": ["kind", "count"], "additionalProperties": False},
              "maxItems": 2},
             lambda r: [{"kind": str(k), "count": int(r.integers(1, 6))}
                        for k in r.choice(PETS, int(r.integers(0, 3)), replace=False)],
             lambda v: "pets " + (" and ".join(f"{p['count']} {p['kind']}" for p in v) if v else "none")),
    "phone": ({"anyOf": [{"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}, {"type": "null"}]},
              lambda r: f"{r.integers(100, 999)}-{r.integers(0, 9999):04d}" if r.integers(2) else None,
              lambda v: f"phone {v}" if v else "no phone"),
}
SCHEMA_FIELDS = [
    # flat records
    ("name",), ("name", "age"), ("name", "city"), ("age", "city"), ("name", "age", "city"), ("city", "name", "age"),
    # enums and booleans
    ("name", "level"), ("level", "active"), ("name", "level", "active"), ("age", "level", "active"),
    # formats
    ("name", "email"), ("name", "born"), ("id", "name"), ("email", "born"), ("name", "id", "born"),
    # arrays
    ("name", "tags"), ("tags", "level"), ("name", "digits"), ("digits", "active"),
    # nested objects
    ("name", "address"), ("address", "age"), ("name", "pets"), ("pets", "city"),
    # anyOf
    ("name", "phone"), ("phone", "age"), ("name", "phone", "level"),
    # mixes
    ("name", "age", "email", "tags"), ("id", "address", "phone"), ("name", "pets", "digits", "born"),
    ("name", "age", "city", "level", "active", "score"), ("score", "email", "address"), ("name", "born", "pets", "phone"),
]
MODEL = ["model.vocab_size=272", "data.tokenizer=byte", "model.max_seq_len=1024"]
FULL_SHAPE = ["model.dim=128", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
              "model.hidden_dim=344"]
QUICK_SHAPE = ["model.dim=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1",
               "model.hidden_dim=64"]
EVAL_SEED = 12345  # the fresh evaluation examples: apart from the training draws
MODES = ("unconstrained", "prompt-only", "constrained")


@dataclasses.dataclass(frozen=True)
class Settings:
    """One run's size: training steps and batch, evaluation examples per schema, the schemas evaluated (the
    first `schemas` of SCHEMA_FIELDS, all when None), the model shape and the bench's schemas and libraries."""
    steps: int
    batch_size: int
    seq_len: int
    per_schema: int
    schemas: int | None
    shape: tuple
    bench_schemas: int | None
    bench_libraries: tuple
    sentencepiece_bench: bool


FULL = Settings(steps=300, batch_size=16, seq_len=256, per_schema=4, schemas=None, shape=tuple(FULL_SHAPE),
                bench_schemas=None, bench_libraries=tuple(bench_structured.LIBRARIES), sentencepiece_bench=True)
QUICK = Settings(steps=5, batch_size=4, seq_len=256, per_schema=2, schemas=2, shape=tuple(QUICK_SHAPE),
                 bench_schemas=1, bench_libraries=("ours",), sentencepiece_bench=False)

EXPERIMENT = Experiment(
    name="structured_generation",
    title="Structured generation: validity and field accuracy of a tiny JSON-extraction model",
    paper="Efficient Guided Generation for Large Language Models (Willard & Louf, 2023; outlines)",
    arxiv="2307.09702", reproduces="§3–4 (generation guided by an index of the vocabulary over automaton states)",
    claims=(Claim("valid", "generation guided by the schema's automaton makes every output valid"),
            Claim("content", "the guide changes the form only: field accuracy stays that of free generation")),
    full_scale="the same three modes on a configs/llama2.py:7b fine-tuned for extraction, v5p-8 (the 7B row of "
                "experiments/results/pod_fit.md)",
    cpu_minutes=10.4,
    paper_numbers={"validity_constrained": "100% (by construction)"},
)


def schema_of(fields) -> dict:
    return {"type": "object", "properties": {f: FIELDS[f][0] for f in fields}, "required": list(fields),
            "additionalProperties": False}


def example(fields, rng) -> tuple[str, dict]:
    """(prompt, value) of one extraction example."""
    value = {f: FIELDS[f][1](rng) for f in fields}
    sentence = ", ".join(FIELDS[f][2](value[f]) for f in fields)
    return f"Extract {', '.join(fields)}: {sentence}\nJSON: ", value


def as_json(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def training_batch(rng, tokenizer, batch_size: int, seq_len: int) -> dict:
    """One LM batch of random examples, one per row: loss weight on the JSON and EOS only."""
    fields = np.zeros((5, batch_size, seq_len), np.int32)
    weights = np.zeros((batch_size, seq_len), np.float32)
    for row in range(batch_size):
        prompt, value = example(SCHEMA_FIELDS[rng.integers(len(SCHEMA_FIELDS))], rng)
        prompt_ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
        ids = (prompt_ids + tokenizer.encode(as_json(value)) + [tokenizer.eos_id])[: seq_len + 1]
        length = len(ids) - 1
        fields[0, row, :length], fields[1, row, :length] = ids[:-1], ids[1:]
        fields[2, row, :length], fields[3, row, :length] = np.arange(length), 1
        weights[row, len(prompt_ids) - 1:length] = 1.0
    inputs, targets, positions, segment_ids, _ = fields
    return dict(inputs=inputs, targets=targets, positions=positions, segment_ids=segment_ids, weights=weights)


def train(config, tokenizer, settings: Settings) -> tuple:
    """(model, params, final loss) after `settings.steps` AdamW steps of the LM trainer's step."""
    model = make_model(config.model)
    optimizer = make_optimizer(config.optimizer, settings.steps)
    state = make_init_state(model, optimizer, settings.seq_len)(jax.random.key(config.seed))
    step = jax.jit(make_train_step(model, optimizer, make_schedule(config.optimizer, settings.steps), 1))
    rng, loss = np.random.default_rng(config.seed), float("nan")
    for index in range(settings.steps):
        batch = training_batch(rng, tokenizer, settings.batch_size, settings.seq_len)
        state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(config.seed + 1), index))
        if index % 50 == 0 or index == settings.steps - 1:
            loss = float(metrics["loss"])
            print(f"step {index}: loss {loss:.4f}", flush=True)
    return model, nn.meta.unbox(state.params), loss


def unconstrained_values(model, params, tokenizer, prompts, max_new_tokens: int) -> list:
    prompt_ids = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]
    tokens = generate(model, params, prompt_ids, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id)
    texts = completions(tokens, [len(p) for p in prompt_ids], tokenizer, (tokenizer.eos_id,))
    return [first_json_value(text) for text in texts]


def scores(values, truths, schema) -> tuple[int, float]:
    """(valid documents, summed field accuracy) of predicted `values` against `truths`."""
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    valid = sum(value is not None and validator.is_valid(value) for value in values)
    accuracy = sum(np.mean([isinstance(v, dict) and v.get(f) == t[f] for f in t]) for v, t in zip(values, truths))
    return valid, float(accuracy)


def evaluate(model, params, tokenizer, settings: Settings, seed: int) -> list[dict]:
    """One row per schema: validity and field accuracy of each mode on `settings.per_schema` fresh examples."""
    rng = np.random.default_rng(EVAL_SEED + seed)
    rows = []
    for fields in SCHEMA_FIELDS[:settings.schemas]:
        schema = schema_of(fields)
        shot = example(fields, rng)
        tests = [example(fields, rng) for _ in range(settings.per_schema)]
        prompts, truths = [p for p, _ in tests], [v for _, v in tests]
        budget = max(len(as_json(v)) for v in truths) + 24
        run_json = functools.partial(generate_json, model, params, tokenizer, schema, prompts, max_new_tokens=budget)
        predictions = {"unconstrained": unconstrained_values(model, params, tokenizer, prompts, budget),
                       "prompt-only": run_json(constrained=False, examples=[shot]), "constrained": run_json()}
        row = {"schema": "+".join(fields), "n": len(tests)}
        for mode, values in predictions.items():
            row[mode] = scores(values, truths, schema)
        rows.append(row)
    return rows


def totals(rows) -> dict:
    """Per mode: (share of valid documents, mean field accuracy) over every evaluated example."""
    count = sum(r["n"] for r in rows)
    return {mode: (sum(r[mode][0] for r in rows) / count, sum(r[mode][1] for r in rows) / count) for mode in MODES}


def bench_results(tokenizer, settings: Settings) -> dict:
    """{vocabulary label: (scripts/bench_structured.run's results, vocabulary size)}."""
    schemas = list(bench_structured.BENCH_SCHEMAS)[:settings.bench_schemas]
    bench = {"byte": (bench_structured.run(tokenizer, 1, schemas, settings.bench_libraries), tokenizer.vocab_size)}
    if settings.sentencepiece_bench:
        sentencepiece = corpus_sentencepiece("pydoc_topics", 4096, corpus.default_data_dir())
        bench["SentencePiece"] = (bench_structured.run(sentencepiece, repeats=1), sentencepiece.vocab_size)
    return bench


def markdown_body(rows, overall, loss, bench, settings: Settings, quick: bool) -> str:
    lines = [f"Byte-level LLaMA ({'quick shape' if quick else 'width 128, 2 layers'}), {settings.steps} steps of "
             f"{settings.batch_size} procedural extraction examples (final train loss {loss:.3f}); "
             f"{settings.per_schema} fresh examples per schema, greedy.", "",
             "| mode | validity (parse + jsonschema) | field accuracy |", "|---|---|---|"]
    lines += [f"| {mode} | {overall[mode][0]:.1%} | {overall[mode][1]:.1%} |" for mode in MODES]
    lines += ["", "Per schema (valid / n, field accuracy):", "",
              "| schema | " + " | ".join(MODES) + " |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['schema']} | " + " | ".join(
            f"{row[m][0]}/{row['n']}, {row[m][1] / row['n']:.0%}" for m in MODES) + " |")
    for label, (results, vocab_size) in bench.items():
        libraries = list(next(iter(results["rows"].values()))["build"])
        lines += ["", f"## Build time and per-token overhead, {label} vocabulary ({vocab_size} ids)", "",
                  "| schema | " + " | ".join(f"build {n}" for n in libraries) + " | "
                  + " | ".join(f"per token {n}" for n in libraries) + " |", "|---|" + "---|" * 2 * len(libraries)]
        for name, row in results["rows"].items():
            lines.append(f"| {name} | " + " | ".join(f"{row['build'][n]:.4f} s" for n in libraries) + " | "
                         + " | ".join(f"{row['per_token'][n] * 1e6:.0f} µs" for n in libraries) + " |")
    coverage = next(iter(bench.values()))[0]["coverage"]
    libraries = list(next(iter(coverage.values())))
    lines += ["", "## Keyword coverage (a constraint is built for a probe schema)", "",
              "| keyword | " + " | ".join(libraries) + " |", "|---|" + "---|" * len(libraries)]
    lines += [f"| {k} | " + " | ".join("yes" if v[n] else "no" for n in libraries) + " |" for k, v in coverage.items()]
    lines += ["", "Building is not enforcing: a library may accept a keyword and ignore it (outlines-core accepts "
              "uniqueItems without enforcing it). Ours refuses what it cannot enforce exactly, and its "
              "constrained outputs always finish within max_new_tokens. xgrammar is not measured (not part of "
              "the bench: its wheels pull in PyTorch, which the bench environment does not carry)."]
    return "\n".join(lines)


def run(out_dir: Path, *, quick: bool, seed: int) -> Outcome:
    """Trains the model, evaluates the three modes, benchmarks the index (nothing is written to `out_dir`)."""
    settings = QUICK if quick else FULL
    warmup = [f"optimizer.warmup_steps={min(20, settings.steps // 5)}", f"seed={seed}"]
    config = config_lib.load("configs/llama2.py:tiny", MODEL + warmup + list(settings.shape))
    tokenizer = ByteTokenizer(vocab_size=config.model.vocab_size)
    model, params, loss = train(config, tokenizer, settings)
    rows = evaluate(model, params, tokenizer, settings, seed)
    overall = totals(rows)
    bench = bench_results(tokenizer, settings)
    headline = {f"{measure}_{mode.replace('-', '_')}": overall[mode][index]
                for index, measure in enumerate(("validity", "accuracy")) for mode in MODES}
    headline["train_loss"] = loss
    table = [{"schema": row["schema"], "n": row["n"],
              **{f"{mode}_{measure}": row[mode][index] for mode in MODES
                 for index, measure in enumerate(("valid", "accuracy_sum"))}} for row in rows]
    return Outcome(headline=headline, rows=table, markdown=markdown_body(rows, overall, loss, bench, settings, quick))


def judge(headline: dict) -> dict:
    """Valid: every constrained document valid (holds), more of them than free generation's (in part). Content:
    constrained field accuracy within the seeds' spread of free generation's or above (holds), below it (not)."""
    valid, free = headline["validity_constrained"], headline["validity_unconstrained"]
    valid_status = HOLDS if valid.mean == 1.0 else HOLDS_IN_PART if valid.mean > free.mean else DOES_NOT_HOLD
    guided, unguided = headline["accuracy_constrained"], headline["accuracy_unconstrained"]
    gap, spread = guided.mean - unguided.mean, max(guided.std, unguided.std)
    return {"valid": Verdict(valid_status, f"valid documents: constrained {valid.mean:.1%}, free generation "
                                           f"{free.mean:.1%}, prompt-only {headline['validity_prompt_only'].mean:.1%}"),
            "content": Verdict(HOLDS if gap >= -spread else DOES_NOT_HOLD,
                               f"field accuracy: constrained {guided.mean:.1%}, free generation {unguided.mean:.1%} "
                               f"({gap:+.1%}, seed std {spread:.1%})")}
