"""research/train/trainers/chameleon.py: interleaved scene documents train through the shared loop on a
data × fsdp × tensor mesh as on one device, with the z-loss in the objective and logged apart, the
generation evaluators and the PNG grid; a missing or mismatched VQ tokenizer and a bad image are named."""

import flax.linen as nn
import jax
import matplotlib.image
import numpy as np
import pytest

from research import config as config_lib
from research.data.scenes import ImageRecord
from research.models import make_model
from research.optim import make_optimizer, make_schedule
from research.train.loop import train
from research.train.metrics import read_metrics
from research.train.trainers.chameleon import encode_records, load_image_tokenizer, make_train_step
from research.train.trainers.lm import make_init_state
from tests.train.test_loop import ONE_DEVICE, losses

VQ = {"base_channels": 8, "norm_groups": 4, "latent_channels": 8, "embed_dim": 8, "num_embeddings": 32}
DECODER = {"model.dim": 32, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2,
           "model.hidden_dim": 64, "model.num_image_codes": 32, "model.dropout": 0.1, "train.seq_len": 192,
           "train.batch_size": 8, "train.steps": 3, "train.log_every": 1, "train.checkpoint_every": 3,
           "train.eval_every": 0, "train.eval_batches": 1, "data.train_images": 16, "optimizer.warmup_steps": 0,
           "evals.captions.images": 2, "evals.captions.max_new_tokens": 6, "evals.grounding.images": 2,
           "evals.grounding.max_new_tokens": 6, "evals.drawing.images": 2}


def chameleon_config(tokenizer_workdir, *extra):
    pairs = {**DECODER, **{f"model.image_tokenizer.{k}": v for k, v in VQ.items()},
             "data.image_tokenizer_workdir": str(tokenizer_workdir)}
    return config_lib.load("configs/chameleon.py:tiny", [f"{k}={v}" for k, v in pairs.items()] + list(extra))


@pytest.fixture(scope="module")
def tokenizer_workdir(tmp_path_factory):
    """A workdir of the VQ tokenizer's trainer, one step trained."""
    workdir = tmp_path_factory.mktemp("vq")
    overrides = [f"model.{k}={v}" for k, v in VQ.items()] + [
        "train.steps=1", "train.batch_size=4", "train.checkpoint_every=1", "optimizer.warmup_steps=0",
        "evals.reconstruction.batches=1", "evals.grid.images=1"]
    train(config_lib.load("configs/vq_image_tokenizer.py:tiny", overrides), str(workdir), devices=ONE_DEVICE)
    return workdir


def test_interleaved_batches_train_on_a_data_fsdp_tensor_mesh_as_on_one_device(tokenizer_workdir, tmp_path):
    train(chameleon_config(tokenizer_workdir), str(tmp_path / "one"), devices=ONE_DEVICE)
    results = train(chameleon_config(tokenizer_workdir, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"),
                    str(tmp_path / "eight"))
    one, eight = losses(str(tmp_path / "one")), losses(str(tmp_path / "eight"))
    assert [step for step, _ in one] == [1, 2, 3]
    np.testing.assert_allclose([loss for _, loss in one], [loss for _, loss in eight], rtol=1e-4)
    first = read_metrics(str(tmp_path / "eight"))[0]
    assert first["z_loss"] > 0 and first["output_norm"] > 0 and first["logit_norm"] > 0
    for metric in ("captions_object_accuracy", "grounding_map", "drawing_object_accuracy",
                   "drawing_reference_object_accuracy"):
        assert 0.0 <= results[metric] <= 1.0
    assert len(results["captions_samples"]) == 2 and results["eval_z_loss"] > 0
    grid = matplotlib.image.imread(results["drawing_file"])
    assert grid.shape[:2] == (2 * 32 * 4, 2 * 32 * 4)  # scenes above drawings, two of each, 4× enlarged


def test_an_untrained_tokenizer_workdir_is_named_with_the_command_that_trains_it(tmp_path):
    config = chameleon_config(tmp_path / "nothing")
    with pytest.raises(ValueError, match="data.image_tokenizer_workdir.*holds no trained VQ image tokenizer.*"
                                         "configs/vq_image_tokenizer.py:tiny"):
        load_image_tokenizer(config.data.image_tokenizer_workdir, config.model.image_tokenizer)


def test_a_tokenizer_of_another_shape_is_named(tokenizer_workdir):
    config = chameleon_config(tokenizer_workdir, "model.image_tokenizer.num_embeddings=64", "model.num_image_codes=64")
    with pytest.raises(ValueError, match="differs from model.image_tokenizer in num_embeddings"):
        load_image_tokenizer(config.data.image_tokenizer_workdir, config.model.image_tokenizer)


@pytest.mark.parametrize("shape", [(16, 16, 3), (32, 32, 4)])
def test_an_image_of_the_wrong_size_or_channels_is_named(tokenizer_workdir, shape):
    config = chameleon_config(tokenizer_workdir)
    params = load_image_tokenizer(config.data.image_tokenizer_workdir, config.model.image_tokenizer)
    record = ImageRecord(np.zeros(shape, np.uint8), "a small red circle", np.zeros((1, 4), np.int32), ("circle",))
    with pytest.raises(ValueError, match=rf"pixels of shape \(1, {shape[0]}, {shape[1]}, {shape[2]}\).*32, 32, 3"):
        encode_records(config.model, params, [record])


def one_step(z_loss_weight: float, dropout: float):
    """(jitted train step, first state, batch) of a tiny decoder on two rows of one document each."""
    config = chameleon_config("unused", f"model.z_loss_weight={z_loss_weight}", f"model.dropout={dropout}")
    model = make_model(config.model)
    optimizer = make_optimizer(config.optimizer, 3)
    state = nn.meta.unbox(make_init_state(model, optimizer, 24)(jax.random.key(0)))
    tokens = np.arange(25, dtype=np.int32)[None].repeat(2, 0) * 37 % 1024
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": np.arange(24)[None].repeat(2, 0),
             "segment_ids": np.ones((2, 24), np.int32), "weights": np.ones((2, 24), np.float32)}
    return jax.jit(make_train_step(model, optimizer, make_schedule(config.optimizer, 3), 1)), state, batch


def test_the_z_loss_joins_the_objective_and_is_logged_apart_from_the_loss():
    (plain, plain_metrics), (with_z, z_metrics) = [step(state, batch, jax.random.key(0))
                                                   for step, state, batch in (one_step(0.0, 0.0), one_step(1.0, 0.0))]
    assert plain_metrics["loss"] == z_metrics["loss"] and plain_metrics["z_loss"] == z_metrics["z_loss"]
    assert z_metrics["z_loss"] > 1.0  # log Z ≈ log 1024 at the start
    moved = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(with_z.params))]
    assert max(moved) > 0  # the z-loss changed the update


def test_dropout_draws_from_the_step_key():
    step, state, batch = one_step(0.0, 0.5)
    assert step(state, batch, jax.random.key(0))[1]["loss"] != step(state, batch, jax.random.key(1))[1]["loss"]
