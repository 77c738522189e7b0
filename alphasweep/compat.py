"""Every use of a private Ray or Optuna API, in one place, with the versions each was checked against.

alphasweep uses public APIs everywhere else. Each name here reaches into an upstream internal that has
no public equivalent (docs/upstream.md says why each is needed); tests/test_compat.py exercises each one
against the installed versions, so an upgrade that breaks one fails there, by name, rather than in a sweep.
"""

from __future__ import annotations

import optuna
from ray.job_submission import JobSubmissionClient
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.tune.search.optuna import OptunaSearch

CHECKED_AGAINST = {"ray": "2.60.0", "optuna": "5.0.0"}


def searcher_study(searcher: OptunaSearch) -> optuna.Study:
    """The Optuna study an `OptunaSearch` asks and tells (`_ot_study`): Ray exposes no accessor for it."""
    return searcher._ot_study


def searcher_trials(searcher: OptunaSearch) -> dict[str, optuna.Trial]:
    """The live Optuna trial of each Tune trial id (`_ot_trials`); a trial popped from it is forgotten
    by the searcher, which then asks the study afresh for that Tune trial id."""
    return searcher._ot_trials


class WithoutRayDataCallback:
    """A mixin for Ray Train's `TorchTrainer` that leaves the Ray Data callback (`DatasetsCallback`) out of
    a run's default callbacks (`_create_default_callbacks`) when the run has no `datasets`: that callback
    starts a `DatasetManager` actor for every run, a process that only imports Ray Data."""

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]


def server_ray_version(client: JobSubmissionClient) -> str | None:
    """The Ray version of the cluster behind a Jobs API client (`_server_ray_version`, which the client's
    own version check stores; the public `get_version` returns the API version, not Ray's)."""
    return getattr(client, "_server_ray_version", None)
