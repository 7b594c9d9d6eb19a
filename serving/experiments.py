"""Online experiments as serving sees them: the experiments file, re-read when it changes.

Each experiment is its own layer: a user is bucketed in every running experiment independently
(`evaluation.experiments.assignment.assign`, a hash of the experiment salt and the user id). A variant's
`model` names a registered ranker alias or version; the first experiment (in file order) whose variant
names a model other than `champion` decides the ranker that answers, and every assignment is reported
in the response. The file is checked at most once per `check_every_s` and re-read only when its
modification time or size changed; a file that does not parse keeps the last good experiments.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evaluation.experiments.assignment import Experiment, assign, load_experiments

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CONTROL = "control"


@dataclass(frozen=True)
class Assignment:
    """A user's variants: `variants` maps experiment -> variant; `model` is the ranker ref to serve."""

    variants: dict[str, str]
    model: str

    @property
    def label(self) -> str:
        """The response's `experiment_variant`: `exp=variant` pairs, or `control` when none run.

        >>> Assignment({"a": "treatment", "b": "control"}, "challenger").label
        'a=treatment,b=control'
        """
        if not self.variants:
            return CONTROL
        return ",".join(f"{name}={variant}" for name, variant in self.variants.items())


def assign_all(user_id: str, experiments: dict[str, Experiment]) -> Assignment:
    """The user's variant in every experiment and the ranker model that follows from them."""
    variants: dict[str, str] = {}
    model = CHAMPION
    for name, experiment in experiments.items():
        chosen = assign(user_id, experiment)
        variants[name] = chosen
        ref = next(v.model for v in experiment.variants if v.name == chosen)
        if model == CHAMPION and ref != CHAMPION:
            model = ref
    return Assignment(variants, model)


class ExperimentWatcher:
    """The running experiments of one file, reloaded when the file changes (checked at most once a second)."""

    def __init__(
        self, path: Path, check_every_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = Path(path)
        self.check_every_s = check_every_s
        self._clock = clock
        self._checked_at = -float("inf")
        self._signature: tuple[int, int] | None = None
        self.experiments: dict[str, Experiment] = {}
        self.error: str | None = None

    def _file_signature(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def current(self, force: bool = False) -> dict[str, Experiment]:
        """The experiments now in force; re-reads the file when due and changed (or when `force`)."""
        now = self._clock()
        if not force and now - self._checked_at < self.check_every_s:
            return self.experiments
        self._checked_at = now
        signature = self._file_signature()
        if signature == self._signature and not force:
            return self.experiments
        try:
            self.experiments = load_experiments(self.path)
            self.error = None
        except ValueError as err:  # ExperimentError is a ValueError
            self.error = str(err)
            logger.error("keeping the previous experiments: %s", err)
        self._signature = signature
        return self.experiments

    def models(self) -> set[str]:
        """Every model ref the current experiments may ask for, champion excluded."""
        return {v.model for e in self.current().values() for v in e.variants} - {CHAMPION}
