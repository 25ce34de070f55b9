"""experiments/structured_generation.py: the data and scoring on known values, and the quick
experiment through the gallery (constrained output always valid, the report written)."""

import json

import jsonschema
import numpy as np

from experiments import structured_generation as experiment
from tests.experiments.quick import run_quick


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


def test_quick_run_constrains_every_document_and_benches_the_index(tmp_path):
    report, outcome = run_quick("structured_generation", tmp_path)
    assert outcome.headline["validity_constrained"] == 1.0  # every constrained document valid, even untrained
    assert [row["schema"] for row in outcome.rows] == ["+".join(f) for f in experiment.SCHEMA_FIELDS[:2]]
    assert report["verdicts"]["valid"]["status"] == "holds"
    for text in ("| constrained | 100.0% |", "| unconstrained |", "| prompt-only |", "| schema | build ours |",
                 "| pattern | yes |", "| recursive $ref | no |"):
        assert text in outcome.markdown
