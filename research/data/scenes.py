"""Offline image data: procedural scenes of shapes, and scikit-learn's bundled digits, as tfds builders.

Every example is a 32×32 RGB image (uint8) with a caption and its objects, each a COCO-style box
`[x, y, w, h]` in pixels (x, y the top-left pixel; w, h the extent, so the object's pixels are the
columns x … x+w−1 and rows y … y+h−1) and a category:

- `shape_scenes`: 1–3 shapes (circle, square, triangle) of distinct colours and sizes (small 6,
  medium 9, large 12 pixels across) at random positions on black, their boxes apart; captioned
  "a small red circle, a large blue square and a medium green triangle" in drawing order. Scene i of
  a split is drawn by NumPy's generator seeded with (SCENE_SEED, split, i): the data are the same on
  every machine, and a scene does not depend on how many others are built.
- `digits`: the 1,797 8×8 digits of `sklearn.datasets.load_digits` (intensities 0–16) upsampled
  4× (nearest) to 32×32 grey RGB; captioned "the digit 7"; one object, the box of the ink, with the
  digit as category. Every tenth digit (index % 10 == 0) is in `validation`.

Built into `<data_dir>/<name>/<version>/` as array_record on first use (research/data/prepare.py) and
read without TensorFlow; `data_source(name, split, data_dir)` gives `ImageRecord`s.
"""

import abc
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from research.data import prepare
from research.data.corpus import resolve_data_dir

log = logging.getLogger(__name__)

IMAGE_SIDE = 32
SPLITS = ("train", "validation")
SCENE_SEED = 20240516
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 6, "medium": 9, "large": 12}  # pixels across
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (240, 220, 40),
          "magenta": (220, 60, 220), "cyan": (40, 210, 220), "white": (245, 245, 245), "orange": (250, 140, 30)}
MAX_SHAPES = 3
PLACEMENT_TRIES = 100
DIGIT_UPSAMPLING = 4


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """image uint8 [32, 32, 3]; caption; boxes int32 [n, 4] as [x, y, w, h]; categories, one a box."""

    image: np.ndarray
    caption: str
    boxes: np.ndarray
    categories: tuple[str, ...]


def shape_mask(shape: str, size: int) -> np.ndarray:
    """bool [size, size]: the pixels (centres at i + ½) inside the shape, which touches all four sides.

    circle: within size/2 of the centre; square: all; triangle: apex up, row r spanning
    |x − size/2| ≤ (r + 1)/2, so its base is the bottom row."""
    centres = np.arange(size) + 0.5
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    if shape == "circle":
        return (rows - size / 2) ** 2 + (cols - size / 2) ** 2 <= (size / 2) ** 2
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "triangle":
        return np.abs(cols - size / 2) <= (rows + 0.5) / 2
    raise ValueError(f"unknown shape {shape!r}; known shapes: {SHAPES}")


def boxes_apart(a, b) -> bool:
    """Whether boxes [x, y, w, h] `a` and `b` share no pixel."""
    return a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]


def caption_of(descriptions: Sequence[str]) -> str:
    """"a X", "a X and a Y", "a X, a Y and a Z"."""
    named = [f"a {description}" for description in descriptions]
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]


def draw_scene(rng: np.random.Generator) -> ImageRecord:
    """1–3 shapes of distinct colours at random positions where their boxes do not touch (a shape
    with no free place after `PLACEMENT_TRIES` draws is left out)."""
    image = np.zeros((IMAGE_SIDE, IMAGE_SIDE, 3), np.uint8)
    count = int(rng.integers(1, MAX_SHAPES + 1))
    colors = rng.choice(list(COLORS), size=count, replace=False)
    boxes, categories, descriptions = [], [], []
    for color in colors:
        shape, size_name = SHAPES[rng.integers(len(SHAPES))], list(SIZES)[rng.integers(len(SIZES))]
        size = SIZES[size_name]
        for _ in range(PLACEMENT_TRIES):
            box = [int(v) for v in rng.integers(0, IMAGE_SIDE - size + 1, size=2)] + [size, size]
            if all(boxes_apart(box, other) for other in boxes):
                break
        else:
            continue
        x, y = box[0], box[1]
        image[y:y + size, x:x + size][shape_mask(shape, size)] = COLORS[color]
        boxes.append(box)
        categories.append(shape)
        descriptions.append(f"{size_name} {color} {shape}")
    return ImageRecord(image, caption_of(descriptions), np.array(boxes, np.int32).reshape(-1, 4), tuple(categories))


def scene(split: str, index: int) -> ImageRecord:
    """Scene `index` of `split`: `draw_scene` with the generator seeded (SCENE_SEED, split, index)."""
    return draw_scene(np.random.default_rng((SCENE_SEED, SPLITS.index(split), index)))


def digit_records() -> dict[str, list[ImageRecord]]:
    """Split -> the sklearn digits as `ImageRecord`s, in sklearn's order."""
    from sklearn.datasets import load_digits  # scikit-learn only where the digits are built

    digits = load_digits()
    records = {split: [] for split in SPLITS}
    for index, (small, label) in enumerate(zip(digits.images, digits.target)):
        grey = np.kron(small, np.ones((DIGIT_UPSAMPLING, DIGIT_UPSAMPLING)))
        image = np.repeat(np.round(grey * 255 / 16).astype(np.uint8)[..., None], 3, axis=-1)
        rows, cols = np.nonzero(grey)
        box = [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        split = "validation" if index % 10 == 0 else "train"
        records[split].append(ImageRecord(image, f"the digit {label}", np.array([box], np.int32), (str(label),)))
    return records


class ImageDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images with a caption and boxed objects; `records(split)` gives a split's `ImageRecord`s."""

    VERSION = tfds.core.Version("1.0.0")
    CATEGORIES: tuple[str, ...]
    DESCRIPTION: str

    @abc.abstractmethod
    def records(self, split: str) -> Sequence[ImageRecord]:
        """The split's records, in order."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """No checksums or metadata files sit next to this code (as research/data/corpus.py)."""
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Tensor(shape=(IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8),
            "caption": tfds.features.Text(),
            "objects": tfds.features.Sequence({"bbox": tfds.features.Tensor(shape=(4,), dtype=np.int32),
                                               "category": tfds.features.ClassLabel(names=self.CATEGORIES)}),
        }
        return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                     features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in SPLITS}

    def _log_download_bytes(self) -> None:  # tfds prints a misleading "Downloading ..."
        log.info("preparing %s in %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        log.info("prepared %s in %s", self.name, self.data_dir)

    def _generate_examples(self, split: str):
        for index, record in enumerate(self.records(split)):
            yield index, {"image": record.image, "caption": record.caption,
                          "objects": {"bbox": record.boxes, "category": list(record.categories)}}


class ShapeScenes(ImageDataset):
    CATEGORIES = SHAPES
    DESCRIPTION = "Procedural 32x32 scenes of 1-3 coloured shapes, captioned, with COCO-style boxes."
    SPLIT_SIZES = {"train": 8192, "validation": 512}

    def records(self, split: str) -> Sequence[ImageRecord]:
        return [scene(split, index) for index in range(self.SPLIT_SIZES[split])]


class Digits(ImageDataset):
    CATEGORIES = tuple(str(digit) for digit in range(10))
    DESCRIPTION = "scikit-learn's 8x8 digits upsampled to 32x32 RGB, captioned, with the ink's box."

    def records(self, split: str) -> Sequence[ImageRecord]:
        return digit_records()[split]


DATASETS: dict[str, type[ImageDataset]] = {"shape_scenes": ShapeScenes, "digits": Digits}


class ImageRecords(Sequence):
    """Random access to one split of a built dataset: `records[i]` is an `ImageRecord`."""

    def __init__(self, source, categories: Sequence[str]):
        self._source, self._categories = source, tuple(categories)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> ImageRecord:
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        example = self._source[index % len(self)]
        objects = example["objects"]
        return ImageRecord(np.asarray(example["image"], np.uint8), example["caption"].decode("utf-8"),
                           np.array(objects["bbox"], np.int32).reshape(-1, 4),
                           tuple(self._categories[int(c)] for c in objects["category"]))


def read_split(builder_cls: type[ImageDataset], split: str, data_dir: str) -> ImageRecords:
    """The records of `split` of `builder_cls`'s dataset, built into `data_dir` on first use."""
    prepare.ensure_prepared(builder_cls, data_dir)
    source = builder_cls(data_dir=data_dir).as_data_source(split=split)
    return ImageRecords(source, builder_cls.CATEGORIES)


def data_source(name: str, split: str, data_dir: str | None = None) -> ImageRecords:
    """The records of `split` of dataset `name` (`DATASETS`) in `data_dir` (None: the default data dir).

    Raises ValueError for an unknown dataset or split."""
    if name not in DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; known: {sorted(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} of image dataset {name!r}; known splits: {list(SPLITS)}")
    return read_split(DATASETS[name], split, resolve_data_dir(data_dir))
