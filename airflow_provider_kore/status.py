"""Campaign statuses. Kore.ai's pages show ``Ready``, ``Active`` and ``Stopped`` and call the list open,
so statuses compare case-insensitively and an unknown one is waited on, never taken for success."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from airflow_provider_kore.exceptions import KoreConfigurationError

#: A campaign in one of these will not move again by itself.
TERMINAL_STATUSES = frozenset({"completed", "stopped", "failed", "cancelled", "canceled", "aborted"})
#: Statuses this provider has a meaning for (documented or expected), lower-case.
_KNOWN_STATUSES = TERMINAL_STATUSES | {"ready", "scheduled", "active", "paused"}
DEFAULT_TARGET_STATUSES = ("Completed",)
DEFAULT_FAILURE_STATUSES = ("Failed",)

Verdict = Literal["success", "failure", "waiting"]


def _norm(status: object) -> str:
    return str(status).strip().lower()


def _norms(statuses: Iterable[object]) -> set[str]:
    return {_norm(status) for status in statuses}


def is_terminal(status: object) -> bool:
    """True for a status the campaign will not leave by itself."""
    return _norm(status) in TERMINAL_STATUSES


def is_known(status: object) -> bool:
    """True for a status this provider has a meaning for."""
    return _norm(status) in _KNOWN_STATUSES


def _statuses(field: str, values: object, *, allow_empty: bool = False) -> tuple[str, ...]:
    """Distinct non-blank status names from a name, a list of them, or a templated list's text."""
    wrong = f"{field} must be a status name or a list of them; got {values!r}"
    if isinstance(values, str) and values.strip()[:1] in ("[", "("):  # "['Completed', 'Stopped']"
        try:
            values = ast.literal_eval(values.strip())
        except (ValueError, SyntaxError):
            raise KoreConfigurationError(wrong) from None
    items = [values] if isinstance(values, str) else [] if values is None else values
    if not isinstance(items, Iterable):
        raise KoreConfigurationError(wrong)
    result: dict[str, None] = {}  # an ordered set
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise KoreConfigurationError(f"{field} must hold non-empty status names; got {item!r}")
        result[item.strip()] = None
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
        targets = _statuses("target_statuses", target_statuses)
        if failure_statuses is None:  # the default failure status, unless it is a target
            failures = tuple(s for s in DEFAULT_FAILURE_STATUSES if _norm(s) not in _norms(targets))
        else:
            failures = _statuses("failure_statuses", failure_statuses, allow_empty=True)
        if overlap := _norms(targets) & _norms(failures):
            raise KoreConfigurationError(
                f"target_statuses and failure_statuses share {sorted(overlap)}; a status cannot be both"
            )
        return cls(targets, failures)

    def verdict(self, status: object) -> Verdict:
        """``success`` on a target, ``failure`` on a failure or a non-target terminal status, else wait."""
        if _norm(status) in _norms(self.target_statuses):
            return "success"
        return "failure" if _norm(status) in _norms(self.failure_statuses) | TERMINAL_STATUSES else "waiting"

    def explain_failure(self, campaign_id: str, status: object) -> str:
        """The message a failed wait carries."""
        failure = _norm(status) in _norms(self.failure_statuses)
        why = "a failure status" if failure else "a terminal status that is not a target"
        return f"Kore.ai campaign {campaign_id!r} is {status!r}, {why}; waited for {', '.join(self.target_statuses)}"
