"""A sender process that SIGKILLs itself at a named step of one send (tests of what the
bus does about a sender that dies mid-send)."""

from __future__ import annotations

import signal
import subprocess
import sys

import orjson

# Runs one send and SIGKILLs itself at the step named: "publish" (the broker never got the
# task), "dispatch" (delivered by the sender itself, its handler's task never published) or
# "commit" (all of it done but the confirm's record).
KILLED_SENDER = """
import json, os, signal, sys
from bus import MessageBus
bus = MessageBus()
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
step, message = sys.argv[1], json.loads(sys.argv[2])
if step == "publish":
    bus.runtime.broker.publish = die
elif step == "commit":
    bus.runtime.admission.commit = die
else:
    bus.runtime.deliverer.dispatch = die
bus.send_message(message)
print("sent", flush=True)
"""


def killed_send(env, step, message):
    done = subprocess.run(
        [sys.executable, "-c", KILLED_SENDER, step, orjson.dumps(message).decode()],
        env=env.env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
