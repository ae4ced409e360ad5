"""resources/subscribe bookkeeping (mcp_server.push.LegacySubscriptions): bounded per
session, and a resource nobody watches any more is forgotten."""

from __future__ import annotations

import pytest

from bus.errors import LimitExceeded
from bus.keys import Keys
from mcp_server.push import (
    SUBSCRIPTIONS_PER_AGENT,
    SUBSCRIPTIONS_PER_SESSION,
    InboxEvents,
    LegacySubscriptions,
)


def subscriptions() -> LegacySubscriptions:
    return LegacySubscriptions(InboxEvents("redis://127.0.0.1:1/0", Keys("unit:")))


def test_one_session_may_watch_at_most_its_limit_of_resources():
    legacy, session, other = subscriptions(), object(), object()
    uris = [f"message-bus://inbox/a{i}" for i in range(SUBSCRIPTIONS_PER_SESSION)]
    for uri in uris:
        legacy.add(uri, session, lambda: True, "admin")
    legacy.add(uris[0], session, lambda: True, "admin")  # the same one again is no new resource
    with pytest.raises(LimitExceeded, match=f"the most one session may \\({len(uris)}\\)"):
        legacy.add("message-bus://inbox/one-more", session, lambda: True, "admin")
    legacy.add("message-bus://inbox/one-more", other, lambda: True, "admin")  # another session may
    legacy.remove(uris[0], session)
    legacy.add("message-bus://inbox/one-more", session, lambda: True, "admin")  # room again


def test_a_resource_nobody_watches_any_more_is_forgotten():
    legacy, first, second = subscriptions(), object(), object()
    uri = "message-bus://inbox/bob"
    legacy.add(uri, first, lambda: True, "admin")
    legacy.add(uri, second, lambda: True, "admin")
    legacy.remove(uri, first)
    assert legacy.uris() == [uri]  # the control: one still watches it
    legacy.remove(uri, second)
    legacy.remove(uri, second)  # twice is harmless
    assert legacy.uris() == []


def test_an_agents_sessions_that_ended_without_unsubscribing_are_bounded():
    """The SDK tells no one when a session ends: an agent whose sessions keep coming and
    going holds at most SUBSCRIPTIONS_PER_AGENT subscriptions, its oldest going first;
    another agent's are untouched (the control)."""
    legacy = subscriptions()
    legacy.add("message-bus://inbox/bob", object(), lambda: True, "bob")
    for i in range(SUBSCRIPTIONS_PER_AGENT + 50):
        legacy.add(f"message-bus://inbox/a{i}", object(), lambda: True, "admin")  # gone
    kept = [u for u in legacy.uris() if u.startswith("message-bus://inbox/a")]
    assert len(kept) == SUBSCRIPTIONS_PER_AGENT
    assert kept[-1] == f"message-bus://inbox/a{SUBSCRIPTIONS_PER_AGENT + 49}"
    assert "message-bus://inbox/a0" not in kept
    assert "message-bus://inbox/bob" in legacy.uris()


def test_a_session_whose_caller_changes_keeps_each_agents_bound_its_own():
    """One session may carry requests of two callers (each request names its own): the
    later caller's subscription is its own, and the first agent going past its bound
    evicts only its own oldest, without looping (it once hung the server)."""
    legacy, shared = subscriptions(), object()
    legacy.add("message-bus://agents", shared, lambda: True, "alice")
    legacy.add("message-bus://agents", shared, lambda: True, "bob")
    for i in range(SUBSCRIPTIONS_PER_AGENT + 5):
        legacy.add(f"message-bus://inbox/a{i}", object(), lambda: True, "alice")
    assert "message-bus://agents" in legacy.uris()  # bob's, not alice's to evict
    kept = [u for u in legacy.uris() if u.startswith("message-bus://inbox/a")]
    assert len(kept) == SUBSCRIPTIONS_PER_AGENT
