"""PNG plots drawn from a bench results JSON (needs the `bench` extra: matplotlib)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("bench: plots need matplotlib: pip install -e '.[bench]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_fps(doc: dict, out: Path) -> Path:
    plt = _pyplot()
    keys = list(doc["results"])
    med = [doc["results"][k]["fps"]["median"] for k in keys]
    lo = [m - doc["results"][k]["fps"]["min"] for k, m in zip(keys, med)]
    hi = [doc["results"][k]["fps"]["max"] - m for k, m in zip(keys, med)]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(keys) + 1.5))
    ax.barh(keys, med, xerr=[lo, hi], color="#4c72b0", capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel("frames per second (median; bars span min–max)")
    ax.set_title("fps per scenario")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_stage_time(doc: dict, out: Path) -> Path | None:
    plt = _pyplot()
    cases = [(k, r["stages"]) for k, r in doc["results"].items() if r.get("stages")]
    if not cases:
        return None
    fig, axes = plt.subplots(len(cases), 1, figsize=(8, 2.2 * len(cases) + 0.5), squeeze=False)
    for ax, (key, stages) in zip(axes[:, 0], cases):
        names = [s["name"] for s in stages]
        busy = [s["busy_s"] for s in stages]
        wait_in = [s["wait_in_s"] for s in stages]
        wait_out = [s["wait_out_s"] for s in stages]
        ax.barh(names, busy, color="#55a868", label="busy")
        ax.barh(names, wait_in, left=busy, color="#c4c4c4", label="waiting for input")
        ax.barh(names, wait_out, left=[b + w for b, w in zip(busy, wait_in)], color="#dd8452",
                label="blocked by output (backpressure)")
        ax.invert_yaxis()
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("seconds")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_queues(doc: dict, out: Path, case: str | None = None) -> Path | None:
    plt = _pyplot()
    candidates = [k for k, r in doc["results"].items() if r.get("timeline")]
    if case is None and not candidates:
        return None
    key = case or max(candidates, key=lambda k: len(doc["results"][k]["timeline"]))
    timeline = doc["results"][key]["timeline"]
    queues = sorted({q for point in timeline for q in point["queues"]})
    fig, ax = plt.subplots(figsize=(8, 3.5))
    t = [p["t"] for p in timeline]
    for q in queues:
        ax.step(t, [p["queues"].get(q, 0) for p in timeline], where="post", marker=".",
                label=f"queue into {q}")
    ax.set_xlabel("seconds")
    ax.set_ylabel("frames waiting")
    ax.set_title(f"queue occupancy over time: {key}\n(a full queue sits in front of the bottleneck)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_all(doc: dict, stem: Path) -> list[Path]:
    """The plots a results file has data for; a plot of that name from an earlier run that
    this one has no data for is removed, so every PNG beside the JSON is of this run."""
    made = []
    for suffix, plot in (("-fps.png", plot_fps), ("-stages.png", plot_stage_time), ("-queues.png", plot_queues)):
        path = stem.with_name(stem.name + suffix)
        if plot(doc, path) is not None:
            made.append(path)
        elif path.exists():
            path.unlink()
    return made
