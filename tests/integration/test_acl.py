"""The ACL as it is now, and what it grants LLM agents.

- A change takes effect without a restart: the bus reads its ACL file again when the file
  changes. Before, the policy was read once per process, so an admin taken out of the file
  kept reading every agent's history (and the dead letters) until every process was
  restarted, while a revoked token ended at once.
- An LLM agent names another agent as reply_to only with the ACL's leave."""

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


def test_an_llm_agent_names_another_as_reply_to_only_with_the_acls_leave(
    module_env, agents, tmp_path
):
    """A worker agent answers to the request's reply_to, as itself and within its own share
    of that inbox: an agent asking it in another's name (reply_to: alice) filled alice's
    inbox with answers it chose and locked alice's own requests out. Trusted code keeps
    the right; an LLM agent needs agents.<id>.reply_to."""
    mallory, alice, coordinator = agents("mallory"), agents("alice"), agents("coordinator")
    acl = tmp_path / "acl.yaml"
    write(acl, f"agents:\n  {mallory}:\n    reply_to: [{coordinator}]\n")
    bus = module_env.bus(acl_file=acl)
    llm = bus.as_agent(mallory, front_door=True)
    request = {"to": "echo", "type": "request", "payload": 1}
    with pytest.raises(AuthError, match=f"{mallory} may not have replies sent to {alice}"):
        llm.send({**request, "reply_to": alice})
    assert bus.history(mallory) == []
    # The controls: itself, whom the ACL names, and trusted code.
    assert llm.send({**request, "reply_to": mallory}).status.value == "queued"
    assert llm.send({**request, "reply_to": coordinator}).status.value == "queued"
    trusted = bus.send_message({"from": mallory, **request, "reply_to": alice})
    assert trusted.status.value == "queued"
    bus.close()
