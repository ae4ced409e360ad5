"""An ACL change takes effect without a restart: the bus reads its ACL file again when the
file changes. Before, the policy was read once per process, so an admin taken out of the
file kept reading every agent's history (and the dead letters) until every process was
restarted, while a revoked token ended at once."""

from __future__ import annotations

import os

import pytest

from bus.errors import AuthError
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def write(path, text):
    """As an operator's tool writes it: a new file put in place."""
    partial = path.with_suffix(".new")
    partial.write_text(text)
    os.replace(partial, path)


def test_an_admin_taken_out_of_the_acl_file_loses_the_right_without_a_restart(
    module_env, agents, tmp_path
):
    acl = tmp_path / "acl.yaml"
    ops, mallory, bob = agents("ops"), agents("mallory"), agents("bob")
    write(acl, f"admins: [{ops}, {mallory}]\n")
    bus = module_env.bus(acl_file=acl)
    bus.send_message({"from": ops, "to": bob, "payload": "for bob"})
    assert bus.as_agent(mallory).history(of=bob) is not None  # an admin, for now

    write(acl, f"admins: [{ops}]\n")

    def refused() -> bool:
        try:
            bus.as_agent(mallory).history(of=bob)
        except AuthError:
            return True
        return False

    wait_for(refused, 10, "the ACL change to take effect")
    assert bus.as_agent(ops).history(of=bob) is not None  # the control: still an admin

    # A file that no longer parses keeps the last good policy (and says so in the log).
    write(acl, "admins: [unclosed\n")
    bus.guard._policy_checked = float("-inf")  # look at the file now
    assert bus.as_agent(ops).history(of=bob) is not None
    assert refused()
    bus.close()
