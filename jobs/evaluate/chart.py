"""win_rate.png: the win / tie / loss split as one bar, with the win rate and its interval over it."""

from __future__ import annotations

from pathlib import Path

from alpaca_operator.api.evaluation import Score

_COLOURS = {"win": "#2e7d32", "tie": "#9e9e9e", "loss": "#c62828"}


def draw(score: Score, path: Path, *, candidate: str, baseline: str, judge: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display in a pod
    import matplotlib.pyplot as plt

    total = score.wins + score.ties + score.losses
    fig, ax = plt.subplots(figsize=(8, 3), dpi=120)
    left = 0.0
    for name, count in (("win", score.wins), ("tie", score.ties), ("loss", score.losses)):
        share = count / total
        ax.barh([0], [share], left=left, height=0.5, color=_COLOURS[name], label=f"{name}: {count}")
        if share >= 0.08:
            ax.text(left + share / 2, 0, f"{name}\n{share:.0%}", ha="center", va="center", color="white", fontsize=9)
        left += share
    low, high = score.win_rate_low, score.win_rate_high
    ax.errorbar([score.win_rate], [0.45], xerr=[[score.win_rate - low], [high - score.win_rate]], fmt="o", color="black",
                capsize=5, label=f"win rate {score.win_rate:.2f} (95% CI {low:.2f}-{high:.2f})")
    if score.length_controlled_win_rate is not None:
        ax.plot([score.length_controlled_win_rate], [0.45], marker="D", color="#1565c0", linestyle="none",
                label=f"length-controlled {score.length_controlled_win_rate:.2f}")
    ax.axvline(0.5, color="black", linewidth=0.8, linestyle=":")
    ax.set_xlim(-0.02, 1.02)  # room for a marker at either end
    ax.set_ylim(-0.4, 0.7)
    ax.set_yticks([])
    ax.set_xlabel("share of tasks (ties count half in the win rate)")
    ax.set_title(f"{candidate} vs {baseline}, judged by {judge} ({total} tasks)", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
