"""Campaign status vocabulary, shared by the sensor, the trigger and the operators.

Kore.ai's pages show ``Ready``, ``Active`` and ``Stopped`` and say the list is open ("for
example Active, Stopped"), so statuses are compared case-insensitively and an unknown one is
waited on, never taken for success.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from airflow_provider_kore.exceptions import KoreConfigurationError

READY = "Ready"
SCHEDULED = "Scheduled"
ACTIVE = "Active"
PAUSED = "Paused"
COMPLETED = "Completed"
STOPPED = "Stopped"
FAILED = "Failed"

#: Statuses Kore.ai is known to report (documented or expected).
KNOWN_STATUSES = (READY, SCHEDULED, ACTIVE, PAUSED, COMPLETED, STOPPED, FAILED)
#: A campaign in one of these will not move again by itself.
TERMINAL_STATUSES = frozenset({"completed", "stopped", "failed", "cancelled", "canceled", "aborted"})
DEFAULT_TARGET_STATUSES = (COMPLETED,)
DEFAULT_FAILURE_STATUSES = (FAILED,)

Verdict = Literal["success", "failure", "waiting"]


def _norm(status: object) -> str:
    return str(status).strip().lower()


def is_terminal(status: object) -> bool:
    """True for a status the campaign will not leave by itself."""
    return _norm(status) in TERMINAL_STATUSES


def is_known(status: object) -> bool:
    """True for a status this provider has a meaning for."""
    return _norm(status) in {s.lower() for s in KNOWN_STATUSES} | TERMINAL_STATUSES


def normalise_statuses(field: str, values: object, *, allow_empty: bool = False) -> tuple[str, ...]:
    """A tuple of non-blank status names from a string or an iterable of strings."""
    if isinstance(values, str) and values.strip()[:1] in ("[", "("):
        # A templated list renders to its text ("['Completed', 'Stopped']"): read it back.
        try:
            values = ast.literal_eval(values.strip())
        except (ValueError, SyntaxError):
            raise KoreConfigurationError(f"{field} must be a status name or a list of them; got {values!r}") from None
    if values is None:
        items: list[object] = []
    elif isinstance(values, str):
        items = [values]
    elif isinstance(values, Iterable):
        items = list(values)
    else:
        raise KoreConfigurationError(f"{field} must be a status name or a list of them; got {values!r}")
    result: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise KoreConfigurationError(f"{field} must hold non-empty status names; got {item!r}")
        if item.strip() not in result:
            result.append(item.strip())
    if not result and not allow_empty:
        raise KoreConfigurationError(f"{field} must name at least one campaign status")
    return tuple(result)


@dataclass(frozen=True)
class StatusRule:
    """What a wait is for: which statuses end it well, and which end it badly."""

    target_statuses: tuple[str, ...]
    failure_statuses: tuple[str, ...] = DEFAULT_FAILURE_STATUSES

    @classmethod
    def build(cls, target_statuses: object, failure_statuses: object = None) -> StatusRule:
        """Validate: non-empty targets, and no status both a target and a failure."""
        targets = normalise_statuses("target_statuses", target_statuses)
        if failure_statuses is None:
            target_set = {_norm(t) for t in targets}
            failures = tuple(s for s in DEFAULT_FAILURE_STATUSES if _norm(s) not in target_set)
        else:
            failures = normalise_statuses("failure_statuses", failure_statuses, allow_empty=True)
        overlap = {_norm(t) for t in targets} & {_norm(f) for f in failures}
        if overlap:
            raise KoreConfigurationError(
                f"target_statuses and failure_statuses share {sorted(overlap)}; a status cannot be both"
            )
        return cls(targets, failures)

    def verdict(self, status: object) -> Verdict:
        """``success`` on a target, ``failure`` on a failure or a non-target terminal status, else wait."""
        norm = _norm(status)
        if norm in {_norm(t) for t in self.target_statuses}:
            return "success"
        if norm in {_norm(f) for f in self.failure_statuses} or norm in TERMINAL_STATUSES:
            return "failure"
        return "waiting"

    def explain_failure(self, campaign_id: str, status: object) -> str:
        """The message a failed wait carries."""
        why = (
            "a failure status"
            if _norm(status) in {_norm(f) for f in self.failure_statuses}
            else ("a terminal status that is not a target")
        )
        return f"Kore.ai campaign {campaign_id!r} is {status!r}, {why}; waited for {', '.join(self.target_statuses)}"
