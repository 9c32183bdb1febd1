"""Plot benchmark results: time per step (secure vs plaintext) and communication per network (Agg backend, PNG).

    python -m benchmarks.plot results/quick.json [-o results/quick.png]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _label(r: dict) -> str:
    return f"{r['net']}\n{r['dataset']}\n{r['mode']} b{r['batch']}"


def plot_rows(rows: list[dict], path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("status") == "ok"]
    path = Path(path)
    n = max(len(rows), 1)
    has_secure = any(r.get("secure_s") for r in rows)
    panels = 2 if has_secure else 1
    fig, axes = plt.subplots(panels, 1, figsize=(max(7.0, 1.5 * n), 4.6 * panels), squeeze=False)
    axes = axes[:, 0]
    xs = range(len(rows))
    labels = [_label(r) for r in rows]

    has_crypten = any(r.get("crypten_s") for r in rows)

    def bars(ax, series):
        """series: [(label, values, color)] drawn side by side around each x."""
        k = len(series)
        width = 0.8 / k
        for j, (label, vals, color) in enumerate(series):
            ax.bar([x + (j - (k - 1) / 2) * width for x in xs], vals, width, label=label, color=color)

    ax = axes[0]
    series = []
    if has_secure:
        series.append(("secure (3 parties)", [r.get("secure_s") or 0 for r in rows], "#3b6ea5"))
    if has_crypten:
        series.append(("CrypTen (3 parties)", [r.get("crypten_s") or 0 for r in rows], "#b5483b"))
    series.append(("plaintext torch", [r.get("plain_s") or 0 for r in rows], "#e39b3b"))
    bars(ax, series)
    if any(r.get("modeled_s") for r in rows):
        ax.scatter(list(xs), [r.get("modeled_s") or 0 for r in rows], marker="_", s=400, color="black",
                   label="modeled: + rounds x RTT", zorder=3)
    first = -(len(series) - 1) / 2 * (0.8 / len(series))  # x offset of the secure bar
    for x, r in zip(xs, rows):
        if r.get("slowdown"):
            ax.annotate(f"{r['slowdown']:,.0f}x", (x + first, r["secure_s"]), ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per step (log)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_title("time per step" + (" (labels: slowdown vs plaintext)" if has_secure else ""))
    ax.legend(fontsize=8)

    if has_secure:
        ax = axes[1]
        series = [("per party (max)", [(r.get("bytes_max_party") or 0) / 1e6 for r in rows], "#5a9e6f"),
                  ("total (3 parties)", [(r.get("bytes_total") or 0) / 1e6 for r in rows], "#9c5fa8")]
        if has_crypten:
            series.append(("CrypTen total (as it counts)", [(r.get("crypten_bytes_total") or 0) / 1e6 for r in rows],
                           "#b5483b"))
        bars(ax, series)
        for x, r in zip(xs, rows):
            ax.annotate(f"{r.get('rounds', 0):,} rnd", (x, (r.get("bytes_total") or 0) / 1e6), ha="center",
                        va="bottom", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("MB sent per step (log)")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title("communication per step (labels: rounds)")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot")
    p.add_argument("json", help="a results JSON written by benchmarks.run")
    p.add_argument("-o", "--out", default=None, help="PNG path (default: beside the JSON)")
    a = p.parse_args(argv)
    data = json.loads(Path(a.json).read_text())
    meta = data.get("meta", {})
    out = Path(a.out) if a.out else Path(a.json).with_suffix(".png")
    plot_rows(data["rows"], out, title=f"{meta.get('exp', '')} (net: {meta.get('net_mode', '')})")
    print(out)


if __name__ == "__main__":
    main()
