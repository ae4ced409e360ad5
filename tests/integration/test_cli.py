"""The `msgbus` command line against a real bus: output, --json, errors and exit codes."""

from __future__ import annotations

import json

import pytest

from bus.errors import RequestTimeout, ValidationError
from tests.support.processes import msgbus
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def test_send_read_ack_status_history_round_trip_with_json_output(module_env, worker, agents):
    a, b = agents("a"), agents("b")
    sent = msgbus(
        module_env,
        "send",
        "--from",
        a,
        "--to",
        b,
        "--priority",
        "high",
        "--payload",
        '{"task": 1}',
        "--json",
    )
    assert sent.returncode == 0, sent.stderr
    receipt = json.loads(sent.stdout)
    assert receipt["status"] == "queued" and receipt["queue"] == "bus.high"

    read = msgbus(module_env, "read", b, "--wait", "10", "--json")
    assert read.returncode == 0, read.stderr
    [message] = json.loads(read.stdout)
    assert message["id"] == receipt["id"] and message["from"] == a
    assert message["payload"] == {"task": 1} and message["verified"] is True

    acked = msgbus(module_env, "ack", b, receipt["id"], "--json")
    assert json.loads(acked.stdout)["acked"] == [receipt["id"]]
    status = json.loads(msgbus(module_env, "status", receipt["id"], "--json").stdout)
    assert status["status"] == "acked"
    history = json.loads(msgbus(module_env, "history", a, "--json").stdout)
    assert [h["id"] for h in history] == [receipt["id"]]


def test_read_with_ack_and_plain_text_output(module_env, worker, agents):
    a, b = agents("a"), agents("b")
    msgbus(module_env, "send", "--from", a, "--to", b, "--payload", '"hello"')
    out = msgbus(module_env, "read", b, "--wait", "10", "--ack")
    assert out.returncode == 0
    assert f'command from {a}: "hello"' in out.stdout
    assert msgbus(module_env, "read", b).stdout.strip() == "(no messages)"


def test_subscribe_publish_and_whole_message_from_stdin(module_env, worker, agents):
    a, b = agents("a"), agents("b")
    topic = agents("news")
    assert msgbus(module_env, "subscribe", b, topic, "--types", "event").returncode == 0
    out = msgbus(
        module_env,
        "send",
        "--from",
        a,
        "--message",
        "-",
        stdin=json.dumps({"topic": topic, "type": "event", "payload": [1, 2]}),
    )
    assert out.returncode == 0, out.stderr
    read = wait_for(
        lambda: json.loads(msgbus(module_env, "read", b, "--json").stdout), 10, "topic message"
    )
    assert read[0]["payload"] == [1, 2] and read[0]["topic"] == topic
    assert msgbus(module_env, "unsubscribe", b, topic).stdout.strip() == (
        "removed 1 subscription(s)"
    )


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (
            ["send", "--from", "a", "--to", "b", "--payload", "{oops"],
            None,
            "error: --payload is not valid JSON",
        ),
        (
            ["send", "--from", "a", "--message", "-"],
            "[not json",
            "error: --message is not valid JSON",
        ),
        (["send", "--from", "A!", "--to", "b"], None, "error: invalid agent id: agent id 'A!'"),
        (
            ["send", "--from", "a", "--to", "b", "--priority", "urgent"],
            None,
            "error: invalid message: priority",
        ),
        (["read", "Bad Agent"], None, "error: invalid agent id"),
    ],
)
def test_bad_input_is_one_clear_stderr_line_and_a_nonzero_exit(module_env, args, stdin, message):
    out = msgbus(module_env, *args, stdin=stdin)
    assert out.returncode == 2
    assert out.stderr.startswith(message)
    assert out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr


def test_status_of_an_unknown_message_is_not_found(module_env):
    out = msgbus(module_env, "status", "no-such-id")
    assert out.returncode == 5
    assert "error: no status for message 'no-such-id'" in out.stderr


def test_dlq_commands_list_show_replay_and_purge(fresh_env, agents):
    a, b = agents("a"), agents("b")
    ids = [
        json.loads(
            msgbus(fresh_env, "send", "--from", a, "--to", b, "--ttl", "0.2", "--json").stdout
        )["id"]
        for _ in range(2)
    ]
    listed = wait_for(
        lambda: (lambda r: len(r) == 2 and r)(
            json.loads(msgbus(fresh_env, "dlq", "list", "--json").stdout)
        ),
        10,
        "two dead letters",
    )
    assert {d["id"] for d in listed} == set(ids) and {d["reason"] for d in listed} == {"expired"}
    shown = json.loads(msgbus(fresh_env, "dlq", "show", ids[0], "--json").stdout)
    assert shown["message"]["from"] == a
    assert "reason=expired" in msgbus(fresh_env, "dlq", "list").stdout
    assert json.loads(msgbus(fresh_env, "dlq", "purge", ids[0], "--json").stdout) == {
        "purged": [ids[0]]
    }
    # Past its ttl, a replay could only see it dead-lettered again at once: refused, named.
    broken = fresh_env.start_worker(MESSAGE_BUS_REDIS_URL="redis://127.0.0.1:1/0")
    live = msgbus(fresh_env, "send", "--from", a, "--to", b, "--max-retries", "0", "--json")
    live_id = json.loads(live.stdout)["id"]
    wait_for(lambda: live_id in msgbus(fresh_env, "dlq", "list").stdout, 30, "a live letter")
    broken.stop()
    refused = msgbus(fresh_env, "dlq", "replay", "--all", "--json")
    assert refused.returncode == 5, refused
    assert f"nothing to replay for {ids[1]}: its ttl has passed" in refused.stderr
    assert f"(replayed: {live_id})" in refused.stderr  # the control: a live one goes
    assert [d["id"] for d in json.loads(msgbus(fresh_env, "dlq", "list", "--json").stdout)] == [
        ids[1]
    ]
    nothing = msgbus(fresh_env, "dlq", "replay")
    assert nothing.returncode == 2 and "name the dead letters" in nothing.stderr


def test_the_solo_pool_is_refused_with_the_reason(module_env):
    """Celery's solo pool stalls with late acks and prefetch 1: never start one."""
    by_setting = msgbus(module_env, "worker", MESSAGE_BUS_WORKER_POOL="solo")
    assert by_setting.returncode == 2
    assert by_setting.stderr.startswith(
        "error: invalid setting MESSAGE_BUS_WORKER_POOL: the solo pool is not supported"
    )
    assert "Traceback" not in by_setting.stderr
    by_flag = msgbus(module_env, "worker", "-P", "solo", "-l", "WARNING")
    assert by_flag.returncode == 1
    assert "msgbus worker: the solo pool is not supported" in by_flag.stderr


def test_a_bad_setting_is_named_in_one_line(module_env):
    out = msgbus(module_env, "status", "x", MESSAGE_BUS_WORKER_CONCURRENCY="0")
    assert out.returncode == 2
    assert out.stderr == (
        "error: invalid setting MESSAGE_BUS_WORKER_CONCURRENCY: "
        "Input should be greater than or equal to 1\n"
    )


@pytest.mark.parametrize("since", ["inf", "nan", "-inf", "1e306"])
def test_a_time_that_is_no_number_is_refused_in_one_line(module_env, worker, agents, since):
    """`--since inf` once ended in an OverflowError's traceback."""
    a = agents("a")
    refused = msgbus(module_env, "history", a, "--since", since)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: since: must be a finite number up to 2.53402e+11, got {float(since)}"
    )
    assert msgbus(module_env, "history", a, "--since", "0").returncode == 0  # the control


def test_a_request_timeout_that_would_wait_for_ever_is_refused(bus, agents):
    for timeout in (float("inf"), float("nan"), 0, 1e12):
        with pytest.raises(ValidationError, match="timeout: must be a finite number above 0"):
            bus.request({"from": agents("a"), "to": agents("b")}, timeout=timeout)
    with pytest.raises(RequestTimeout):  # the control: a finite timeout is taken and runs out
        bus.request({"from": agents("a"), "to": agents("b")}, timeout=0.2)


@pytest.mark.parametrize("ids", [5, "abc", [1], ["x" * 257]])
def test_dead_letters_are_chosen_by_a_list_of_ids(bus, ids):
    with pytest.raises(ValidationError, match="invalid choice: ids"):
        bus.replay_dead_letters(ids)
    assert bus.replay_dead_letters(["no-such-letter"]) == []  # the control: a list is taken
