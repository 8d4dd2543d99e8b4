"""Run reports: a loss-curve PNG from metrics.jsonl and a markdown report per run."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from .io import atomic_path, atomic_write_text, complete_lines


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl, without a torn last line a killed run leaves; [] if there is none."""
    return [json.loads(ln) for ln in complete_lines(path)] if Path(path).exists() else []


def plot_losses(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path:
    """Train loss (per step, with a running mean) and validation loss(es) against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [r for r in rows if any(k.startswith("val") for k in r)]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="train (per step)")
        w = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - w + 1): i + 1]) / min(i + 1, w) for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", lw=1.5, label=f"train (mean of {w})")
    keys = sorted({k for r in evals for k in r if k.startswith("val")})
    for i, k in enumerate(keys):
        pts = [(r["step"], r[k]) for r in evals if k in r]
        style = dict(lw=2.0, color="tab:red") if k == "val_loss" else dict(lw=1.0, ls="--", color=f"C{i + 2}")
        ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=k, **style)
    ax.set_xlabel("step")
    ax.set_ylabel("cross entropy (nats/token)")
    ax.set_title(title or Path(metrics_path).parent.name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, png_path)


def save_figure(fig, png_path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return png_path


def md_table(rows: Iterable[dict[str, Any]], columns: list[str] | None = None) -> str:
    rows = list(rows)
    if not rows:
        return "(none)\n"
    columns = columns or list(rows[0])

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out) + "\n"


def environment() -> dict[str, str]:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "device": dev,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def write_markdown(path: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """Write `# title` and `## heading` sections atomically."""
    path = Path(path)
    atomic_write_text(path, f"# {title}\n\n" + "\n".join(f"## {h}\n\n{body.rstrip()}\n" for h, body in sections))
    return path
