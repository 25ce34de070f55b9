"""research/tools/aot_search.py and `scripts/aot_compile.py --search`: candidate layouts, the best that fits."""

import pytest

from research import config as config_lib
from research.tools import aot, aot_search
from scripts import aot_compile

SMALL = ("model.dim=64", "model.num_heads=2", "model.num_kv_heads=2", "model.hidden_dim=128",
         "model.vocab_size=512", "data.vocab_size=512", "train.seq_len=32", "model.num_layers=2")


def small_config(*overrides):
    return config_lib.load("configs/llama2.py:tiny", SMALL + overrides)


def test_candidates_put_pure_fsdp_first_and_keep_the_expert_axis():
    meshes = list(aot_search.candidate_meshes(small_config("model.num_heads=4", "model.num_kv_heads=4"), 16))
    assert [(m["fsdp"], m["tensor"]) for m in meshes] == [(16, 1), (8, 2), (4, 4)]  # tensor 8 does not divide 4 heads
    moe_like = small_config("mesh.expert=2")
    assert [m["expert"] for m in aot_search.candidate_meshes(moe_like, 8)] == [2, 2]
    assert list(aot_search.micro_batches(1024, 256)) == [1, 2, 4]
    assert list(aot_search.micro_batches(8, 16)) == []


def fake_result(layout: aot_search.Layout, fits: bool) -> aot.AotResult:
    """What the compiler would say: fits (8 GiB peak) or refused for memory; rates of 1 per second."""
    memory = aot.ChipMemory(1, 1, 0, 1, 1, 8 * aot.GiB) if fits else None
    micro_steps = 64 // (layout.micro_batch_per_device * layout.mesh["fsdp"])
    return aot.AotResult("v5e-8", layout.mesh, 16 * aot.GiB, 1.0, memory, "" if fits else "RESOURCE_EXHAUSTED",
                         aot.StepCost(0.0, 0.0, 0.0), None, 1.0, 1.0, 1.0, 1.0, micro_steps)


def layout_of(config) -> aot_search.Layout:
    return aot_search.Layout({k: config.mesh[k] for k in ("data", "fsdp", "tensor", "expert")},
                             config.train.micro_batch_per_device)


@pytest.fixture
def fake_compiler(monkeypatch):
    """A compiler that holds 4 sequences per chip under pure FSDP (fsdp 8: m ≤ 4, 2 micro-steps) and 16
    with tensor 2 (fsdp 4: every m up to the whole batch, 1 micro-step); the layouts compiled, in order."""
    compiled = []

    def compile_for_slice(config, tpu_slice, *, with_cost):
        layout = layout_of(config)
        compiled.append((layout.mesh["tensor"], layout.micro_batch_per_device))
        return fake_result(layout, fits=layout.micro_batch_per_device <= 4 * layout.mesh["tensor"] ** 2)

    monkeypatch.setattr(aot, "compile_for_slice", compile_for_slice)
    monkeypatch.setattr(aot, "slice_devices", lambda tpu_slice: None)
    return compiled


def test_each_mesh_stops_at_its_first_refusal_and_the_fewest_micro_steps_win(fake_compiler):
    config = small_config("train.batch_size=64")
    best, trials = aot_search.search(config, aot.parse_slice("v5e-8"), with_cost=False)
    assert fake_compiler == [(1, 1), (1, 2), (1, 4), (1, 8), (2, 1), (2, 2), (2, 4), (2, 8), (2, 16)]  # 32 · 4 > 64
    assert len(trials) == len(fake_compiler) and not trials[3].result.fits
    assert best.layout == aot_search.Layout({"data": 1, "fsdp": 4, "tensor": 2, "expert": 1}, 16)
    assert best.layout.overrides == ("mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2", "mesh.expert=1",
                                     "train.micro_batch_per_device=16", "train.grad_accum_steps=1")
    fewer_tensor_wins_a_tie, _ = aot_search.search(small_config("train.batch_size=32"), aot.parse_slice("v5e-8"),
                                                   with_cost=False)  # fsdp 8 × m 4 and fsdp 4 × m 8: 1 step each
    assert fewer_tensor_wins_a_tie.layout.mesh["tensor"] == 1


def test_with_cost_the_shortest_estimated_step_wins_ici_included(fake_compiler, monkeypatch):
    """Each mesh's largest fitting micro-batch gets its cost; the tensor-2 layout has fewer micro-steps
    but sends 5 s of ICI traffic against pure FSDP's 3 s (compute 2 s each): pure FSDP wins."""
    costs = {1: aot.StepCost(2.0, 1.0, 3.0), 2: aot.StepCost(2.0, 1.0, 5.0)}
    costed = []

    def step_cost(config, devices, counted):
        costed.append(layout_of(config))
        return costs[config.mesh.tensor]

    monkeypatch.setattr(aot, "step_cost", step_cost)
    best, _ = aot_search.search(small_config("train.batch_size=64"), aot.parse_slice("v5e-8"))
    assert [layout.micro_batch_per_device for layout in costed] == [4, 16]  # each mesh's largest that fits
    assert best.layout.mesh["tensor"] == 1 and best.result.cost == costs[1]
    assert best.result.roofline.seconds(with_ici=True) == 3.0 and best.result.roofline.bound == "ICI"


def test_cli_search_prints_the_overrides_to_paste_and_they_reproduce_the_layout(capsys):
    argv = ["--config", "configs/llama2.py:tiny", "--topology", "v5e-4", "--search", "--no-cost",
            *(f"--config.{o}" for o in SMALL), "--config.model.num_kv_heads=1"]  # one mesh: fsdp 4
    assert aot_compile.main(argv) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("--config."))
    assert line == ("--config.mesh.data=1 --config.mesh.fsdp=4 --config.mesh.tensor=1 --config.mesh.expert=1 "
                    "--config.train.micro_batch_per_device=2 --config.train.grad_accum_steps=1")
    assert "fits on v5e-4" in out and "in 1 micro-batch(es)" in out
    pasted = small_config("model.num_kv_heads=1", *(item.removeprefix("--config.") for item in line.split()))
    assert aot.mesh_sizes(pasted, aot.parse_slice("v5e-4")) == {"data": 1, "fsdp": 4, "tensor": 1, "expert": 1}
