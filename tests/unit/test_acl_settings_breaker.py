"""ACL policy, settings parsing and the circuit breaker."""

from __future__ import annotations

import os
import threading
import time

import pytest

from bus import breaker as breaker_module
from bus.acl import Policy
from bus.breaker import BREAKERS, CircuitBreaker
from bus.errors import BusUnavailable, ConfigError, NotReplicated, PermanentFailure
from bus.keys import Keys
from bus.redis_conn import redis_errors
from bus.settings import Settings, parse_rate


def test_acl_globs_default_and_admins(tmp_path):
    policy = Policy.from_dict(
        {
            "default": "deny",
            "admins": ["ops"],
            "agents": {
                "alice": {"send": ["bob", "worker-*"], "publish": ["tasks/*"], "rate_limit": "5/s"}
            },
        }
    )
    assert policy.may_send("alice", "worker-3")[0]
    ok, rule = policy.may_send("alice", "carol")
    assert not ok and "agents.alice.send" in rule
    assert not policy.may_publish("alice", "news")[0]
    assert not policy.may_send("mallory", "bob")[0]
    assert policy.is_admin("ops") and not policy.is_admin("alice")
    assert policy.rate_for("alice", 100) == 5 and policy.rate_for("bob", 100) == 100


def test_acl_files_in_yaml_and_toml(tmp_path):
    (tmp_path / "acl.yaml").write_text("admins: [ops]\n")
    (tmp_path / "acl.toml").write_text('admins = ["root"]\n[agents.bob]\nsend = ["alice"]\n')
    assert Policy.load(tmp_path / "acl.yaml").is_admin("ops")
    toml = Policy.load(tmp_path / "acl.toml")
    assert toml.is_admin("root") and not toml.may_send("bob", "carol")[0]
    (tmp_path / "bad.yaml").write_text("default: maybe\n")
    with pytest.raises(ConfigError, match="allow or deny"):
        Policy.load(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("admins: [007]\n", "7"),  # YAML reads 007 as the number 7
        ("agents:\n  0123: {send: [bob]}\n", "83"),  # and 0123 as octal 83
        ("agents:\n  on: {send: [bob]}\n", "True"),  # and on as true
        ("agents:\n  alice: {broadcast: 'no'}\n", "'no'"),
        ("admins: [Ops]\n", "Ops"),
    ],
)
def test_acl_entries_that_are_no_agent_id_are_refused_naming_them(tmp_path, text, named):
    (tmp_path / "acl.yaml").write_text(text)
    with pytest.raises(ConfigError, match=named):
        Policy.load(tmp_path / "acl.yaml")
    # the control: quoted, the same ids are what they say
    (tmp_path / "ok.yaml").write_text(
        "admins: ['007']\nagents:\n  '0123': {send: [bob], broadcast: false}\n"
    )
    policy = Policy.load(tmp_path / "ok.yaml")
    assert policy.is_admin("007") and not policy.is_admin("7")
    assert not policy.may_send("0123", "carol")[0] and not policy.may_broadcast("0123")[0]


def test_rates_parse_and_bad_ones_are_config_errors():
    assert parse_rate("100/s") == 100 and parse_rate("600/m") == 10 and parse_rate("0") == 0
    with pytest.raises(ConfigError):
        parse_rate("fast")


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("MESSAGE_BUS_"):
            monkeypatch.delenv(name)


def test_signing_keys_from_secret_and_rotation_list(clean_env, tmp_path):
    assert Settings(secret="s", state_dir=tmp_path).signing_keys == [("k1", b"s")]
    keys = Settings(secret_keys="new:x,old:y", state_dir=tmp_path).signing_keys
    assert keys == [("new", b"x"), ("old", b"y")]
    with pytest.raises(ConfigError, match="kid1:secret1"):
        Settings(secret_keys="nonsense", state_dir=tmp_path).signing_keys  # noqa: B018


def test_an_empty_secret_counts_as_no_secret(clean_env, tmp_path):
    with pytest.raises(ConfigError, match="no secret"):
        Settings(mode="production", secret="", state_dir=tmp_path).signing_keys  # noqa: B018


def test_production_without_secret_fails_and_dev_shares_one_generated_secret(clean_env, tmp_path):
    with pytest.raises(ConfigError, match="no secret"):
        Settings(mode="production", state_dir=tmp_path).signing_keys  # noqa: B018
    first = Settings(state_dir=tmp_path).signing_keys
    assert first == Settings(state_dir=tmp_path).signing_keys


def test_every_key_starts_with_the_prefix_and_agent_keys_share_a_hash_tag():
    keys = Keys("p:")
    inbox = keys.inbox("alice")
    assert all(k.startswith("p:") for k in [*inbox.all(), keys.history("alice"), keys.agents])
    assert all("{alice}" in k for k in inbox.all())


def test_breaker_opens_after_failures_then_half_opens_and_closes():
    clock = [0.0]
    breaker = CircuitBreaker("x", failure_threshold=2, reset_timeout=1.0)
    real = breaker_module.time.monotonic
    breaker_module.time.monotonic = lambda: clock[0]
    try:
        breaker.failure()
        assert breaker.allow()
        breaker.failure()
        assert breaker.state == "open" and not breaker.allow()
        clock[0] = 1.5
        assert breaker.state == "half_open" and breaker.allow()
        assert not breaker.allow()  # one trial at a time
        breaker.success()
        assert breaker.state == "closed"
    finally:
        breaker_module.time.monotonic = real


def _half_open(breaker: CircuitBreaker, monkeypatch) -> None:
    """Opens `breaker` and lets its reset timeout run out (on a stopped clock)."""
    now = time.monotonic()
    monkeypatch.setattr(breaker_module.time, "monotonic", lambda: now)
    for _ in range(breaker.failure_threshold):
        breaker.failure()
    monkeypatch.setattr(breaker_module.time, "monotonic", lambda: now + breaker.reset_timeout)
    assert breaker.state == "half_open"


@pytest.fixture
def redis_breaker():
    yield BREAKERS["redis"]
    BREAKERS["redis"].success()  # closed again for the tests after this one


def test_a_trial_that_redis_answers_with_too_few_replicas_closes_the_circuit(
    redis_breaker, monkeypatch
):
    # After a failover the trial reaches the new primary before its replica is back, and
    # WAIT says 0: Redis answered. Left undecided, the circuit stayed half-open with its
    # trial "running" and refused every call of the process for good.
    _half_open(redis_breaker, monkeypatch)
    with pytest.raises(NotReplicated), redis_errors("deliver a message"):
        raise NotReplicated("0 of 1 replicas", acknowledged=0, required=1)
    assert redis_breaker.state == "closed"
    with redis_errors("deliver a message"):
        pass  # the next call goes through


def test_a_call_made_inside_the_trial_is_part_of_it_and_another_thread_waits(
    redis_breaker, monkeypatch
):
    # bus.request holds Redis around its send and its wait: as the trial, its own calls
    # were refused as a second trial, and every request failed while the circuit was
    # half-open.
    _half_open(redis_breaker, monkeypatch)
    outside: list[str] = []

    def another_caller() -> None:
        try:
            with redis_errors("read an inbox"):
                outside.append("let through")
        except BusUnavailable:
            outside.append("refused")

    with redis_errors("send a request"):
        thread = threading.Thread(target=another_caller)
        thread.start()
        thread.join(5)
        with redis_errors("record its status"):  # inside the trial: let through
            pass
    assert outside == ["refused"]  # the control: one trial at a time, across threads
    assert redis_breaker.state == "closed"


def _from_another_thread(breaker: CircuitBreaker) -> str:
    seen: list[str] = []

    def call() -> None:
        try:
            with breaker.passage("send"):
                seen.append("let through")
        except BusUnavailable:
            seen.append("refused")

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(5)
    return seen[0]


@pytest.mark.parametrize(
    "ending",
    [
        BusUnavailable("a call to something else failed", component="broker"),
        PermanentFailure("the caller's own verdict", reason="malformed"),
    ],
    ids=["unavailable-elsewhere", "caller-verdict"],
)
def test_a_trial_that_ends_without_a_verdict_lets_the_next_call_be_the_trial(ending, monkeypatch):
    breaker = CircuitBreaker("x", failure_threshold=2, reset_timeout=1.0)
    _half_open(breaker, monkeypatch)
    with breaker.passage("try"):
        # Positive control: while the trial runs, no other caller's call goes through.
        assert _from_another_thread(breaker) == "refused"
    with pytest.raises(type(ending)), breaker.passage("try"):
        raise ending  # neither success nor failure recorded
    assert breaker.state == "half_open"
    with breaker.passage("send"):  # the next call is the trial, not refused for good
        breaker.success()
    assert breaker.state == "closed"


def test_the_solo_pool_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="solo pool is not supported.*threads pool"):
        Settings(worker_pool="solo", state_dir=tmp_path)
    assert Settings(worker_pool="prefork", state_dir=tmp_path).worker_pool == "prefork"


@pytest.mark.parametrize("prefix", ["rv[x]:", "a*:", "a?", "a\\:", "{a}:", "a b:", "x" * 101])
def test_a_key_prefix_that_would_break_the_push_patterns_or_hash_tags_is_refused(prefix, tmp_path):
    # A glob character in it once made the push listener's pattern match nothing: no push.
    with pytest.raises(
        ValueError, match="key prefix .*letters, digits, '.', '_', '-', '/' and ':'"
    ):
        Settings(key_prefix=prefix, state_dir=tmp_path)
    assert Settings(key_prefix="team-1/bus_a:x", state_dir=tmp_path).key_prefix == "team-1/bus_a:x:"


def test_a_stale_trial_ending_late_does_not_free_the_place_of_the_trial_after_it(monkeypatch):
    breaker = CircuitBreaker("x", failure_threshold=2, reset_timeout=1.0)
    _half_open(breaker, monkeypatch)
    now = time.monotonic()
    with breaker.passage("first trial"):
        breaker.failure()  # a call let through before the circuit opened fails: open again
        monkeypatch.setattr(breaker_module.time, "monotonic", lambda: now + 5)
        second = breaker.passage("second trial")
        second.__enter__()
    # The first trial has ended without a verdict; the second still runs, alone.
    assert _from_another_thread(breaker) == "refused"
    second.__exit__(None, None, None)
    with breaker.passage("the next trial"):
        breaker.success()
    assert breaker.state == "closed"
