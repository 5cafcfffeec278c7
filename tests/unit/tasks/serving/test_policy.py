"""Who may make the model server serve which version (tasks/serving/policy.py, a pure function)."""

from __future__ import annotations

import pytest

from tasks import names
from tasks.serving.policy import CHAMPION, GATE_PASSED_TAG, PREVIOUS, ReloadVerdict, reload_policy


@pytest.mark.parametrize(
    ("aliases", "tags", "force", "reason", "allowed", "said"),
    [
        ({"champion"}, {}, False, None, True, "holds the champion alias"),
        ({"previous"}, {"gate.passed": "False"}, False, None, True, "previous alias (rollback)"),
        (set(), {"gate.passed": "True"}, False, None, True, "passed its gate"),
        ({"challenger"}, {"gate.passed": "False"}, False, None, False, "send force with a reason"),
        ({"challenger"}, {}, True, "  ", False, "force needs a non-empty reason"),
        ({"challenger"}, {"gate.passed": "False"}, True, "hotfix #12", True, "forced: hotfix #12"),
    ],
)
def test_reload_policy(aliases, tags, force, reason, allowed, said):
    verdict = reload_policy("7", aliases, tags, force, reason)
    assert verdict.allowed is allowed and said in verdict.why
    assert verdict.forced is (allowed and force)


def test_the_policy_speaks_the_registry_s_names():
    """It imports nothing, so its copies of the alias and tag names must match what the registry writes."""
    assert (CHAMPION, PREVIOUS) == (names.CHAMPION, names.PREVIOUS)
    assert GATE_PASSED_TAG == names.TAG_GATE_PASSED


@pytest.mark.parametrize(
    ("aliases", "tags"),
    [
        ({"challenger"}, {}),  # dry-run and disabled gate modes register failed candidates under challenger
        (set(), {}),
        (set(), {"gate.passed": "False"}),
        (set(), {"gate.passed": "true"}),  # only the exact tag value the gate writes vouches
        (set(), {"gate.passed": "1"}),
        ({"Champion", "prev"}, {"other": "True"}),  # near-misses of the names are not the names
    ],
)
def test_anything_not_vouched_for_is_refused_without_force_and_a_reason(aliases, tags):
    for force, reason in ((False, None), (False, "a reason alone is no force"), (True, None), (True, ""), (True, "\n")):
        verdict = reload_policy("9", aliases, tags, force, reason)
        assert verdict == ReloadVerdict(False, verdict.why, forced=False), (aliases, tags, force, reason)
        assert verdict.why.startswith("v9 is neither champion nor previous and its gate did not pass")
        assert f"gate.passed={tags.get('gate.passed')!r}" in verdict.why


def test_a_refusal_names_the_aliases_the_version_holds_sorted():
    why = reload_policy("3", ["zeta", "challenger"], {}).why
    assert "aliases: challenger, zeta" in why
    assert "aliases: none" in reload_policy("3", [], {}).why


def test_a_forced_reload_keeps_the_stripped_reason_and_what_the_policy_said():
    verdict = reload_policy("4", {"challenger"}, {"gate.passed": "False"}, force=True, reason="  incident 42  ")
    assert verdict.allowed and verdict.forced
    assert verdict.why.startswith("forced: incident 42 (v4 is neither champion nor previous")
    assert "aliases: challenger" in verdict.why


def test_force_on_a_vouched_version_is_not_recorded_as_forced():
    """Champion first, then previous, then the gate: the first that vouches answers, and nothing was forced."""
    both = reload_policy("5", {"champion", "previous"}, {"gate.passed": "True"}, force=True, reason="why not")
    assert both == ReloadVerdict(True, "v5 holds the champion alias", forced=False)
    rolled = reload_policy("6", {"previous"}, {"gate.passed": "True"}, force=True, reason="x")
    assert rolled == ReloadVerdict(True, "v6 holds the previous alias (rollback)", forced=False)
