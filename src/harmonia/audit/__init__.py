"""The audit of a training run: the self-contained HTML page of suspect samples and its plots."""

from __future__ import annotations

from harmonia.audit.build import AuditOutputs, build_audit

__all__ = ["AuditOutputs", "build_audit"]
