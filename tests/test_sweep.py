"""research/sweep.py and research/sweep_report.py: flag parsing, grids, random search, trial
names, bad input refused before any trial starts, the report, a real sweep of three minute
trials (one of which diverges), and a sweep killed with SIGKILL and run again."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from research import config as config_lib
from research import sweep
from research.sweep_report import TrialOutcome, is_complete_grid, metric_grid, ranked, write_reports
from research.train.workdir_lock import WorkdirLock, is_locked

SPEC = "configs/llama2.py:tiny"
MINUTE_RUN = [
    "model.dim=16", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1", "model.hidden_dim=32",
    "model.vocab_size=260", "data.tokenizer=byte", "train.seq_len=16", "train.batch_size=2", "train.steps=60",
    "train.log_every=5", "train.eval_every=0", "train.eval_batches=1", "train.checkpoint_every=20",
    "evals.samples.prompts=()", "optimizer.warmup_steps=1",
]
# 1e30 diverges: the loss turns non-finite after the first full-size update and the run stops.
LEARNING_RATES = "optimizer.learning_rate=1e-3,1e30,1e-2"
FINISHED, DIVERGED, LAST = "learning_rate=1e-3", "learning_rate=1e30", "learning_rate=1e-2"


# --- flags, grids, random search, names -------------------------------------------------------

def test_value_lists_split_at_top_level_commas():
    assert sweep.parse_sweep_flag("optimizer.learning_rate=1e-4, 3e-4,1e-3") == sweep.ValueList(
        "optimizer.learning_rate", ("1e-4", "3e-4", "1e-3"))
    assert sweep.parse_sweep_flag("--config.evals.samples.prompts=('a, b', 'c'),()").values == (
        "('a, b', 'c')", "()")


def test_ranges_parse_to_bounds():
    assert sweep.parse_sweep_flag("optimizer.learning_rate=loguniform(1e-4, 1e-2)") == sweep.ValueRange(
        "optimizer.learning_rate", 1e-4, 1e-2, log=True)
    assert sweep.parse_sweep_flag("optimizer.b1=uniform(0.8,0.95)").log is False


@pytest.mark.parametrize("flag, message", [
    ("optimizer.learning_rate=", "empty"),
    ("optimizer.learning_rate=1e-3,,1e-2", "empty value"),
    ("optimizer.learning_rate", "not of the form"),
    ("=1,2", "not of the form"),
    ("optimizer.learning_rate=1e-3,1e-3", "repeats"),
    ("optimizer.learning_rate=loguniform(0,1)", "LO > 0"),
    ("optimizer.learning_rate=uniform(2,1)", "below HI"),
    ("optimizer.learning_rate=uniform(low,high)", "two numbers"),
])
def test_malformed_sweep_flags_are_refused(flag, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_sweep_flag(flag)


def test_grid_is_the_product_with_the_last_field_fastest():
    axes = [sweep.parse_sweep_flag("a.x=1,2,3"), sweep.parse_sweep_flag("b.y=p,q,r")]
    trials = sweep.grid(axes)
    assert len(trials) == 9
    assert trials[:4] == [{"a.x": "1", "b.y": "p"}, {"a.x": "1", "b.y": "q"}, {"a.x": "1", "b.y": "r"},
                          {"a.x": "2", "b.y": "p"}]
    assert len({tuple(t.items()) for t in trials}) == 9


def test_a_grid_refuses_ranges():
    with pytest.raises(ValueError, match="--samples"):
        sweep.grid([sweep.parse_sweep_flag("optimizer.learning_rate=loguniform(1e-4,1e-2)")])


def test_random_search_is_seeded_rounded_and_in_range():
    base = config_lib.load(SPEC)
    axes = [sweep.parse_sweep_flag(flag) for flag in (
        "optimizer.learning_rate=loguniform(1e-4,1e-2)", "model.num_layers=uniform(1,4)", "optimizer.name=adam,adamw")]
    draws = sweep.random_search(axes, 30, seed=3, base_config=base)
    assert draws == sweep.random_search(axes, 30, seed=3, base_config=base)
    assert draws != sweep.random_search(axes, 30, seed=4, base_config=base)
    rates = [float(d["optimizer.learning_rate"]) for d in draws]
    assert all(1e-4 * 0.995 <= r <= 1e-2 * 1.005 and r == float(f"{r:.3g}") for r in rates)
    assert min(rates) < 1e-3 < max(rates)  # log-uniform: both decades are visited
    assert {d["model.num_layers"] for d in draws} <= {"1", "2", "3", "4"}
    assert {d["optimizer.name"] for d in draws} == {"adam", "adamw"}


def test_random_search_runs_a_repeated_draw_once():
    axes = [sweep.parse_sweep_flag("model.num_layers=uniform(1,2)")]
    draws = sweep.random_search(axes, 20, seed=0, base_config=config_lib.load(SPEC))
    assert sorted(d["model.num_layers"] for d in draws) == ["1", "2"]


def test_a_range_over_a_text_field_is_refused():
    with pytest.raises(ValueError, match="numeric"):
        sweep.plan_sweep(SPEC, ["optimizer.name=uniform(0,1)"], samples=2)


def test_trial_names_are_readable_and_filesystem_safe():
    names = sweep.trial_names([{"optimizer.learning_rate": "1e-3", "optimizer.weight_decay": "0.1"},
                               {"data.data_dir": "/tmp/a b", "evals.samples.prompts": "('x',)"}])
    assert names == ["learning_rate=1e-3,weight_decay=0.1", "data_dir=_tmp_a_b,prompts=__x___"]
    assert sweep.trial_names([{"a.dim": "1", "b.dim": "2"}]) == ["a.dim=1,b.dim=2"]
    assert sweep.trial_names([{}]) == ["base"]


def test_long_names_are_shortened_and_stay_distinct():
    long_names = sweep.trial_names([{"model.dim": "1" * 200}, {"model.dim": "1" * 199 + "2"}])
    assert all(len(name) <= sweep.MAX_NAME_LENGTH for name in long_names)
    assert long_names[0] != long_names[1]


def test_names_that_coincide_are_refused():
    with pytest.raises(ValueError, match="share the name"):
        sweep.trial_names([{"data.data_dir": "a b"}, {"data.data_dir": "a/b"}])


# --- planning: get_sweep, validation, earlier runs ----------------------------------------------

def test_get_sweep_of_the_config_file_gives_the_trials():
    trials = sweep.plan_sweep("configs/adamw_decoupling.py:points=2", [])
    assert [t.name for t in trials] == [
        "name=adam,learning_rate=0.001,weight_decay=0.0", "name=adam,learning_rate=0.001,weight_decay=0.001",
        "name=adam,learning_rate=0.03,weight_decay=0.0", "name=adam,learning_rate=0.03,weight_decay=0.001",
        "name=adamw,learning_rate=0.001,decay_per_step=0.0", "name=adamw,learning_rate=0.001,decay_per_step=0.01",
        "name=adamw,learning_rate=0.03,decay_per_step=0.0", "name=adamw,learning_rate=0.03,decay_per_step=0.01"]
    assert trials[1].config.optimizer.weight_decay == 0.001
    assert trials[5].config.optimizer.weight_decay == pytest.approx(0.01 / 0.001)
    assert trials[5].values(["optimizer.name", "optimizer.learning_rate", "optimizer.weight_decay"]) == {
        "optimizer.name": "adamw", "optimizer.learning_rate": 0.001}


def test_a_config_without_get_sweep_needs_sweep_flags():
    with pytest.raises(ValueError, match="defines no get_sweep"):
        sweep.plan_sweep(SPEC, [])


@pytest.mark.parametrize("arguments, message", [
    (["--sweep", "optimizer.learning_rat=1e-3,1e-2"], "did you mean optimizer.learning_rate"),
    (["--sweep", "optimizer.learning_rate="], "empty"),
    (["--sweep", "optimizer.learning_rate=1e-3,fast"], "expected a float"),
    (["--sweep", "optimizer.learning_rate=1e-3,-1e-3"], "optimizer.learning_rate: must be >= 0"),
    (["--sweep", "optimizer.weight_decay=0,-0.1"], "optimizer.weight_decay: must be >= 0"),
    (["--sweep", "optimizer.learning_rate=1e-3", "--config.optimizer.learning_rate=2e-3"], "both swept and fixed"),
    (["--sweep", "train.steps=1", "--sweep", "train.steps=2"], "more than once"),
    (["--sweep", "optimizer.learning_rate=1e-3", "--config.train.stepz=3"], "did you mean train.steps"),
    (["--samples", "3"], "none were given"),
])
def test_bad_input_stops_the_sweep_before_any_trial(tmp_path, capsys, arguments, message):
    workdir = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--config", SPEC, "--workdir", str(workdir), *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not workdir.exists()


def test_a_trial_directory_of_another_config_is_refused(tmp_path):
    trials = sweep.plan_sweep(SPEC, ["optimizer.learning_rate=1e-3"], MINUTE_RUN)
    sweep.check_earlier_runs(trials, tmp_path)  # nothing there yet
    (tmp_path / trials[0].name).mkdir()
    (tmp_path / trials[0].name / "config.json").write_text(json.dumps(trials[0].config.to_dict(), default=str))
    sweep.check_earlier_runs(trials, tmp_path)
    changed = sweep.plan_sweep(SPEC, ["optimizer.learning_rate=1e-3"], [*MINUTE_RUN[:-1], "optimizer.warmup_steps=2"])
    with pytest.raises(ValueError, match="another run"):
        sweep.check_earlier_runs(changed, tmp_path)


def test_a_trial_whose_workdir_another_process_holds_is_not_started(tmp_path):
    trials = sweep.plan_sweep(SPEC, ["optimizer.learning_rate=1e-3"], MINUTE_RUN)
    with WorkdirLock(tmp_path / trials[0].name):
        failures = sweep.run_trials(trials, SPEC, MINUTE_RUN, tmp_path, parallel=1)
    assert failures[trials[0].name].startswith(f"not started: {tmp_path / trials[0].name} is in use by process")
    assert not (tmp_path / trials[0].name / "run.log").exists()


def test_trials_run_single_threaded_only_in_parallel(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/nowhere")
    assert sweep.trial_environment(1)["XLA_FLAGS"] == "--xla_dump_to=/nowhere"
    assert sweep.trial_environment(2)["XLA_FLAGS"] == f"--xla_dump_to=/nowhere {sweep.SINGLE_THREAD_XLA_FLAGS}"


# --- the report --------------------------------------------------------------------------------

def outcome(name, values, loss, error=None):
    return TrialOutcome(name, values, None if error else {"eval_loss": loss, "step": 3, "samples": ["x"]}, error)


def test_ranking_puts_the_best_first_and_leaves_out_failed_trials():
    outcomes = [outcome("a", {}, 2.0), outcome("b", {}, float("nan")), outcome("c", {}, 1.0),
                outcome("d", {}, None, error="exit status 1\nboom"), outcome("e", {}, 3.0)]
    assert [o.name for o in ranked(outcomes, "eval_loss", "min")] == ["c", "a", "e", "b"]
    assert [o.name for o in ranked(outcomes, "eval_loss", "max")] == ["e", "a", "c", "b"]


def grid_outcomes():
    return [outcome(f"x={x},y={y}", {"x": x, "y": y}, x + 10 * y, error="exit status 1\nboom" if x == y == 2 else None)
            for x in (1, 2) for y in (0.5, 2)]


def test_metric_grid_places_each_trial_and_marks_failed_cells():
    rows, cols, grid = metric_grid(grid_outcomes(), "x", "y", "eval_loss")
    assert rows == [1, 2] and cols == [0.5, 2]
    assert grid[0].tolist() == [6.0, 21.0] and grid[1, 0] == 7.0 and grid[1, 1] != grid[1, 1]
    assert is_complete_grid(grid_outcomes(), "x", "y")
    assert not is_complete_grid(grid_outcomes()[:3], "x", "y")


@pytest.mark.parametrize("fields", [["x", "y"], ["x"], ["x", "y", "z"], []])
def test_reports_are_written_for_any_number_of_fields(tmp_path, fields):
    outcomes = [TrialOutcome(o.name, {f: v for f, v in {**o.values, "z": "s"}.items() if f in fields},
                             o.results, o.error) for o in grid_outcomes()]
    write_reports(tmp_path, "Title", fields, outcomes, "eval_loss", "min")
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["trial"] for r in rows] == ["x=1,y=0.5", "x=2,y=0.5", "x=1,y=2", "x=2,y=2"]
    assert [r["status"] for r in rows] == ["finished"] * 3 + ["failed"]
    assert rows[-1]["error"] == "boom" and "samples" not in rows[0]
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.index("`x=1,y=0.5`") < markdown.index("`x=2,y=0.5`") < markdown.index("## Failed trials")
    assert "boom" in markdown.split("## Failed trials")[1]


# --- real sweeps of minute trials --------------------------------------------------------------

def sweep_command(workdir, learning_rates, parallel):
    return [sys.executable, "-m", "research.sweep", "--config", SPEC, "--workdir", str(workdir),
            "--sweep", learning_rates, "--parallel", str(parallel), *(f"--config.{o}" for o in MINUTE_RUN)]


def one_device_environment():
    """Trials on one CPU device (conftest's 8 fake devices only make the minute runs compile longer)."""
    return {**os.environ, "XLA_FLAGS": ""}


def table_lines(workdir):
    return [line for line in (workdir / "results.md").read_text().splitlines() if line.startswith("|")]


def statuses(workdir):
    return {row["trial"]: row["status"] for row in csv.DictReader((workdir / "results.csv").open())}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    completed = subprocess.run(sweep_command(workdir, LEARNING_RATES, parallel=3), capture_output=True, text=True,
                               env=one_device_environment(), timeout=600)
    return workdir, completed


def test_a_sweep_runs_every_trial_and_records_the_one_that_diverged(finished_sweep):
    workdir, completed = finished_sweep
    assert completed.returncode == 1, completed.stderr
    assert "sweep: 0/3 done, 3 running, 0 failed, 0 pending" in completed.stdout
    assert "sweep: 2/3 done, 0 running, 1 failed, 0 pending" in completed.stdout
    assert statuses(workdir) == {FINISHED: "finished", LAST: "finished", DIVERGED: "failed"}
    for name in (FINISHED, LAST):
        results = json.loads((workdir / name / "results.json").read_text())
        assert results["step"] == 60
        assert json.loads((workdir / name / "config.json").read_text())["optimizer"]["learning_rate"] == float(
            name.partition("=")[2])
    losses = [float(line.split("|")[3]) for line in table_lines(workdir)[2:]]
    assert len(losses) == 2 and losses == sorted(losses)
    failed_section = (workdir / "results.md").read_text().split("## Failed trials")[1]
    assert DIVERGED in failed_section and "research.run: loss is nan at step" in failed_section
    assert (workdir / "results.png").read_bytes()[:4] == b"\x89PNG"


def checkpoint_steps(trial_dir):
    """The steps of the finished (renamed into place) checkpoints of a trial."""
    checkpoints = trial_dir / "checkpoints"
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.is_dir() else []


def test_a_sweep_killed_with_sigkill_stops_its_trials_and_resumes_to_the_same_table(finished_sweep, tmp_path):
    """Only the sweep's own process is killed: its trials get SIGTERM from the kernel, save and end."""
    reference, _ = finished_sweep
    names = (FINISHED, LAST)
    command = sweep_command(tmp_path, "optimizer.learning_rate=" + ",".join(n.partition("=")[2] for n in names),
                            parallel=2)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=one_device_environment(), start_new_session=True)

    def mid_run(name):
        return bool(checkpoint_steps(tmp_path / name)) and not (tmp_path / name / "results.json").exists()

    deadline = time.time() + 300
    while not any(mid_run(name) for name in names) and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the sweep ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 120
    while any(is_locked(tmp_path / name) for name in names) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(is_locked(tmp_path / name) for name in names), "a trial outlived the sweep"
    killed = {name: dict(finished=(tmp_path / name / "results.json").exists(),
                         saved_step=(checkpoint_steps(tmp_path / name) or [0])[-1],
                         log=(tmp_path / name / "run.log").read_bytes()) for name in names}
    assert any(not k["finished"] and k["saved_step"] > 0 for k in killed.values())

    rerun = subprocess.run(command, capture_output=True, text=True, env=one_device_environment(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert table_lines(tmp_path) == table_lines(reference)
    assert statuses(tmp_path) == {FINISHED: "finished", LAST: "finished"}
    for name, k in killed.items():
        log = (tmp_path / name / "run.log").read_bytes()
        assert log.startswith(k["log"])
        if k["finished"]:
            assert log == k["log"]  # skipped, not run again
        else:  # resumed: the progress bar of the rerun starts at the checkpoint's step
            assert int(re.search(r"(\d+)/60", log[len(k["log"]):].decode()).group(1)) == k["saved_step"]

    logs = {name: (tmp_path / name / "run.log").read_bytes() for name in names}
    third = subprocess.run(command, capture_output=True, text=True, env=one_device_environment(), timeout=600)
    assert third.returncode == 0 and "sweep: 2/2 done, 0 running, 0 failed, 0 pending" in third.stdout
    assert {name: (tmp_path / name / "run.log").read_bytes() for name in names} == logs
    assert table_lines(tmp_path) == table_lines(reference)
