"""Build a tfds dataset into a data dir once, safely under concurrency and crashes.

A dataset lives in `<data_dir>/<name>/<version>/`; it is *complete* when its
`dataset_info.json` and every shard file that file lists are present. tfds writes
into `<data_dir>/<name>/incomplete.XXXXXX_<version>/` and renames that to the final
directory when done, so a crash leaves only an `incomplete.*` directory behind.
Builds run under an exclusive `flock` on `<data_dir>/<name>.lock`: a process that
finds the dataset incomplete waits for the lock, checks again, and builds only if
nobody else did. Leftover `incomplete.*` directories and a final directory that is
missing files (a half-built copy) are removed and the dataset rebuilt.
"""

import contextlib
import fcntl
import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

import tensorflow_datasets as tfds

INFO_FILE = "dataset_info.json"

log = logging.getLogger(__name__)


def missing_files(builder: tfds.core.DatasetBuilder) -> list[str]:
    """Paths a complete copy of `builder`'s dataset has but its directory lacks."""
    info_file = os.path.join(builder.data_dir, INFO_FILE)
    if not os.path.isfile(info_file):
        return [info_file]
    shards = [
        os.fspath(path) for split in builder.info.splits.values() for path in split.filepaths
    ]
    return [path for path in shards if not os.path.isfile(path)]


def ensure_prepared(builder_cls: type[tfds.core.DatasetBuilder], data_dir: str) -> None:
    """Makes `builder_cls`'s dataset complete in `data_dir`, building it if needed.

    Raises OSError naming `data_dir` when a build is needed and the directory cannot
    be created or written, RuntimeError naming the dataset's directory when its
    `dataset_info.json` cannot be read.
    """
    if not missing_files(_open_builder(builder_cls, data_dir)):
        return
    with _build_lock(data_dir, builder_cls.name):
        builder = _open_builder(builder_cls, data_dir)
        missing = missing_files(builder)
        if missing:
            _remove_partial_builds(builder, missing)
            _build(builder_cls(data_dir=data_dir), data_dir)  # fresh: no info read from disk


@contextlib.contextmanager
def _build_lock(data_dir: str, name: str) -> Iterator[None]:
    """Holds an exclusive `flock` on `<data_dir>/<name>.lock` (released on close)."""
    try:
        os.makedirs(data_dir, exist_ok=True)
        lock_file = open(os.path.join(data_dir, f"{name}.lock"), "a")
    except OSError as error:
        raise OSError(
            f"cannot build dataset {name!r}: data dir {data_dir!r} is not writable ({error})"
        ) from error
    with lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def _open_builder(builder_cls, data_dir: str) -> tfds.core.DatasetBuilder:
    try:
        return builder_cls(data_dir=data_dir)
    except Exception as error:  # tfds raises many types for a damaged dataset_info.json
        path = os.path.join(data_dir, builder_cls.name, str(builder_cls.VERSION))
        raise RuntimeError(
            f"dataset {builder_cls.name!r} at {path!r} is broken ({error!r}); delete that "
            "directory to rebuild it"
        ) from error


def _remove_partial_builds(builder: tfds.core.DatasetBuilder, missing: list[str]) -> None:
    dataset_root = os.path.dirname(builder.data_dir)
    for leftover in glob.glob(os.path.join(dataset_root, "incomplete.*")):
        shutil.rmtree(leftover)
    if os.path.isdir(builder.data_dir):
        log.warning(
            "dataset %r at %s is half-built (missing %s); rebuilding it",
            builder.name, builder.data_dir, missing[0],
        )
        shutil.rmtree(builder.data_dir)


def _build(builder: tfds.core.DatasetBuilder, data_dir: str) -> None:
    log.info("building dataset %r in %s", builder.name, data_dir)
    tfds.display_progress_bar(False)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".downloads-") as download_dir:
        builder.download_and_prepare(download_dir=download_dir, file_format="array_record")
