"""Worker-agent handlers share their process; a redelivered (suspect) one runs alone."""

from __future__ import annotations

import threading

from workers.quarantine import Quarantine

BLOCKED = 0.2  # how long a must-not-happen check watches


def run_in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_ordinary_handlers_run_side_by_side():
    q = Quarantine()
    both_in = threading.Barrier(2, timeout=5)

    def handler():
        with q.shared():
            both_in.wait()  # fails with BrokenBarrierError unless both are inside at once

    threads = [run_in_thread(handler) for _ in range(2)]
    for t in threads:
        t.join(5)
    assert not both_in.broken


def test_a_suspect_waits_for_running_handlers_then_runs_alone():
    q = Quarantine()
    release_first = threading.Event()
    first_in, suspect_in, later_in = threading.Event(), threading.Event(), threading.Event()
    beside_suspect: list[bool] = []

    def first():
        with q.shared():
            first_in.set()
            release_first.wait(5)

    def suspect():
        with q.alone():
            suspect_in.set()
            beside_suspect.append(later_in.wait(BLOCKED))

    def later():
        with q.shared():
            later_in.set()

    run_in_thread(first)
    assert first_in.wait(5)
    suspect_thread = run_in_thread(suspect)
    assert not suspect_in.wait(BLOCKED), "the suspect ran beside a running handler"
    later_thread = run_in_thread(later)  # arrives while the suspect waits: goes after it
    release_first.set()
    assert suspect_in.wait(5)
    suspect_thread.join(5)
    later_thread.join(5)
    assert beside_suspect == [False], "an ordinary handler ran beside the suspect"
    assert later_in.is_set()


def test_enter_picks_the_mode_from_the_redelivered_flag():
    q = Quarantine()
    with q.enter(redelivered=True):
        assert q.suspect_running
    with q.enter(redelivered=False):
        assert q.running == 1 and not q.suspect_running


def test_a_redelivery_of_a_message_running_here_waits_for_that_run_only():
    """The connection was lost, not the process: the message's first run goes on here. Its
    redelivery used to wait, as a suspect, for every handler of the process (a long one
    stalled the whole agent), and counted as a crash."""
    q = Quarantine()
    release_first, release_other = threading.Event(), threading.Event()
    first_in, other_in, again_in = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def run(message_id, entered, release, redelivered=False):
        with q.enter(redelivered, message_id) as suspect:
            seen.append(suspect)
            entered.set()
            if release is not None:
                release.wait(5)

    first = run_in_thread(lambda: run("m1", first_in, release_first))
    other = run_in_thread(lambda: run("m2", other_in, release_other))  # a long neighbour
    assert first_in.wait(5) and other_in.wait(5)
    again = run_in_thread(lambda: run("m1", again_in, None, redelivered=True))
    assert not again_in.wait(BLOCKED), "the redelivery ran beside its own first run"
    release_first.set()
    assert again_in.wait(5), "the redelivery waited for more than its own first run"
    assert seen[-1] is False  # no suspect: nothing died
    release_other.set()
    for thread in (first, other, again):
        thread.join(5)
    with q.enter(True, "m3") as suspect:  # the control: a redelivery of none running here
        assert suspect and q.suspect_running
