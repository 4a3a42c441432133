"""Per-round table and the training report (Markdown + PNG curves) of a federated run.

Owns how round metrics are summarised and shown; the rounds themselves are run by
``fedavg.py``. matplotlib is imported only when a plot is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PodMetrics:
    loss: float
    accuracy: float
    n_rows: int


@dataclass(frozen=True)
class RoundRecord:
    """Evaluation of the global model after one round, per pod and pooled by rows."""

    round: int
    pods: dict[str, PodMetrics]
    seconds: float

    @property
    def overall(self) -> PodMetrics:
        rows = sum(m.n_rows for m in self.pods.values())
        if rows == 0:
            return PodMetrics(float("nan"), float("nan"), 0)
        return PodMetrics(
            loss=sum(m.loss * m.n_rows for m in self.pods.values()) / rows,
            accuracy=sum(m.accuracy * m.n_rows for m in self.pods.values()) / rows,
            n_rows=rows,
        )


    def summary(self) -> str:
        """One line: the round's pooled loss and accuracy, then each pod's accuracy."""
        o = self.overall
        pods = "  ".join(f"{p}: acc {m.accuracy:.3f}" for p, m in sorted(self.pods.items()))
        return f"round {self.round}: loss {o.loss:.4f} accuracy {o.accuracy:.4f}  [{pods}]  {self.seconds:.1f} s"


@dataclass
class RunReport:
    """What a federated run produced, and the central baseline it is compared with."""

    rounds: list[RoundRecord] = field(default_factory=list)
    central: RoundRecord | None = None  # the baseline evaluated on the same pods' test rows
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """A fixed-width per-round table: loss and accuracy per pod and overall."""
        if not self.rounds:
            return "(no rounds)"
        pods = self._pod_names()
        head = ["round"] + [f"{p} loss/acc" for p in pods] + ["overall loss/acc", "secs"]
        rows = [head]
        for rec in self.rounds + ([self.central] if self.central else []):
            cells = [str(rec.round) if rec is not self.central else "central"]
            cells += [f"{rec.pods[p].loss:.4f} / {rec.pods[p].accuracy:.3f}" if p in rec.pods else "-" for p in pods]
            cells += [f"{rec.overall.loss:.4f} / {rec.overall.accuracy:.3f}", f"{rec.seconds:.1f}"]
            rows.append(cells)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=False)) for r in rows)

    def _pod_names(self) -> list[str]:
        """Every column a round has: a secure run's rounds hold the cohort's means, its last round each pod's."""
        return sorted({pod for record in self.rounds for pod in record.pods})

    def write(self, out_dir: Path) -> Path:
        """Write report.md and curves.png into ``out_dir``; return the report's path."""
        out_dir.mkdir(parents=True, exist_ok=True)
        plot = out_dir / "curves.png"
        self._plot(plot)
        lines = ["# Federated training report", "", "## Per-round evaluation (global model, pods' test splits)", ""]
        lines += ["```", self.table(), "```", ""]
        if self.central and self.rounds:
            final = self.central.overall
            fed = self.rounds[-1].overall
            lines += [
                "## Central baseline (same model and epochs, pooled data, same test rows)",
                "",
                f"- central: loss {final.loss:.4f}, accuracy {final.accuracy:.4f} on {final.n_rows} test rows",
                f"- federated: loss {fed.loss:.4f}, accuracy {fed.accuracy:.4f} on {fed.n_rows} test rows",
                f"- accuracy gap: {100 * (final.accuracy - fed.accuracy):+.2f} points",
                "",
            ]
        lines += [f"- {n}" for n in self.notes]
        lines += ["", f"![curves]({plot.name})", ""]
        report = out_dir / "report.md"
        report.write_text("\n".join(lines), encoding="utf-8")
        return report

    def _plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        xs = [r.round for r in self.rounds]
        for pod in self._pod_names():
            held = [r for r in self.rounds if pod in r.pods]
            ax_loss.plot([r.round for r in held], [r.pods[pod].loss for r in held], marker=".", alpha=0.6, label=pod)
            ax_acc.plot([r.round for r in held], [r.pods[pod].accuracy for r in held], marker=".", alpha=0.6, label=pod)
        ax_loss.plot(xs, [r.overall.loss for r in self.rounds], marker="o", color="black", label="federated (all pods)")
        ax_acc.plot(
            xs, [r.overall.accuracy for r in self.rounds], marker="o", color="black", label="federated (all pods)"
        )
        if self.central:
            ax_loss.axhline(self.central.overall.loss, linestyle="--", color="red", label="central (pooled data)")
            ax_acc.axhline(self.central.overall.accuracy, linestyle="--", color="red", label="central (pooled data)")
        ax_loss.set(title="test loss", xlabel="round", xticks=xs)
        ax_acc.set(title="test accuracy", xlabel="round", xticks=xs)
        ax_acc.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
