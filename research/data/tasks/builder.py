"""The task suites as tfds array_record datasets, built on first use, read without TensorFlow.

`task_source(suite, split, data_dir, count=..., seed=...)` builds `count` problems of
each split of `suite` for `seed` into `<data_dir>/procedural_tasks/<suite>_<count>_seed<seed>/`
(once, under research/data/prepare.py's lock) and returns random access to one split
as `Problem`s. Nothing is downloaded: every problem comes from research/data/tasks/suites.py,
so the dataset equals `generate_problems(suite, split, count, seed)`, in its order.
"""

import dataclasses
import json
import logging
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from research.data import corpus, prepare
from research.data.tasks import suites
from research.data.tasks.problem import Problem

log = logging.getLogger(__name__)

DEFAULT_COUNT = 10_000
TEXT_FIELDS = ("id", "suite", "prompt", "answer", "reasoning", "tests", "inputs")


@dataclasses.dataclass
class TaskSuiteConfig(tfds.core.BuilderConfig):
    """Which problems a dataset holds: `count` per split of `suite` for `seed`."""

    suite: str = "arithmetic"
    count: int = DEFAULT_COUNT
    seed: int = 0


class ProceduralTasks(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Problems of one task suite, one example per `Problem` (`inputs` as JSON)."""

    name = "procedural_tasks"
    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """No checksums or metadata files sit next to this code (as corpus.TextCorpus)."""
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        features = {field: tfds.features.Text() for field in TEXT_FIELDS}
        features["difficulty"] = tfds.features.Scalar(dtype=np.int32)
        return tfds.core.DatasetInfo(
            builder=self, description="Seeded procedural problems with verifiable answers.",
            features=tfds.features.FeaturesDict(features), disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in suites.SPLITS}

    def _generate_examples(self, split: str):
        config = self.builder_config
        for problem in suites.generate_problems(config.suite, split, config.count, config.seed):
            record = dataclasses.asdict(problem)
            record["inputs"] = json.dumps(record["inputs"], sort_keys=True)
            yield problem.id, record

    def _log_download_bytes(self) -> None:  # tfds prints a misleading "Downloading ..."
        log.info("preparing %s in %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        log.info("prepared %s in %s", self.name, self.data_dir)


def builder_class(suite: str, count: int, seed: int) -> type[ProceduralTasks]:
    """`ProceduralTasks` whose only (so default) config is (suite, count, seed), the
    form research/data/prepare.py builds from."""
    config = TaskSuiteConfig(name=f"{suite}_{count}_seed{seed}", suite=suite, count=count, seed=seed)
    return type("ProceduralTasks", (ProceduralTasks,), {"BUILDER_CONFIGS": [config]}, skip_registration=True)


class ProblemExamples(Sequence):
    """Random access to one split as `Problem`s (a view over the tfds data source)."""

    def __init__(self, source: Sequence):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Problem:
        if not -len(self) <= index < len(self):
            raise IndexError(f"problem {index} out of range for {len(self)} problems")
        record = self._source[index % len(self)]
        fields = {field: record[field].decode("utf-8") for field in TEXT_FIELDS}
        fields["inputs"] = json.loads(fields["inputs"])
        return Problem(difficulty=int(record["difficulty"]), **fields)


def task_source(suite: str, split: str, data_dir: str | None = None, *, count: int = DEFAULT_COUNT,
                seed: int = 0) -> ProblemExamples:
    """The `split` of `suite` (`count` problems for `seed`) as `Problem`s, built into
    `data_dir` (None: corpus.default_data_dir()) on first use.

    ValueError for an unknown suite or split or a count that is not positive; OSError
    when a build is needed and `data_dir` is not writable.
    """
    suites.check_suite_and_split(suite, split)
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    data_dir = corpus.resolve_data_dir(data_dir)
    cls = builder_class(suite, count, seed)
    prepare.ensure_prepared(cls, data_dir)
    return ProblemExamples(cls(data_dir=data_dir).as_data_source(split=split))
