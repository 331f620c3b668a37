"""Experiments: the reproduction study of the paper's claims (`harmonia experiment reproduce`)."""

from __future__ import annotations

from harmonia.experiments.plan import BUDGETS, Budget, RunSpec, StudyPlan, make_plan

__all__ = ["BUDGETS", "Budget", "RunSpec", "StudyPlan", "make_plan"]
