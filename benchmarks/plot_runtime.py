"""The runtime benchmark's figure: einsum GPT curves on top, every model's exact-migration ratios below."""

from __future__ import annotations

from pathlib import Path

_STYLE = {"legacy": "o-", "exact": "s-", "all": "^--", "reference": "x:"}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    einsum = results.get("einsum_gpt", [])
    panels = [("forward", "seconds", "einsum GPT: forward time (s)"),
              ("forward+backward", "seconds", "einsum GPT: forward+backward time (s)"),
              ("forward", "peak_bytes", "einsum GPT: forward peak memory (MiB)"),
              ("forward+backward", "peak_bytes", "einsum GPT: forward+backward peak memory (MiB)")]
    for ax, (mode, field, title) in zip(axes.flat, panels):
        _curves(ax, einsum, mode, field, title)
    _ratios(axes.flat[4], results, "seconds", "forward speed-up, legacy / exact migration")
    _ratios(axes.flat[5], results, "peak_bytes", "forward peak memory, legacy / exact migration")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def _value(m, field: str):
    value = getattr(m, field)
    return None if value is None else (value / 2**20 if field == "peak_bytes" else value)


def _curves(ax, measurements, mode: str, field: str, title: str) -> None:
    for label in dict.fromkeys(m.label for m in measurements):
        points = [(m.length, _value(m, field)) for m in measurements if m.label == label and m.mode == mode]
        points = [(t, v) for t, v in points if v]
        if points:
            ax.plot(*zip(*points), _STYLE.get(label, ".-"), label=label)
    _axes(ax, title)


def _ratios(ax, results: dict, field: str, title: str) -> None:
    for stem, measurements in results.items():
        by = {(m.label, m.length): _value(m, field) for m in measurements if m.mode == "forward"}
        points = [(t, by[("legacy", t)] / by[("exact", t)]) for (label, t) in by
                  if label == "exact" and by[("exact", t)] and by.get(("legacy", t))]
        if points:
            ax.plot(*zip(*points), "o-", label=stem)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    _axes(ax, title)


def _axes(ax, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
