"""A tiny training run gives the same loss curve with attention_impl "xla" and "pallas".

The batches are packed documents, so this checks that flash attention's causal order by index
with segment ids sees what the dense path's mask by position sees, in the forward pass and in the
gradients.
"""
import jax
import numpy as np

from research.train.loop import train
from research.train.metrics import read_metrics

ONE_DEVICE = jax.devices()[:1]
SHORT = dict(train__steps=4, train__eval_every=0, train__checkpoint_every=0)


def losses(workdir):
    return [r["loss"] for r in read_metrics(workdir) if "loss" in r]


def test_pallas_training_follows_the_xla_loss_curve(tiny_config, tmp_path):
    xla = train(tiny_config(**SHORT), str(tmp_path / "xla"), devices=ONE_DEVICE)
    pallas = train(tiny_config(model__attention_impl="pallas", **SHORT), str(tmp_path / "pallas"), devices=ONE_DEVICE)
    xla_losses = losses(str(tmp_path / "xla"))
    assert len(xla_losses) == 4 and xla_losses[-1] < xla_losses[0]  # it trains, so the curves compare something
    np.testing.assert_allclose(losses(str(tmp_path / "pallas")), xla_losses, rtol=1e-4)
    np.testing.assert_allclose(pallas["eval_loss"], xla["eval_loss"], rtol=1e-4)


def test_pallas_on_a_data_and_tensor_mesh_follows_the_one_device_xla_curve(tiny_config, tmp_path):
    """With a mesh the kernels run per device inside shard_map (each its own batch rows and heads)."""
    xla = train(tiny_config(**SHORT), str(tmp_path / "xla"), devices=ONE_DEVICE)
    sharded = train(tiny_config(model__attention_impl="pallas", mesh__data=2, mesh__tensor=2, **SHORT),
                    str(tmp_path / "pallas"), devices=jax.devices()[:4])
    np.testing.assert_allclose(losses(str(tmp_path / "pallas")), losses(str(tmp_path / "xla")), rtol=2e-4)
    np.testing.assert_allclose(sharded["eval_loss"], xla["eval_loss"], rtol=2e-4)
