"""Offline text corpora: tfds builders written as array_record, read without TensorFlow.

Corpora (each example is one document, every feature a `tfds.features.Text`):

- `pydoc_topics`: one example per topic of `pydoc_data.topics.topics`, the help
  texts that ship with CPython (~465k characters of English); features `id`, `text`.
- `python_stdlib`: one example per non-empty `.py` file of the running interpreter's
  standard library source (~12 MB on CPython 3.11); features `path` (relative to the
  stdlib root, `/`-separated) and `text`. Test suites (directories named `test`,
  `tests` or `idle_test`) and `site-packages`/`dist-packages` are left out: the
  suites are 60% of the source and mostly fixtures rather than library code.

Both come from the interpreter that builds them, so their content follows its
Python version; nothing is downloaded.

Splits `train` and `validation`: documents are ranked by SHA-256 of their key (`id`
or `path`); `validation` is the shortest prefix of that ranking whose texts hold at
least `VALIDATION_FRACTION` of the corpus' characters, `train` is the rest. The
assignment is deterministic and the splits are disjoint.
"""

import abc
import bisect
import hashlib
import itertools
import logging
import os
import sysconfig
from collections.abc import Mapping, Sequence

import pydoc_data.topics
import tensorflow_datasets as tfds

from research.data import prepare

log = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.05
SPLITS = ("train", "validation")
EXCLUDED_STDLIB_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)


def default_data_dir() -> str:
    """`$RESEARCH_DATA_DIR` if set, else `~/.cache/research/data`."""
    return os.environ.get("RESEARCH_DATA_DIR") or os.path.expanduser("~/.cache/research/data")


def resolve_data_dir(data_dir: str | None) -> str:
    """`data_dir` (None: `default_data_dir()`) as an absolute path, `~` expanded."""
    return os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))


def validation_keys(texts: Mapping[str, str], fraction: float = VALIDATION_FRACTION) -> frozenset[str]:
    """Keys of the validation split: the shortest prefix of the keys ranked by
    SHA-256(key) whose texts hold at least `fraction` of all characters."""
    ranked = sorted(texts, key=lambda key: hashlib.sha256(key.encode()).hexdigest())
    budget = fraction * sum(len(text) for text in texts.values())
    chosen, size = [], 0
    for key in ranked:
        if size >= budget:
            break
        chosen.append(key)
        size += len(texts[key])
    return frozenset(chosen)


def pydoc_topics_texts() -> dict[str, str]:
    """Topic name -> help text, from `pydoc_data.topics`."""
    return dict(pydoc_data.topics.topics)


def python_stdlib_texts(root: str | None = None) -> dict[str, str]:
    """Relative path -> source of every non-empty `.py` file under the stdlib `root`
    (default: the running interpreter's), skipping `EXCLUDED_STDLIB_DIRS`."""
    root = root or sysconfig.get_paths()["stdlib"]
    texts = {}
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d not in EXCLUDED_STDLIB_DIRS)
        for file_name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(directory, file_name)
            with open(path, encoding="utf-8") as source_file:
                text = source_file.read()
            if text.strip():
                texts[os.path.relpath(path, root).replace(os.sep, "/")] = text
    return texts


class TextCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A corpus of documents keyed by `KEY`, split by `validation_keys`."""

    VERSION = tfds.core.Version("1.0.0")
    KEY: str
    DESCRIPTION: str

    @abc.abstractmethod
    def texts(self) -> dict[str, str]:
        """Key -> document text of the whole corpus."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """No checksums or metadata files sit next to this code. (tfds' own lookup of
        them probes package resources through the optional `importlib_resources`.)"""
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        features = {self.KEY: tfds.features.Text(), "text": tfds.features.Text()}
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(features),
        )

    def _split_generators(self, dl_manager):
        texts = self.texts()
        held_out = validation_keys(texts)
        keys = {
            "train": [key for key in sorted(texts) if key not in held_out],
            "validation": sorted(held_out),
        }
        return {split: self._generate_examples(texts, keys[split]) for split in SPLITS}

    def _generate_examples(self, texts: Mapping[str, str], keys: Sequence[str]):
        for key in keys:
            yield key, {self.KEY: key, "text": texts[key]}

    def _log_download_bytes(self) -> None:  # tfds prints a misleading "Downloading ..."
        log.info("preparing %s in %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        log.info("prepared %s in %s", self.name, self.data_dir)


class PydocTopics(TextCorpus):
    KEY = "id"
    DESCRIPTION = "CPython's pydoc help topics (pydoc_data.topics), one example per topic."

    def texts(self) -> dict[str, str]:
        return pydoc_topics_texts()


class PythonStdlib(TextCorpus):
    KEY = "path"
    DESCRIPTION = "The running Python's standard-library .py sources without test suites."

    def texts(self) -> dict[str, str]:
        return python_stdlib_texts()


CORPORA: dict[str, type[TextCorpus]] = {"pydoc_topics": PydocTopics, "python_stdlib": PythonStdlib}


class TextExamples(Sequence):
    """Random access to one split: `examples[i]` is a dict of the features as `str`.

    `shards` are the split's (shard file, number of examples) in order, so example i is in
    the first shard whose running count exceeds i. An example that cannot be read or
    decoded (a damaged shard) raises RuntimeError naming its shard file and saying to
    delete `dataset_dir`, which the next `data_source` rebuilds from the bundled sources.
    """

    def __init__(self, source: Sequence, shards: Sequence[tuple[str, int]], dataset_dir: str):
        self._source = source
        self._shard_files = [file for file, _ in shards]
        self._shard_ends = list(itertools.accumulate(count for _, count in shards))
        self._dataset_dir = dataset_dir

    def __len__(self) -> int:
        return len(self._source)

    def shard_of(self, index: int) -> str:
        """The shard file holding example `index` (0 <= index < len(self))."""
        return self._shard_files[bisect.bisect_right(self._shard_ends, index)]

    def __getitem__(self, index: int) -> dict[str, str]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"example {index} out of range for {len(self)} examples")
        index %= len(self)
        try:
            record = self._source[index]
            return {key: value.decode("utf-8") for key, value in record.items()}
        except Exception as error:  # Riegeli, array_record, tfds and UTF-8 decoding raise many types
            raise RuntimeError(
                f"{self.shard_of(index)}: example {index} cannot be read ({error}); the dataset at "
                f"{self._dataset_dir!r} is broken: delete that directory and rerun to rebuild it "
                "from the bundled sources"
            ) from error


def data_source(name: str, split: str, data_dir: str) -> TextExamples:
    """The examples of `split` of corpus `name`, building the corpus into `data_dir`
    on first use (see `prepare.ensure_prepared`).

    Raises ValueError for an unknown corpus or split, OSError when a build is needed
    and `data_dir` is not writable, RuntimeError naming the dataset's directory when
    the stored dataset cannot be read (and the shard file, when one of its examples
    cannot be read, here or later through the returned examples).
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; known corpora: {sorted(CORPORA)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} of corpus {name!r}; known splits: {list(SPLITS)}")
    data_dir = resolve_data_dir(data_dir)
    prepare.ensure_prepared(CORPORA[name], data_dir)
    dataset_dir = os.path.join(data_dir, name, str(CORPORA[name].VERSION))
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # tfds raises many types for a damaged dataset
        raise RuntimeError(
            f"dataset {name!r} at {dataset_dir!r} is broken ({error!r}); delete that "
            "directory to rebuild it"
        ) from error
    instructions = source.dataset_info.splits[split].file_instructions
    shards = [(os.fspath(shard.filename), shard.take) for shard in instructions]
    examples = TextExamples(source, shards, dataset_dir)
    if len(examples):  # array_record opens files lazily: read both ends of the split
        _ = examples[0], examples[len(examples) - 1]
    return examples
