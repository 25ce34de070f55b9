"""experiments/structured_generation.py: the data and scoring on known values, and the quick
experiment end to end (constrained output always valid, the report written)."""

import json

import jsonschema
import numpy as np

from experiments import structured_generation as experiment


def test_every_schema_accepts_its_own_examples_and_the_prompt_names_the_fields():
    rng = np.random.default_rng(0)
    assert len(experiment.SCHEMA_FIELDS) >= 30
    for fields in experiment.SCHEMA_FIELDS:
        prompt, value = experiment.example(fields, rng)
        jsonschema.validate(value, experiment.schema_of(fields), format_checker=jsonschema.FormatChecker())
        assert prompt.startswith(f"Extract {', '.join(fields)}: ") and prompt.endswith("\nJSON: ")
        assert list(json.loads(experiment.as_json(value))) == list(fields)


def test_scores_count_valid_documents_and_matching_fields():
    schema = experiment.schema_of(("name", "age"))
    truths = [{"name": "Ada", "age": 3}] * 3
    valid, accuracy = experiment.scores([{"name": "Ada", "age": 4}, None, {"name": "Ada", "age": 3}], truths, schema)
    assert valid == 2 and accuracy == 0.5 + 0 + 1


def test_the_quick_experiment_writes_the_table(tmp_path):
    output = tmp_path / "structured_generation"
    result = experiment.main(["--quick", "--output", str(output)])
    assert result["overall"]["constrained"][0] == 1.0  # every constrained document valid, even untrained
    report = output.with_suffix(".md").read_text()
    for text in ("| constrained | 100.0% |", "| unconstrained |", "| prompt-only |", "| schema | build ours |",
                 "| pattern | yes |", "| recursive $ref | no |"):
        assert text in report
