"""The gallery: every experiment module carries its metadata and a quick test, the README is current,
and the runner's seeds, resume and reports behave as experiments/gallery_run.py says."""

import json
import math
import types
from pathlib import Path

import pytest

from experiments import gallery, gallery_readme, gallery_run
from experiments.__main__ import list_text
from experiments.metadata import HOLDS, Claim, Experiment, Outcome, Verdict

TESTS = Path(__file__).parent


@pytest.mark.parametrize("name", [n for n in gallery.module_names() if n not in gallery.SUPPORT])
def test_every_experiment_has_metadata_and_a_quick_test(name):
    gallery.check(gallery.load(name))
    test_file = TESTS / f"test_{name}.py"
    assert test_file.exists(), f"{name} has no tests/experiments/test_{name}.py"
    assert f'run_quick("{name}"' in test_file.read_text(), f"test_{name}.py does not run `{name} --quick`"


def test_readme_is_generated_from_the_current_metadata_and_results():
    assert gallery_readme.README.read_text() == gallery_readme.render(), \
        "experiments/README.md is out of date: run `python -m experiments readme`"


def test_list_names_every_experiment_with_its_claims():
    text = list_text()
    for module in gallery.all_experiments():
        assert f"{module.EXPERIMENT.name}: {module.EXPERIMENT.paper}" in text
        for claim in module.EXPERIMENT.claims:
            assert claim.text in text


def test_a_module_without_metadata_is_named():
    with pytest.raises(ValueError, match="experiments/bare.py defines no EXPERIMENT"):
        gallery.check(types.ModuleType("experiments.bare"))
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        gallery.load("nope")


def fake_experiment(calls: list):
    """An experiment whose headline is seed + 1 and whose runs are recorded in `calls`."""
    module = types.ModuleType("experiments.fake")
    module.EXPERIMENT = Experiment(name="fake", title="Fake", paper="Nobody (2026)", arxiv="0000.00000",
                                   reproduces="Table 1", claims=(Claim("grows", "x grows"),),
                                   full_scale="none", cpu_minutes=0, paper_numbers={"x": 1.0})

    def run(out_dir, *, quick, seed):
        calls.append(seed)
        plot = out_dir / "curve.png"
        plot.write_bytes(b"\x89PNG\r\n\x1a\n")
        return Outcome(headline={"x": seed + 1.0}, rows=[{"x": seed + 1.0}], markdown="body", plots=(plot,))

    module.run = run
    module.judge = lambda headline: {"grows": Verdict(HOLDS, f"x = {headline['x'].mean}")}
    return module


def test_seeds_give_mean_and_sample_std_and_resume_skips_finished_seeds(tmp_path):
    calls = []
    module = fake_experiment(calls)
    report = gallery_run.run_experiment(module, out=tmp_path / "out", work=tmp_path / "work", seeds=3)
    assert calls == [0, 1, 2]
    assert report["headline"]["x"]["mean"] == 2.0 and math.isclose(report["headline"]["x"]["std"], 1.0)
    assert (tmp_path / "out" / "fake.csv").read_text() == "seed,x\n0,1.0\n1,2.0\n2,3.0\n"
    assert (tmp_path / "out" / "fake.png").exists() and "![fake.png](fake.png)" in (tmp_path / "out" / "fake.md").read_text()
    (tmp_path / "work" / "fake" / "seed_2" / "outcome.json").unlink()  # as if killed during seed 2
    (tmp_path / "out" / "fake.json").unlink()
    again = gallery_run.run_experiment(module, out=tmp_path / "out", work=tmp_path / "work", seeds=3, resume=True)
    assert calls == [0, 1, 2, 2] and again["headline"] == report["headline"]
    gallery_run.run_experiment(module, out=tmp_path / "out", work=tmp_path / "work", seeds=3, resume=True)
    assert calls == [0, 1, 2, 2]  # finished: skipped whole


def test_a_judge_that_misses_a_claim_is_an_error(tmp_path):
    module = fake_experiment([])
    module.judge = lambda headline: {}
    with pytest.raises(ValueError, match="fake.judge answered claims"):
        gallery_run.run_experiment(module, out=tmp_path, work=tmp_path, seeds=1)


def test_the_readme_shows_a_full_report_and_ignores_a_quick_one(tmp_path):
    module = fake_experiment([])
    gallery_run.run_experiment(module, out=tmp_path, work=tmp_path / "work", seeds=2)
    text = gallery_readme.section(module, tmp_path)
    assert "| x | 1.5 ± 0.71 | 1.0 |" in text and "**holds** — x = 1.5" in text
    report = json.loads((tmp_path / "fake.json").read_text())
    (tmp_path / "fake.json").write_text(json.dumps({**report, "quick": True}))
    (tmp_path / "fake.md").unlink()
    assert "Not run yet." in gallery_readme.section(module, tmp_path)
    (tmp_path / "fake.md").write_text("a report from before the gallery")
    assert "No gallery run yet; the last report written by hand: [results/fake.md]" in gallery_readme.section(
        module, tmp_path)
