"""Claude Code in an interactive session (not `-p`), under tmux, against the stand-in model.

Channels load only in interactive sessions. A scratch HOME is pre-filled so the session
goes straight to its prompt: onboarding done, the stand-in's API key approved (Claude Code
keeps the key's last 20 characters), the working folder trusted. Nothing of the machine's
own Claude Code settings or login reaches it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from tests.support import claude_code

API_KEY = "sk-ant-stub-not-a-real-key"  # the one claude_env() gives


def prepare_home(home: Path, workdir: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    state = {
        "hasCompletedOnboarding": True,
        "customApiKeyResponses": {"approved": [API_KEY[-20:]], "rejected": []},
        "projects": {
            str(workdir): {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}
        },
    }
    (home / ".claude.json").write_text(json.dumps(state))


class TmuxClaude:
    """`claude ARGS` in a detached tmux session of its own; `close()` ends that session."""

    def __init__(self, claude: Path, args: Sequence[str], base_url: str, workdir: Path) -> None:
        self.name = f"msgbus-{uuid.uuid4().hex[:10]}"
        home = workdir / "home"
        prepare_home(home, workdir)
        env = claude_code.claude_env(base_url, home) | {"TERM": "xterm-256color"}
        command = " ".join(
            [
                "env",
                "-i",
                *(shlex.quote(f"{k}={v}") for k, v in env.items()),
                shlex.quote(str(claude)),
                *(shlex.quote(a) for a in args),
            ]
        )
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.name, "-x", "200", "-y", "50", "-c"]
            + [str(workdir), command],
            check=True,
        )

    def screen(self) -> str:
        done = subprocess.run(
            ["tmux", "capture-pane", "-t", self.name, "-p"], capture_output=True, text=True
        )
        return done.stdout

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)
