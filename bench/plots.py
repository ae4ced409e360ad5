"""Charts of a `msgbus bench` run (PNG, matplotlib): `msgbus bench --plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MS = 1000.0


def require_matplotlib() -> None:
    try:
        # lazy: matplotlib is the optional [bench] extra, needed only for --plot
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            "error: --plot needs matplotlib: pip install 'agent-message-bus[bench]'"
        ) from exc


def save_all(result: dict[str, Any], samples: dict[str, Any], folder: Path) -> list[Path]:
    # lazy: matplotlib is the optional [bench] extra, needed only for --plot
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    saved = []
    if "raw_drain_msgs_per_s" in result:
        saved.append(_throughput(result, folder / "throughput.png"))
    for rate in (200, 500):
        if f"latency_{rate}" in samples:
            saved.append(_latency_cdf(rate, samples[f"latency_{rate}"], folder))
    if "priority" in samples:
        saved.append(_priority(samples["priority"], folder / "priority.png"))
    return saved


def _throughput(result: dict[str, Any], path: Path) -> Path:
    # lazy: matplotlib is the optional [bench] extra, needed only for --plot
    import matplotlib.pyplot as plt

    rows = [
        ("raw Celery\nno-op drain", result["raw_drain_msgs_per_s"]),
        ("bus drain\n(single sends)", result.get("drain_msgs_per_s")),
        ("bus drain\n(send_batch of 100)", result.get("batch_msgs_per_s")),
    ]
    rows = [(name, s) for name, s in rows if s]
    fig, ax = plt.subplots(figsize=(7, 4))
    medians = [s["median"] for _, s in rows]
    errors = [
        [s["median"] - s["min"] for _, s in rows],
        [s["max"] - s["median"] for _, s in rows],
    ]
    ax.bar([name for name, _ in rows], medians, yerr=errors, capsize=6, color="#4c72b0")
    for i, value in enumerate(medians):
        ax.annotate(f"{value:.0f}", (i, value), ha="center", va="bottom")
    ax.set_ylabel("messages/s (median, min-max)")
    ax.set_title("Drain throughput, same broker and worker layout")
    return _save(fig, path)


def _latency_cdf(rate: int, runs: dict[str, list[float]], folder: Path) -> Path:
    # lazy: matplotlib is the optional [bench] extra, needed only for --plot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in (
        ("bus: send -> in inbox", runs["bus"]),
        ("raw Celery: send -> task start", runs["raw"]),
    ):
        ordered = sorted(v * MS for v in values)
        n = len(ordered)
        ax.plot(ordered, [(i + 1) / n for i in range(n)], label=f"{name} (n={n})")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log scale)")
    ax.set_ylabel("fraction of messages")
    ax.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
    ax.set_title(f"Latency at a steady {rate} msg/s")
    ax.legend()
    return _save(fig, folder / f"latency_{rate}.png")


def _priority(runs: dict[str, list[float]], path: Path) -> Path:
    # lazy: matplotlib is the optional [bench] extra, needed only for --plot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(runs)
    ax.boxplot([[v * MS for v in runs[n]] for n in names], whis=(0, 100))
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("critical message wait, ms")
    ax.set_title("Critical messages sent one at a time")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    # lazy: matplotlib is the optional [bench] extra, needed only for --plot
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
