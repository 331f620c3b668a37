"""``gradvac``: raise each pair's cosine to an adaptive target (Gradient Vaccine).

Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and Improving Multi-task Optimization
in Massively Multilingual Models", ICLR 2021 (arXiv:2010.05874), Algorithm 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from harmonia.harmonization.methods.base import (
    Combination,
    OrderedMethod,
    gather_diag,
    gather_rows,
)

TARGET_CEILING = 1.0 - 1e-6
"""Targets are kept below 1: at exactly 1 the paper's correction divides by zero."""


class GradVac(OrderedMethod):
    """GradVac per sample, tracked as coefficients using only the Gram matrix.

    For each task ``i`` and every other task ``j`` in a random order, with ``phi`` the cosine of
    the (already corrected) ``g_i'`` and the original ``g_j`` and ``t_ij`` the target: if
    ``phi < t_ij``, add ``w g_j`` with
    ``w = |g_i'| (t_ij sqrt(1 - phi^2) - phi sqrt(1 - t_ij^2)) / (|g_j| sqrt(1 - t_ij^2))``,
    which makes the cosine exactly ``t_ij``. The result is ``sum_i g_i'``.

    The targets are an exponential moving average of the observed cosines, ``t <- (1 - beta) t +
    beta phi``, starting at 0 (so the first step is PCGrad). Per-sample adaptation: all samples of
    a step share the targets, which move once per step by the mean over samples of ``phi``
    (the paper moves them once per step with its one batch gradient). The targets are state:
    save them with `state_dict`.

    Two per-sample gradients ``g1 = (1, 0)`` and ``g2 = (-1, 1)`` conflict (``<g1, g2> = -1``);
    from their Gram matrix the method returns the coefficients of on the first step (targets still 0) PCGrad's ``2 g1 + 1.5 g2``:

    >>> import torch
    >>> gram = torch.tensor([[[1.0, -1.0], [-1.0, 2.0]]], dtype=torch.float64)
    >>> GradVac()(gram, torch.Generator()).coefficients
    tensor([[2.0000, 1.5000]], dtype=torch.float64)
    """

    name = "gradvac"

    def __init__(self, beta: float = 0.01, eps: float = 0.0) -> None:
        super().__init__(eps)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"gradvac beta must be in [0, 1], got {beta}")
        self.beta = beta
        self.target: Tensor | None = None

    def combine_in_order(self, gram: Tensor, orders: Tensor) -> Combination:
        """GradVac with given orders ``[B, M, M - 1]``; updates the targets."""
        batch, tasks = gram.shape[:2]
        if self.target is None or self.target.shape != (tasks, tasks):
            self.target = torch.zeros(tasks, tasks, dtype=torch.float64)
        target = self.target.to(gram.device).clamp(max=TARGET_CEILING)
        eye = torch.eye(tasks, dtype=gram.dtype, device=gram.device)
        total = torch.zeros(batch, tasks, dtype=gram.dtype, device=gram.device)
        observed = torch.zeros(tasks, tasks, dtype=gram.dtype, device=gram.device)
        corrections = torch.zeros((), dtype=torch.long, device=gram.device)
        for i in range(tasks):
            coef = eye[i].expand(batch, tasks).clone()
            inner = gram[:, i, :].clone()  # <g_i', g_m> for every m
            for step in range(tasks - 1):
                j = orders[:, i, step]
                norm_i = (inner * coef).sum(-1).clamp_min(0.0).sqrt()
                norm_j = gather_diag(gram, j).clamp_min(0.0).sqrt()
                phi = inner.gather(1, j.view(-1, 1)).squeeze(1) / (norm_i * norm_j).clamp_min(
                    self.eps
                )
                goal = target[i][j]
                low = (phi < goal) & (norm_j > 0)
                room = (1.0 - goal.square()).sqrt()
                weight = norm_i * (goal * (1.0 - phi.square()).clamp_min(0.0).sqrt() - phi * room)
                weight = torch.where(low, weight / (norm_j * room).clamp_min(self.eps), 0.0)
                coef.scatter_add_(1, j.view(-1, 1), weight.view(-1, 1))
                inner += weight.view(-1, 1) * gather_rows(gram, j)
                observed[i].scatter_add_(0, j, phi)
                corrections += low.sum()
            total += coef
        off = ~torch.eye(tasks, dtype=torch.bool, device=gram.device)
        moved = (1.0 - self.beta) * self.target.to(gram.device) + self.beta * observed / batch
        self.target = torch.where(off, moved, 0.0)
        return Combination(total, {"corrections": corrections})

    def state_dict(self) -> dict[str, Any]:
        return {} if self.target is None else {"target": self.target.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"target"}
        if unknown:
            raise ValueError(f"unknown gradvac state keys {sorted(unknown)}")
        target = state.get("target")
        self.target = None if target is None else torch.as_tensor(target, dtype=torch.float64)
