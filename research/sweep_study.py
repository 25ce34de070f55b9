"""The Optuna study behind a sweep: storage, sampler, pruner, claiming trials, and the retry policy.

Storage: `sqlite:///DIR/study.db` in the sweep directory by default (one machine, nothing to
start); any SQLAlchemy URL (`postgresql+psycopg2://user:pass@host/db`) for workers on many
machines; a path without `://` is Optuna's journal file (`JournalFileBackend`). Every worker is the
same command; `optuna-dashboard STORAGE` shows the study as it runs.

Samplers: `grid` enqueues the plan (every point once, by the worker that creates the study) and
workers claim the waiting trials, so no point runs twice (Optuna's GridSampler may hand one point to
two workers at once); `random`, `tpe` and `cmaes` sample until the study holds `trials` trials.
Claims are atomic: PostgreSQL locks the row, the journal orders its writes, and an SQLite file is
claimed under a file lock beside it (SQLite itself would let two processes take one trial).

Retry policy (RDB storages; Optuna keeps no heartbeat in a journal): a worker records a heartbeat
for each trial it runs; a RUNNING trial whose heartbeat is older than two intervals (its worker was
killed) is marked FAIL by the next worker that looks, and retried once as a new trial with the same
values, which resumes from the first one's checkpoint (same directory). A trial its worker stops
(SIGTERM, Ctrl-C) is retried the same way. A trial that fails by itself (non-finite loss, bad
config, a crash) is recorded FAIL and not retried. The report counts a retried trial once.
"""

import contextlib
import fcntl
import json
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and the retry callback are "experimental" in Optuna 5 (since 2.8); the sweep relies on them.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

STUDY_FILE = "study.db"
SQLITE_PREFIX = "sqlite:///"
SQLITE_TIMEOUT_S = 60
STORAGE_ATTEMPTS = 3
SWEEP_ATTR = "sweep"  # the study's description: every worker must run the same sweep
PLANNED_ATTR = "planned"  # set once a grid's points are all enqueued
OVERRIDES_ATTR = "overrides"  # a trial's overrides, field -> text
RETRY = RetryHeartbeatStaleTrialCallback(max_retry=1)
SAMPLERS = ("grid", "random", "tpe", "cmaes")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)


def storage_url(storage: str | None, workdir: Path) -> str:
    """`storage` as given, or the SQLite file in the sweep directory."""
    return storage or f"{SQLITE_PREFIX}{(Path(workdir) / STUDY_FILE).resolve()}"


def open_storage(url: str, heartbeat_s: int | None = None):
    """The storage at `url` (journal file when it has no `://`); with `heartbeat_s`, an RDB storage
    keeps trial heartbeats and fails and retries (once) a trial silent for 2 * heartbeat_s."""
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith(SQLITE_PREFIX) else {}
    heartbeat = dict(heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                     heartbeat_stale_trial_callback=RETRY) if heartbeat_s else {}
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            with claim_lock(url):  # SQLite cannot make two workers' CREATE TABLE race safe
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except sqlalchemy.exc.IntegrityError:  # workers starting together on an empty database race to
            if attempt == STORAGE_ATTEMPTS - 1:  # create Optuna's tables; the losers find them made
                raise
            time.sleep(1)


@contextlib.contextmanager
def claim_lock(url: str):
    """Held while a worker creates Optuna's tables or claims a trial: a file lock beside an SQLite
    database, else nothing (the other storages make both atomic themselves)."""
    if not url.startswith(SQLITE_PREFIX):
        yield
        return
    path = Path(url.removeprefix(SQLITE_PREFIX) + ".lock")
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler `name` (SAMPLERS), seeded; a grid's trials are enqueued, so it never samples."""
    return {"grid": optuna.samplers.RandomSampler, "random": optuna.samplers.RandomSampler,
            "tpe": optuna.samplers.TPESampler, "cmaes": optuna.samplers.CmaEsSampler}[name](seed=seed)


def make_pruner(name: str, startup_trials: int) -> optuna.pruners.BasePruner:
    """The pruner `name` (PRUNERS); `median` prunes only once `startup_trials` trials have finished."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials)
    return {"none": optuna.pruners.NopPruner, "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
            "hyperband": optuna.pruners.HyperbandPruner}[name]()


def open_study(url: str, storage, name: str, direction: str, sampler, pruner, description: dict,
               plan: list[dict] | None) -> optuna.Study:
    """Creates the study (enqueuing `plan`, a grid's override dicts) or loads it; ValueError if
    the study there is of another sweep (`description`, as JSON, differs)."""
    description = json.loads(json.dumps(description))
    try:
        with claim_lock(url):
            study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                        pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    else:
        study.set_user_attr(SWEEP_ATTR, description)
        for overrides in plan or ():
            study.enqueue_trial(overrides, user_attrs={OVERRIDES_ATTR: overrides}, skip_if_exists=False)
        study.set_user_attr(PLANNED_ATTR, True)
    stored = study.user_attrs.get(SWEEP_ATTR)
    if stored is not None and stored != description:
        raise ValueError(f"the study {name!r} in {url} is another sweep ({stored}); use another --workdir, "
                         "--storage or --study-name")
    return study


def is_planned(study: optuna.Study) -> bool:
    """Whether the study's creator has enqueued its whole plan (and described it)."""
    return bool(study.user_attrs.get(PLANNED_ATTR))


def claim_waiting(study: optuna.Study, storage) -> optuna.Trial | None:
    """A WAITING trial now RUNNING for this worker (None if none is left); call under `claim_lock`."""
    study_id = storage.get_study_id_from_name(study.study_name)
    # Listed through the study, whose cache must know a trial before an optuna.Trial can use it.
    for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, waiting.number)
        if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
            return optuna.trial.Trial(study, trial_id)
    return None


def superseded(trials) -> set[int]:
    """The numbers of the failed trials that a later trial retries."""
    return {number for trial in trials for number in RETRY.retry_history(trial)}


def live_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, a retried one counted once (by its retry)."""
    trials = study.get_trials(deepcopy=False)
    dropped = superseded(trials)
    return [trial for trial in trials if trial.number not in dropped]


def retry(study: optuna.Study, number: int) -> None:
    """Retries the failed trial `number` under the policy (once; nothing if it was a retry)."""
    RETRY(study, study.get_trials(deepcopy=False)[number])
