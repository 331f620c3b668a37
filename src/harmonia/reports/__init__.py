"""Human-readable reports of a training run: the self-contained audit HTML and its plots."""

from __future__ import annotations

from harmonia.reports.audit import AuditOutputs, build_audit

__all__ = ["AuditOutputs", "build_audit"]
