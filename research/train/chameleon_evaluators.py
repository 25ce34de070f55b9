"""Generation evaluators of early-fusion training (research/train/trainers/chameleon.py).

Each prompts the decoder with the first `images` validation scenes in the layout of
research/data/interleaved.py and decodes greedily under the modality constraint
(research/decoding/modality.py: no image code in text, exactly image_seq_len codes in an image; text limited
to the text tokenizer's ids):

    captions   "caption:" <image> → text until eos, scored by research/eval/scene_captions.py
               (object_accuracy, exact; `samples`: the first `show` captions, also logged)
    grounding  "boxes:" <image>   → "circle 3 4 6 6; …" until eos, COCO mAP by research/eval/grounding.py
    drawing    "draw: <caption>" <boi> → image_seq_len codes and <eoi>; the codes decoded to pixels by the
               frozen VQ decoder and judged by research/eval/scene_judge.py (object_accuracy, exact), beside
               `reference_object_accuracy`: the judge on the scenes' own codes decoded (what the tokenizer
               lets a perfect decoder reach). Writes <workdir>/generated_images.png: the scenes in the top
               row, the drawings of their captions below, 4× enlarged (`file`).
"""

import logging
from pathlib import Path

import jax
import matplotlib.image
import numpy as np

from research.data.interleaved import prompt_ids
from research.data.scenes import DATASETS
from research.decoding.modality import modality_constraint
from research.decoding.sampling import generate
from research.eval.grounding import grounding_map
from research.eval.scene_captions import caption_accuracy
from research.eval.scene_judge import drawing_accuracy
from research.models.chameleon import image_token_ids
from research.models.vq_image_tokenizer import decode, latent_side
from research.train.evaluators import Evaluator
from research.train.trainers.image_tokenizer import image_grid

log = logging.getLogger(__name__)

KINDS = ("captions", "grounding", "drawing")
WORKDIR_KINDS = ("drawing",)
PROMPT_KINDS = {"captions": "caption", "grounding": "boxes", "drawing": "draw"}
GRID_FILE = "generated_images.png"


def tokenizer_constraint(model_config, tokenizer, image_codes_written: int | None = None):
    """`modality_constraint` with text limited to the ids the text tokenizer has: the vocabulary's ids between
    the tokenizer's last and the image codes (unused padding of the id space) are never written."""
    constraint = modality_constraint(model_config, image_codes_written)
    unused = np.zeros(model_config.vocab_size, bool)
    unused[tokenizer.vocab_size:] = True
    unused[image_token_ids(model_config)] = False
    unused[[model_config.begin_image_id, model_config.end_image_id]] = False
    return constraint._replace(next_state=np.where(unused, -1, constraint.next_state).astype(np.int32))


def completions(model, params, prompts, *, max_new_tokens: int, eos_id: int, constraint) -> list[list[int]]:
    """Each prompt's greedy continuation under `constraint`, up to (not including) the stop id."""
    tokens = np.asarray(generate(model, params, prompts, max_new_tokens=max_new_tokens, eos_id=eos_id,
                                 constraint=constraint))
    written = [row[len(prompt):len(prompt) + max_new_tokens].tolist() for row, prompt in zip(tokens, prompts)]
    return [ids[:ids.index(eos_id)] if eos_id in ids else ids for ids in written]


def text_evaluator(kind: str, evaluator_config, model, tokenizer, data) -> Evaluator:
    """A "captions" or "grounding" evaluator (module docstring)."""
    model_config = model.config
    records = data.records("validation")[:evaluator_config.images]
    constraint = tokenizer_constraint(model_config, tokenizer)

    def run(params):
        image_ids = data.image_ids("validation")
        prompts = [prompt_ids(PROMPT_KINDS[kind], record, ids, tokenizer, model_config)
                   for record, ids in zip(records, image_ids)]
        texts = [tokenizer.decode(ids).strip() for ids in completions(
            model, params, prompts, max_new_tokens=evaluator_config.max_new_tokens, eos_id=tokenizer.eos_id,
            constraint=constraint)]
        for text, record in list(zip(texts, records))[:evaluator_config.show]:
            log.info("%s: %r (reference %r)", kind, text, record.caption if kind == "captions" else record.boxes.tolist())
        if kind == "captions":
            scores = caption_accuracy(texts, [record.caption for record in records])
        else:
            scores = grounding_map(texts, [record.boxes for record in records], [record.categories for record in records],
                                   DATASETS[data.config.data.name].CATEGORIES)
        return {**scores, "samples": texts[:evaluator_config.show]}

    return Evaluator(evaluator_config.every, run)


def drawing_evaluator(evaluator_config, model, tokenizer, data, path: Path) -> Evaluator:
    """The "drawing" evaluator (module docstring), writing its grid to `path` (process 0)."""
    model_config = model.config
    records = data.records("validation")[:evaluator_config.images]
    captions = [record.caption for record in records]
    side = latent_side(model_config.image_tokenizer)
    constraint = tokenizer_constraint(model_config, tokenizer, image_codes_written=0)
    to_pixels = jax.jit(lambda params, codes: decode(model_config.image_tokenizer, params, codes))

    def pixels_of(image_ids):
        codes = np.asarray(image_ids, np.int32).reshape(-1, side, side) - model_config.image_token_offset
        return np.asarray(to_pixels(data.tokenizer_params, codes))

    def run(params):
        prompts = [prompt_ids("draw", record, None, tokenizer, model_config) for record in records]
        written = completions(model, params, prompts, max_new_tokens=model_config.image_seq_len + 1,
                              eos_id=tokenizer.eos_id, constraint=constraint)
        drawings = pixels_of([ids[:model_config.image_seq_len] for ids in written])
        scenes = np.stack([record.image.astype(np.float32) / 127.5 - 1.0 for record in records])
        if jax.process_index() == 0:
            matplotlib.image.imsave(path, image_grid(scenes, drawings))
        reference = drawing_accuracy(pixels_of(data.image_ids("validation")[:len(records)]), captions)
        return {**drawing_accuracy(drawings, captions), "reference_object_accuracy": reference["object_accuracy"],
                "file": str(path)}

    return Evaluator(evaluator_config.every, run)


def make(evaluator_config, model, tokenizer, data, workdir: Path | None) -> Evaluator:
    """The evaluator of `evaluator_config.kind` (one of KINDS); `data` is the trainer's `ImageData`."""
    if evaluator_config.kind == "drawing":
        return drawing_evaluator(evaluator_config, model, tokenizer, data, workdir / GRID_FILE)
    return text_evaluator(evaluator_config.kind, evaluator_config, model, tokenizer, data)
