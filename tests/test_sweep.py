"""research/sweep.py, research/sweep_space.py, research/sweep_study.py, research/sweep_pruning.py and
research/sweep_report.py: flags, grids, names, bad input refused before any trial starts, the report;
Optuna studies with fake trials (tests/sweep_fake_run.py: TPE, a failing trial, a worker killed with
SIGKILL and restarted, two workers on one SQLite file and on a PostgreSQL server started by the test);
and real minute trials through research.run: a grid of four equals the table built from the trials'
own results.json as before, and the median pruner stops a trial that falls behind."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from research import sweep, sweep_pruning, sweep_space, sweep_study
from research.sweep_report import TrialOutcome, is_complete_grid, metric_grid, ranked, write_reports
from research.train.workdir_lock import WorkdirLock, is_locked

SPEC = "configs/llama2.py:tiny"
MINUTE_RUN = [
    "model.dim=16", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1", "model.hidden_dim=32",
    "model.vocab_size=260", "data.tokenizer=byte", "train.seq_len=16", "train.batch_size=2", "train.steps=20",
    "train.log_every=5", "train.eval_every=0", "train.eval_batches=1", "train.checkpoint_every=10",
    "evals.samples.prompts=()", "optimizer.warmup_steps=1",
]
LR_FIELD, WD_FIELD = "optimizer.learning_rate", "optimizer.weight_decay"


# --- flags, grids, names -------------------------------------------------------------------------

def test_value_lists_split_at_top_level_commas():
    assert sweep_space.parse_sweep_flag("optimizer.learning_rate=1e-4, 3e-4,1e-3") == sweep_space.ValueList(
        "optimizer.learning_rate", ("1e-4", "3e-4", "1e-3"))
    assert sweep_space.parse_sweep_flag("--config.evals.samples.prompts=('a, b', 'c'),()").values == (
        "('a, b', 'c')", "()")


def test_ranges_parse_to_bounds():
    assert sweep_space.parse_sweep_flag("optimizer.learning_rate=loguniform(1e-4, 1e-2)") == sweep_space.ValueRange(
        "optimizer.learning_rate", 1e-4, 1e-2, log=True)
    assert sweep_space.parse_sweep_flag("optimizer.b1=uniform(0.8,0.95)").log is False


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
        sweep_space.parse_sweep_flag(flag)


def test_grid_is_the_product_with_the_last_field_fastest():
    axes = [sweep_space.parse_sweep_flag("a.x=1,2,3"), sweep_space.parse_sweep_flag("b.y=p,q,r")]
    trials = sweep_space.grid(axes)
    assert len(trials) == 9
    assert trials[:4] == [{"a.x": "1", "b.y": "p"}, {"a.x": "1", "b.y": "q"}, {"a.x": "1", "b.y": "r"},
                          {"a.x": "2", "b.y": "p"}]


def test_a_grid_refuses_ranges():
    with pytest.raises(ValueError, match="--sampler"):
        sweep_space.grid([sweep_space.parse_sweep_flag("optimizer.learning_rate=loguniform(1e-4,1e-2)")])


def test_trial_names_are_readable_and_filesystem_safe():
    names = sweep_space.trial_names([{"optimizer.learning_rate": "1e-3", "optimizer.weight_decay": "0.1"},
                                     {"data.data_dir": "/tmp/a b", "evals.samples.prompts": "('x',)"}])
    assert names == ["learning_rate=1e-3,weight_decay=0.1", "data_dir=_tmp_a_b,prompts=__x___"]
    assert sweep_space.trial_names([{"a.dim": "1", "b.dim": "2"}]) == ["a.dim=1,b.dim=2"]
    assert sweep_space.trial_names([{}]) == ["base"]


def test_long_names_are_shortened_and_stay_distinct():
    long_names = sweep_space.trial_names([{"model.dim": "1" * 200}, {"model.dim": "1" * 199 + "2"}])
    assert all(len(name) <= sweep_space.MAX_NAME_LENGTH for name in long_names)
    assert long_names[0] != long_names[1]


def test_names_that_coincide_are_refused():
    with pytest.raises(ValueError, match="share the name"):
        sweep_space.trial_names([{"data.data_dir": "a b"}, {"data.data_dir": "a/b"}])


def test_a_sampled_trial_draws_typed_and_rounded_values():
    planned = sweep.plan_sweep(SPEC, ["optimizer.learning_rate=loguniform(1e-4,1e-2)", "model.num_layers=uniform(1,4)",
                                      "optimizer.name=adam,adamw"], sampler="random", trials=1)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        overrides = sweep_space.suggest(study.ask(), planned.axes, planned.field_types)
        rate = float(overrides["optimizer.learning_rate"])
        assert 1e-4 * 0.995 <= rate <= 1e-2 * 1.005 and rate == float(f"{rate:.3g}")
        assert overrides["model.num_layers"] in {"1", "2", "3", "4"}
        assert overrides["optimizer.name"] in {"adam", "adamw"}


def test_a_range_over_a_text_field_is_refused():
    with pytest.raises(ValueError, match="numeric"):
        sweep.plan_sweep(SPEC, ["optimizer.name=uniform(0,1)"], sampler="tpe", trials=2)


# --- planning: get_sweep, validation ----------------------------------------------------------------

def test_get_sweep_of_the_config_file_gives_the_grid():
    planned = sweep.plan_sweep("configs/adamw_decoupling.py:points=2", [])
    assert sweep_space.trial_names(planned.plan) == [
        "name=adam,learning_rate=0.001,weight_decay=0.0", "name=adam,learning_rate=0.001,weight_decay=0.001",
        "name=adam,learning_rate=0.03,weight_decay=0.0", "name=adam,learning_rate=0.03,weight_decay=0.001",
        "name=adamw,learning_rate=0.001,decay_per_step=0.0", "name=adamw,learning_rate=0.001,decay_per_step=0.01",
        "name=adamw,learning_rate=0.03,decay_per_step=0.0", "name=adamw,learning_rate=0.03,decay_per_step=0.01"]
    config = sweep_space.trial_config(planned.spec, (), planned.plan[5], "t")
    assert config.optimizer.weight_decay == pytest.approx(0.01 / 0.001)


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
    (["--sampler", "tpe", "--trials", "3"], "none were given"),
    (["--sweep", "optimizer.learning_rate=loguniform(1e-4,1e-2)", "--sampler", "tpe"], "needs --trials"),
    (["--sweep", "optimizer.learning_rate=1e-3", "--trials", "3"], "a grid runs each of its points once"),
])
def test_bad_input_stops_the_sweep_before_any_trial(tmp_path, capsys, arguments, message):
    workdir = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--config", SPEC, "--workdir", str(workdir), *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not workdir.exists()


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


# --- studies of fake trials (tests/sweep_fake_run.py) ---------------------------------------------

GRID = ["--sweep", "optimizer.learning_rate=1e-3,1e-2,1e-1", "--sweep", "optimizer.weight_decay=0,0.5"]
GRID_NAMES = {f"learning_rate={lr},weight_decay={wd}" for lr in ("1e-3", "1e-2", "1e-1") for wd in ("0", "0.5")}


def worker_command(workdir, *arguments):
    return [sys.executable, "-m", "tests.sweep_fake_worker", "--config", SPEC, "--workdir", str(workdir),
            "--heartbeat", "1", *arguments]


def fake_environment(step_s=0.0):
    return {**os.environ, "FAKE_STEP_S": str(step_s)}


def statuses(workdir):
    return {row["trial"]: row["status"] for row in csv.DictReader((workdir / "results.csv").open())}


def starts(workdir, name):
    """The pids of the workers that started the trial's run, one per start."""
    return (workdir / name / "ran_by").read_text().split()


def load(workdir, storage=None):
    return optuna.load_study(study_name="sweep",
                             storage=sweep_study.open_storage(storage or sweep_study.storage_url(None, workdir)))


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_a_sampler_runs_its_trials_and_ranks_them(tmp_path, sampler):
    completed = subprocess.run(worker_command(tmp_path, "--sweep", "optimizer.learning_rate=loguniform(1e-4,1)",
                                              "--sweep", "optimizer.weight_decay=0,0.5", "--sampler", sampler,
                                              "--trials", "8", "--parallel", "2"),
                               capture_output=True, text=True, env=fake_environment(), timeout=300)
    assert completed.returncode == 0, completed.stderr
    study = load(tmp_path)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == len(study.trials) == 8
    assert {t.params["optimizer.weight_decay"] for t in trials} <= {"0", "0.5"}
    losses = [float(line.split("|")[4]) for line in table_lines(tmp_path)[2:]]
    assert losses == sorted(losses) and len(losses) == len({t.user_attrs["name"] for t in trials})
    for name in ("results.png", "history.png", "importance.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path):
    completed = subprocess.run(worker_command(tmp_path, "--sweep", "optimizer.learning_rate=1e-3,1e30,1e-2"),
                               capture_output=True, text=True, env=fake_environment(), timeout=300)
    assert completed.returncode == 1
    assert statuses(tmp_path) == {"learning_rate=1e-3": "finished", "learning_rate=1e-2": "finished",
                                  "learning_rate=1e30": "failed"}
    failed = (tmp_path / "results.md").read_text().split("## Failed trials")[1]
    assert "exit status 1" in failed and "loss is nan at step 1" in failed
    assert [t.state.name for t in load(tmp_path).trials] == ["COMPLETE", "FAIL", "COMPLETE"]


def test_a_trial_whose_workdir_another_process_holds_is_not_started(tmp_path):
    with WorkdirLock(tmp_path / "learning_rate=1e-3"):
        completed = subprocess.run(worker_command(tmp_path, "--sweep", "optimizer.learning_rate=1e-3,1e-2"),
                                   capture_output=True, text=True, env=fake_environment(), timeout=300)
    assert completed.returncode == 1
    assert statuses(tmp_path) == {"learning_rate=1e-3": "failed", "learning_rate=1e-2": "finished"}
    assert "not started: " in (tmp_path / "results.md").read_text()
    assert not (tmp_path / "learning_rate=1e-3" / "ran_by").exists()


def test_a_worker_killed_with_sigkill_and_restarted_finishes_every_trial_once(tmp_path):
    """Its running trial gets SIGTERM from the kernel and saves; the restarted worker finds it
    silent, marks it failed and runs it once more, resuming from its saved step."""
    command = worker_command(tmp_path, *GRID)
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=fake_environment(0.1), start_new_session=True)
    def mid_run():
        done = list(tmp_path.glob("*/results.json"))
        started = [path.parent for path in tmp_path.glob("*/step") if not (path.parent / "results.json").exists()]
        return len(done) >= 1 and len(started) == 1

    deadline = time.time() + 120
    while not mid_run() and worker.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert worker.poll() is None, "the worker ended before it could be killed"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    killed = [d.name for d in tmp_path.glob("learning_rate=*") if not (d / "results.json").exists()
              and (d / "step").exists()]
    assert len(killed) == 1
    while is_locked(tmp_path / killed[0]):
        time.sleep(0.05)
    saved_step = int((tmp_path / killed[0] / "step").read_text())

    rerun = subprocess.run(command, capture_output=True, text=True, env=fake_environment(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert statuses(tmp_path) == {name: "finished" for name in GRID_NAMES}
    assert len(table_lines(tmp_path)) == 2 + len(GRID_NAMES)
    study = load(tmp_path)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == len(GRID_NAMES) and states.count("FAIL") == 1  # the killed one, retried
    assert {name: len(starts(tmp_path, name)) for name in GRID_NAMES} == {
        name: 2 if name == killed[0] else 1 for name in GRID_NAMES}
    assert f"resumed from step {saved_step}" in (tmp_path / killed[0] / "run.log").read_text()


def run_two_workers(workdir, storage_arguments=()):
    command = worker_command(workdir, *GRID, *storage_arguments)
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=fake_environment(0.15)) for _ in range(2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    return {worker.pid for worker in workers}


def assert_split_once(workdir, pids, study):
    ran_by = {name: starts(workdir, name) for name in GRID_NAMES}
    assert all(len(pids_of_trial) == 1 for pids_of_trial in ran_by.values()), ran_by
    assert {pid for [pid] in ran_by.values()} == {str(pid) for pid in pids}  # both workers took trials
    assert sorted(t.user_attrs["name"] for t in study.trials) == sorted(GRID_NAMES)
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    assert all(t.params == t.user_attrs["overrides"] for t in study.trials)  # grid points are the parameters


@pytest.mark.parametrize("journal", [False, True], ids=["sqlite", "journal"])
def test_two_workers_on_one_file_split_the_trials(tmp_path, journal):
    storage = str(tmp_path / "journal.log") if journal else None
    pids = run_two_workers(tmp_path, ["--storage", storage] if journal else [])
    assert_split_once(tmp_path, pids, load(tmp_path, storage))


OPEN_AT = """
import sys, time
from research import sweep_study
while time.time() < float(sys.argv[2]):
    pass
sweep_study.open_storage(sys.argv[1])
"""


def test_workers_opening_one_empty_sqlite_file_at_the_same_instant_all_get_the_storage(tmp_path):
    url = sweep_study.storage_url(None, tmp_path)
    start_at = str(time.time() + 8)  # after every process has imported Optuna
    openers = [subprocess.Popen([sys.executable, "-c", OPEN_AT, url, start_at], stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    errors = [opener.communicate(timeout=120)[1] for opener in openers]
    assert [opener.returncode for opener in openers] == [0] * 4, errors  # not "table studies already exists"


def test_two_workers_on_one_postgresql_server_split_the_trials(tmp_path):
    import pgserver

    server = pgserver.get_server(tmp_path / "postgres", cleanup_mode="stop")
    try:
        url = server.get_uri().replace("postgresql://", "postgresql+psycopg2://")
        pids = run_two_workers(tmp_path / "sweep", ["--storage", url])
        assert not (tmp_path / "sweep" / "study.db").exists()
        assert_split_once(tmp_path / "sweep", pids, load(tmp_path, url))
    finally:
        server.cleanup()


def test_outside_a_sweep_a_run_has_no_hook_and_never_imports_optuna():
    assert sweep_pruning.hook_from_environment({}) is None
    check = "import sys, research.run; assert 'optuna' not in sys.modules, 'optuna imported'"
    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr


# --- real minute trials through research.run ----------------------------------------------------

def one_device_environment():
    """Trials on one CPU device (conftest's 8 fake devices only make the minute runs compile longer)."""
    return {**os.environ, "XLA_FLAGS": ""}


def table_lines(workdir):
    return [line for line in (workdir / "results.md").read_text().splitlines() if line.startswith("|")]


def sweep_command(workdir, *arguments, fixed=MINUTE_RUN):
    return [sys.executable, "-m", "research.sweep", "--config", SPEC, "--workdir", str(workdir), *arguments,
            *(f"--config.{o}" for o in fixed)]


def test_a_grid_study_of_four_trials_equals_the_table_of_its_runs_results(tmp_path):
    """The table of the study is the one the sweep wrote before Optuna: the report module over
    each trial's own results.json, values resolved from its config."""
    completed = subprocess.run(sweep_command(tmp_path, "--sweep", "optimizer.learning_rate=1e-3,1e-2",
                                             "--sweep", "optimizer.weight_decay=0,0.1", "--parallel", "2"),
                               capture_output=True, text=True, env=one_device_environment(), timeout=600)
    assert completed.returncode == 0, completed.stderr
    plan = [{LR_FIELD: lr, WD_FIELD: wd} for lr in ("1e-3", "1e-2") for wd in ("0", "0.1")]
    outcomes = []
    for name, overrides in zip(sweep_space.trial_names(plan), plan):
        config = sweep_space.trial_config(SPEC, MINUTE_RUN, overrides, name)
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert results["step"] == 20
        outcomes.append(TrialOutcome(name, sweep_space.swept_values(config, overrides), results, None))
    (tmp_path / "old").mkdir()
    write_reports(tmp_path / "old", f"Sweep of {SPEC}", [LR_FIELD, WD_FIELD], outcomes, "eval_loss", "min")
    assert table_lines(tmp_path) == table_lines(tmp_path / "old")
    assert len(table_lines(tmp_path)) == 6


def test_the_median_pruner_stops_a_trial_worse_than_the_median_at_the_same_step(tmp_path):
    """1e-2 finishes first; 1e-5 barely moves, so at its first evaluation it is worse than 1e-2 was
    at that step: its run stops with its checkpoint and the trial is PRUNED with that value."""
    fixed = [o for o in MINUTE_RUN if not o.startswith("train.eval_every")] + ["train.eval_every=10"]
    completed = subprocess.run(sweep_command(tmp_path, "--sweep", "optimizer.learning_rate=1e-2,1e-5",
                                             "--pruner", "median", "--pruner-startup-trials", "1", fixed=fixed),
                               capture_output=True, text=True, env=one_device_environment(), timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert statuses(tmp_path) == {"learning_rate=1e-2": "finished", "learning_rate=1e-5": "pruned"}
    finished, pruned = load(tmp_path).trials
    assert finished.state.name == "COMPLETE" and pruned.state.name == "PRUNED"
    assert pruned.last_step == 10 and pruned.value == pruned.intermediate_values[10] > finished.intermediate_values[10]
    assert "stopped early at step 10" in (tmp_path / "learning_rate=1e-5" / "run.log").read_text()
    assert (tmp_path / "learning_rate=1e-5" / "checkpoints" / "10").is_dir()
    assert "(pruned at step 10)" in (tmp_path / "results.md").read_text()
