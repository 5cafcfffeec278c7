"""Who may make the model server serve which version: the reload policy, a pure function.

Loading a version runs its code inside the server (a pyfunc's ``load_context``), so the admin API serves
only what the pipeline vouched for:

- the version holding the ``champion`` alias (what a deploy after promotion asks for),
- the version holding ``previous`` (a rollback),
- a version whose gate passed (version tag ``gate.passed == "True"``).

A ``challenger`` alone is not enough: dry-run and disabled gate modes register failed candidates under that
alias. Anything else needs ``force`` with a non-empty reason, and the ledger records who forced it and why.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

CHAMPION = "champion"  # the names tasks.registry gives the aliases (kept here so this module imports nothing)
PREVIOUS = "previous"
GATE_PASSED_TAG = "gate.passed"


@dataclass(frozen=True)
class ReloadVerdict:
    """Whether a reload may proceed, and why (the ledger's reason when the caller gives none)."""

    allowed: bool
    why: str
    forced: bool = False


def reload_policy(
    version: str, aliases: Collection[str], tags: Mapping[str, str], force: bool = False, reason: str | None = None
) -> ReloadVerdict:
    """Decide whether ``version`` (with its registry ``aliases`` and version ``tags``) may be served.

    Args:
        version: The version asked for.
        aliases: Its aliases in the registry now.
        tags: Its version tags.
        force: The caller insists on a version the policy does not vouch for.
        reason: Why (required with ``force``).
    """
    if CHAMPION in aliases:
        return ReloadVerdict(True, f"v{version} holds the {CHAMPION} alias")
    if PREVIOUS in aliases:
        return ReloadVerdict(True, f"v{version} holds the {PREVIOUS} alias (rollback)")
    if tags.get(GATE_PASSED_TAG) == "True":
        return ReloadVerdict(True, f"v{version} passed its gate")
    held = ", ".join(sorted(aliases)) or "none"
    vouch = (
        f"v{version} is neither {CHAMPION} nor {PREVIOUS} and its gate did not pass "
        f"({GATE_PASSED_TAG}={tags.get(GATE_PASSED_TAG)!r}; aliases: {held})"
    )
    if force and reason and reason.strip():
        return ReloadVerdict(True, f"forced: {reason.strip()} ({vouch})", forced=True)
    if force:
        return ReloadVerdict(False, f"{vouch}; force needs a non-empty reason")
    return ReloadVerdict(False, f"{vouch}; send force with a reason to serve it anyway")
