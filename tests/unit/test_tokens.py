"""The tokens file under writers running at once: `msgbus token revoke` beside a `msgbus
token create` (two shells, a provisioning script) must neither bring a revoked token back
nor lose a created one, nor leave the file unreadable."""

from __future__ import annotations

import multiprocessing

import pytest

from bus.tokens import TokenFile

TRIALS = 40


def _revoke(path, start):
    start.wait()
    TokenFile(path).revoke(agent="victim")


def _create(path, start):
    start.wait()
    TokenFile(path).create("other")


def test_a_revoke_and_a_create_at_once_both_take_effect(tmp_path):
    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "tokens.json"
    for trial in range(TRIALS):
        path.unlink(missing_ok=True)
        doomed = TokenFile(path).create("victim")
        start = ctx.Barrier(2)
        procs = [ctx.Process(target=f, args=(path, start)) for f in (_revoke, _create)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(20)
        assert [p.exitcode for p in procs] == [0, 0], f"trial {trial}"
        tokens = TokenFile(path)
        assert tokens.agent_for(doomed) is None, f"trial {trial}: the revoked token is valid"
        assert tokens.agents() == ["other"], f"trial {trial}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json", "tokens.json.lock"]


def test_a_reader_sees_each_write_at_once(tmp_path):
    path = tmp_path / "tokens.json"
    reader, writer = TokenFile(path), TokenFile(path)
    token = writer.create("alice")
    assert reader.agent_for(token) == "alice"
    writer.revoke(token=token)
    assert reader.agent_for(token) is None  # the same second, the same size class
    again = writer.create("alice")
    assert reader.agent_for(again) == "alice" and reader.agent_for(token) is None


def test_a_revoke_of_nothing_changes_nothing(tmp_path):
    path = tmp_path / "tokens.json"
    tokens = TokenFile(path)
    kept = tokens.create("alice")
    before = path.read_bytes()
    with pytest.raises(Exception, match="no matching token"):
        tokens.revoke(agent="nobody")
    assert path.read_bytes() == before and tokens.agent_for(kept) == "alice"
