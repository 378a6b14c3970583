"""The run records the grid produces (every record.json the tables read) and the figures drawn from them."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .keys import ORACLE, emission_of, head_key
from .paths import PRUNE_FOLDERS

if TYPE_CHECKING:
    from .plan import Plan


def _given(names, every):
    return every if names is None else names


class Records:
    """Each list is the whole grid's by default, or that of some backbones, head specs and tasks."""

    def __init__(self, plan: Plan):
        self.plan, self.paths = plan, plan.paths

    def _cells(self, backbones, specs, tasks):
        for b, key, policy in self.plan.cells(backbones, specs):
            for task in _given(tasks, self.plan.tasks):
                yield task, self.paths.exit_cell(b, key, policy, task)

    def exits(self, backbones=None, specs=None, tasks=None) -> list[str]:
        return [self.paths.threshold_record(cell, x) for _, cell in self._cells(backbones, specs, tasks)
                for x in self.plan.thresholds]

    def calibrated(self, backbones=None, specs=None, tasks=None) -> list[str]:
        calibrated = self.plan.calibration and self.plan.calibration["heads"]
        specs = [s for s in _given(specs, self.plan.heads) if s in calibrated] if calibrated else specs
        emissions = self.plan.calibration and self.plan.calibration["emissions"]
        return [self.paths.calibrated_record(self.paths.exit_cell(b, key, policy, task), d)
                for b, key, policy in self.plan.cells(backbones, specs)
                if not emissions or emission_of(key) in emissions
                for task in _given(tasks, self.plan.tasks) if task in self.plan.calibrated_tasks
                for d in self.plan.deltas]

    def baseline(self, backbones=None, tasks=None) -> list[str]:
        return [f"{self.paths.baseline_dir(b, t)}/record.json" for b in _given(backbones, self.plan.backbones)
                for t in _given(tasks, self.plan.tasks)]

    def oracle(self, backbones=None, tasks=None) -> list[str]:
        """The oracle bound per (backbone, emission rule, policy, task) at the backbone's exit layers."""
        if not self.plan.evaluation["oracle"]:
            return []
        return [f"{self.paths.oracle_dir(b, head_key(ORACLE, e), p, t)}/record.json"
                for b in _given(backbones, self.plan.backbones) for e in self.plan.emissions(b)
                for p in self.plan.policies_under(b, e) for t in _given(tasks, self.plan.tasks)]

    def prune(self, backbones=None, tasks=None) -> list[str]:
        return [f"{self.paths.prune_dir(b, folder, n, t)}/record.json" for b in _given(backbones, self.plan.backbones)
                for folder in PRUNE_FOLDERS.values() for n in self.plan.backbones[b]["prune"]
                for t in _given(tasks, self.plan.tasks)]

    def speculative(self, backbones=None, specs=None, tasks=None) -> list[str]:
        """The speculative series' points: per (backbone, head key, policy, max_draft, task) each drafting threshold."""
        return [self.paths.threshold_record(self.paths.speculative_cell(b, key, policy, k, t), x)
                for b, key, policy, k in self.plan.speculative_cells(backbones, specs)
                for t in _given(tasks, self.plan.tasks) for x in self.plan.speculative_thresholds(b)]

    def evaluated(self, backbone: str, task: str, part: str) -> list[str]:
        """Every record one part (paths.EVALUATION_PARTS) of the evaluation of a backbone and a task writes (rules
        evaluate_BACKBONE_PART): `heads` the exit cells and the speculative series, `reference` the baseline, the
        oracle and the pruning depths."""
        b, t = [backbone], [task]
        if part == "heads":
            return self.exits(b, tasks=t) + self.speculative(b, tasks=t)
        return self.baseline(b, t) + self.oracle(b, t) + self.prune(b, t)

    def all(self) -> list[str]:
        """Every record: the tables' inputs."""
        return (self.exits() + self.baseline() + self.oracle() + self.prune() + self.speculative()
                + self.calibrated())

    def shown(self, backbone: str, task: str, specs: list[str]) -> list[str]:
        """The records a figure of these head specs shows: their points (calibrated too), the baseline, the oracle and
        the pruning."""
        b, t = [backbone], [task]
        return (self.exits(b, specs, t) + self.calibrated(b, specs, t) + self.baseline(b, t) + self.oracle(b, t)
                + self.prune(b, t))

    def figures(self) -> list[str]:
        """Every figure file: per backbone and task one with every head, and one per analysis.comparisons entry."""
        formats, tasks = self.plan.analysis["formats"], self.plan.tasks
        every_head = [f"{self.paths.figure(b, t)}.{ext}" for b in self.plan.backbones for t in tasks for ext in formats]
        return every_head + [f"{self.paths.comparison_figure(b, c, t)}.{ext}" for b in self.plan.backbones
                             for c in self.plan.analysis["comparisons"] for t in tasks for ext in formats]
