"""Dead letters: `msgbus dlq list|show|replay|purge`, as the operator."""

from __future__ import annotations

from typing import Any

import click

from msgbus.console import F, emit, json_option, operator


@click.group()
def dlq() -> None:
    """Dead letters: list, show, replay, purge."""


def _dead_text(d: Any) -> str:
    return f"{d.id} {d.queue} reason={d.reason} attempts={d.attempts} replays={d.replays}" + (
        f" error={d.error}" if d.error else ""
    )


@dlq.command("list")
@click.option("--limit", default=100, show_default=True)
@json_option
def dlq_list(limit: int, as_json: bool) -> None:
    """List dead letters (does not consume them)."""
    letters = operator().dead_letters(limit=limit)
    if not as_json:
        for d in letters:
            d.message = None
    emit(letters, as_json, lambda ds: "\n".join(_dead_text(d) for d in ds) or "(none)")


@dlq.command("show")
@click.argument("message_id")
@json_option
def dlq_show(message_id: str, as_json: bool) -> None:
    """Show one dead letter with its message."""
    emit(operator().dead_letter(message_id), as_json)


def _chosen(fn: F) -> F:
    """IDS of dead letters or `--all` of them, and `--json` (what replay and purge take)."""
    fn = json_option(fn)
    fn = click.option("--all", "all_", is_flag=True)(fn)
    return click.argument("ids", nargs=-1)(fn)


@dlq.command("replay")
@_chosen
def dlq_replay(ids: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Replay dead letters to their priority queues."""
    replayed = operator().replay_dead_letters(list(ids), all=all_)
    emit({"replayed": replayed}, as_json, lambda r: f"replayed {len(r['replayed'])}")


@dlq.command("purge")
@_chosen
def dlq_purge(ids: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Delete dead letters for good."""
    purged = operator().purge_dead_letters(list(ids), all=all_)
    emit({"purged": purged}, as_json, lambda r: f"purged {len(r['purged'])}")
