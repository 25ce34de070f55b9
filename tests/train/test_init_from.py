"""research/train/init_from.py: fine-tuning from an earlier run or a Hugging Face directory."""

import shutil

import jax
import ml_collections
import numpy as np
import pytest

from research import config as config_lib
from research.config_checks import validate_init_from
from research.models import make_model
from research.models.convert import save_hf_llama
from research.parallel.mesh import make_mesh
from research.train.loop import train
from research.train.metrics import read_metrics
from research.train.init_from import merged, nested, subtree
from research.train.step import step_layout
from research.train.task import build_task
from research.train.trainers.lm import loss_sums
from tests.train.conftest import tiny_overrides
from tests.train.test_loop import ONE_DEVICE, final_params, losses


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """An 8-step tiny LM run to start from."""
    workdir = tmp_path_factory.mktemp("source")
    train(config_lib.load("configs/llama2.py:tiny", tiny_overrides()), str(workdir), devices=ONE_DEVICE)
    return workdir


def first_batch_loss(config, params) -> float:
    """The loss of `params` on the first training batch `config`'s run draws."""
    mesh = make_mesh(config.mesh, ONE_DEVICE)
    task = build_task(config, mesh)
    batch, _ = task.batches(step_layout(task, mesh).batch_shardings).next(None, {}, None)
    nll_sum, weight, _ = loss_sums(make_model(config.model), params, batch)
    return float(nll_sum / weight)


def test_fine_tuning_from_a_run_starts_at_its_loss(tiny_config, source_run, tmp_path):
    config = tiny_config(init_from__kind="run", init_from__path=str(source_run))
    train(config, str(tmp_path), devices=ONE_DEVICE)
    expected = first_batch_loss(config, final_params(str(source_run)))
    assert losses(str(tmp_path))[0] == (1, pytest.approx(expected, rel=1e-5))
    assert losses(str(tmp_path))[0][1] < losses(str(source_run))[0][1] - 1.0  # far below a random start


def test_fine_tuning_from_a_hugging_face_directory_starts_at_the_source_models_loss(tiny_config, source_run,
                                                                                    tmp_path):
    params = final_params(str(source_run))
    save_hf_llama(tiny_config().model, params, tmp_path / "hf")
    config = tiny_config(init_from__kind="hf_llama", init_from__path=str(tmp_path / "hf"))
    train(config, str(tmp_path / "run"), devices=ONE_DEVICE)
    assert losses(str(tmp_path / "run"))[0] == (1, pytest.approx(first_batch_loss(config, params), rel=1e-5))


def test_a_source_of_another_shape_names_the_first_parameter(tiny_config, source_run, tmp_path):
    config = tiny_config(init_from__kind="run", init_from__path=str(source_run), model__hidden_dim=96)
    with pytest.raises(ValueError, match=r"params/layers/ffn/(down|gate|up) has shape"):
        train(config, str(tmp_path), devices=ONE_DEVICE)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_resumed_fine_tuning_run_continues_from_its_own_checkpoint(tiny_config, source_run, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(source_run, source)
    train(tiny_config(init_from__kind="run", init_from__path=str(source)), str(tmp_path / "run"), devices=ONE_DEVICE)
    shutil.rmtree(source)  # a resume must not read it again
    results = train(tiny_config(init_from__kind="run", init_from__path=str(source), train__steps=12),
                    str(tmp_path / "run"), devices=ONE_DEVICE)
    assert results["step"] == 12 and [s for s, _ in losses(str(tmp_path / "run"))] == list(range(1, 13))


def test_starting_from_all_of_a_run_continues_it_in_a_new_workdir(tiny_config, source_run, tmp_path):
    continued = tmp_path / "continued"
    shutil.copytree(source_run, continued)
    train(tiny_config(train__steps=12), str(continued), devices=ONE_DEVICE)
    branch = tiny_config(init_from__kind="run", init_from__path=str(source_run), init_from__parts="all",
                         train__steps=12)
    train(branch, str(tmp_path / "branch"), devices=ONE_DEVICE)
    assert losses(str(tmp_path / "branch")) == losses(str(continued))[8:]
    assert [r["step"] for r in read_metrics(str(tmp_path / "branch")) if "loss" in r][0] == 9
    for a, b in zip(jax.tree.leaves(final_params(str(tmp_path / "branch"))), jax.tree.leaves(final_params(str(continued)))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("overrides, message", [
    ({"init_from__kind": "wandb"}, "init_from.kind: 'wandb' is not one of"),
    ({"init_from__kind": "run"}, "init_from.path: set it"),
    ({"init_from__kind": "hf_llama", "init_from__path": "/x", "init_from__parts": "all"}, "needs init_from.kind 'run'"),
    ({"init_from__kind": "run", "init_from__path": "/x", "init_from__parts": "all", "init_from__into": "layers"},
     "'all' continues a whole run: it takes neither"),
])
def test_bad_init_from_fields_are_named(tiny_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_sources_fill_their_own_subtrees_of_the_parameters():
    tree = {"policy": {"w": 1, "b": 2}, "value": {"backbone": {"w": 3}, "head": 4}}
    assert subtree(tree, "value/backbone", "init_from.into") == {"w": 3}
    assert subtree(tree, "", "init_from.into") is tree
    with pytest.raises(ValueError, match=r"init_from.into: 'value/trunk' is not a subtree .*'trunk' is not among "
                                         r"\['backbone', 'head'\]"):
        subtree(tree, "value/trunk", "init_from.into")
    parts = [nested("policy", {"w": 5}), nested("value/backbone", {"w": 6})]
    assert merged(parts) == {"policy": {"w": 5}, "value": {"backbone": {"w": 6}}}


def init_from_with_extra(into: str, **extra) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(kind="run", path="/sft", parts="params", into=into, extra=extra))


def test_extra_sources_are_checked():
    validate_init_from(init_from_with_extra("policy", value=dict(kind="run", path="/rm", into="value")))
    with pytest.raises(ValueError, match=r"init_from.into: 'policy' overlaps init_from.extra.ref.into 'policy/layers'"):
        validate_init_from(init_from_with_extra("policy", ref=dict(kind="run", path="/x", into="policy/layers")))
    with pytest.raises(ValueError, match=r"init_from.extra.ref.kind: 'none' is not one of \('run', 'hf_llama'\)"):
        validate_init_from(init_from_with_extra("policy", ref=dict(kind="none", path="/x", into="ref")))
    with pytest.raises(ValueError, match=r"init_from.extra.ref.path: set it"):
        validate_init_from(init_from_with_extra("policy", ref=dict(kind="run", path="", into="ref")))
