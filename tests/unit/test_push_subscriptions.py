"""resources/subscribe bookkeeping (mcp_server.push.LegacySubscriptions): bounded per
session, and a resource nobody watches any more is forgotten."""

from __future__ import annotations

import pytest

from bus.errors import LimitExceeded
from bus.keys import Keys
from mcp_server.push import SUBSCRIPTIONS_PER_SESSION, InboxEvents, LegacySubscriptions


def subscriptions() -> LegacySubscriptions:
    return LegacySubscriptions(InboxEvents("redis://127.0.0.1:1/0", Keys("unit:")))


def test_one_session_may_watch_at_most_its_limit_of_resources():
    legacy, session, other = subscriptions(), object(), object()
    uris = [f"message-bus://inbox/a{i}" for i in range(SUBSCRIPTIONS_PER_SESSION)]
    for uri in uris:
        legacy.add(uri, session, lambda: True)
    legacy.add(uris[0], session, lambda: True)  # the same one again is no new resource
    with pytest.raises(LimitExceeded, match=f"the most one session may \\({len(uris)}\\)"):
        legacy.add("message-bus://inbox/one-more", session, lambda: True)
    legacy.add("message-bus://inbox/one-more", other, lambda: True)  # another session may
    legacy.remove(uris[0], session)
    legacy.add("message-bus://inbox/one-more", session, lambda: True)  # room again


def test_a_resource_nobody_watches_any_more_is_forgotten():
    legacy, first, second = subscriptions(), object(), object()
    uri = "message-bus://inbox/bob"
    legacy.add(uri, first, lambda: True)
    legacy.add(uri, second, lambda: True)
    legacy.remove(uri, first)
    assert legacy.uris() == [uri]  # the control: one still watches it
    legacy.remove(uri, second)
    legacy.remove(uri, second)  # twice is harmless
    assert legacy.uris() == []
