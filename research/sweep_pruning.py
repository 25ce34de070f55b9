"""Pruning from a trial's own evaluations: the `on_evaluation` hook research.run gives the loop.

A sweep worker starts each trial's `research.run` with the study in its environment
(`environment(...)`); the hook then reports the sweep's metric of every evaluation to the trial
(`trial.report(value, step)`) and stops the run when the study's pruner says so. Outside a sweep
there is no hook and Optuna is never imported.
"""

import os

STORAGE_VAR = "RESEARCH_SWEEP_STORAGE"
STUDY_VAR = "RESEARCH_SWEEP_STUDY"
TRIAL_VAR = "RESEARCH_SWEEP_TRIAL"
METRIC_VAR = "RESEARCH_SWEEP_METRIC"
STOPPED_EARLY_EXIT_CODE = 3  # research.run's exit status when this hook stopped the run
PRUNER_VAR = "RESEARCH_SWEEP_PRUNER"  # the pruner and its startup trials, "median:5" (Optuna stores neither)


def environment(storage_url: str, study_name: str, trial_number: int, metric: str, pruner: str,
                startup_trials: int) -> dict:
    """The variables that make a trial's run report to trial `trial_number` of the study."""
    return {STORAGE_VAR: storage_url, STUDY_VAR: study_name, TRIAL_VAR: str(trial_number), METRIC_VAR: metric,
            PRUNER_VAR: f"{pruner}:{startup_trials}"}


class ReportToTrial:
    """`(step, results) -> stop?`: reports `results[metric]` to the trial and asks its pruner."""

    def __init__(self, storage_url: str, study_name: str, trial_number: int, metric: str, pruner: str):
        import optuna

        from research import sweep_study

        storage = sweep_study.open_storage(storage_url)
        name, _, startup_trials = pruner.partition(":")
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  pruner=sweep_study.make_pruner(name, int(startup_trials)))
        study_id = storage.get_study_id_from_name(study_name)
        self.trial = optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, trial_number))
        self.metric = metric

    def __call__(self, step: int, results: dict) -> bool:
        if self.metric not in results:
            return False
        self.trial.report(float(results[self.metric]), step)
        return self.trial.should_prune()


def hook_from_environment(environ=os.environ) -> ReportToTrial | None:
    """The hook of the sweep trial this process runs, or None outside a sweep."""
    if STORAGE_VAR not in environ:
        return None
    return ReportToTrial(environ[STORAGE_VAR], environ[STUDY_VAR], int(environ[TRIAL_VAR]), environ[METRIC_VAR],
                         environ[PRUNER_VAR])
