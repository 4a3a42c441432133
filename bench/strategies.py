"""Benchmark: federated strategies on the demo's label-skewed split, accuracy per round against central training.

The demo's three pods (the Adult table split by marital status, ``demo.scenario.prepare_sites``), its model,
selection (hashed categories, cohort-pooled scaling) and settings (batch 128, lr 5e-3, one epoch per round),
run in this process: each pod's round is the pod's own engine on its own prepared rows (``fit_local``: the
same preparation, Trainer, FedProx term and SCAFFOLD correction as a sandboxed pod), the server step is the
modeller's (``modeller.strategies``), SCAFFOLD's pod-side arithmetic is the agent's (``training.control``).
The rounds' transport (hub, sandbox, secure aggregation) is left out: it does not change the numbers (the
secure sum equals the plain weighted mean within 1/precision per pod, ``tests/e2e/test_secure_fedavg.py``),
and it is what ``bench.rounds`` times. Each round's model is scored as FedAvg scores it: the next round's
train tasks evaluate the incoming model on each pod's test split before training (``evaluate_first``);
overall = test-row-weighted mean. Central: the demo's baseline (the same model for rounds x epochs epochs on
the pods' training and validation rows pooled), scored on the same test rows. Goal: the best strategy within
1 point of central. SCAFFOLD's control variates assume SGD steps (a pod refuses it for a model stepping
with Adam), so it runs the demo's network stepped by SGD (``AdultMLPSGD``, lr 0.1), beside FedAvg of that
same model. Writes ``bench/strategies.png`` (``strategies-smoke.png`` at the smoke size): one curve per
strategy, central as a line.

    python -m bench.strategies [--small] [--json]
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from bench.cli import parser_for, show
from pod_agent.agent.stats import schema_stats
from pod_agent.config import DatasourceSection
from pod_agent.data import open_datasource
from pod_agent.data.task_input import plan_datastructure
from pod_agent.demo.federation import PodSite
from pod_agent.demo.scenario import MODEL_CLASS, MODEL_SOURCE, TARGET, central_fit, prepare_sites
from pod_agent.modeller.fedavg import apply_mean_update, pooled_moments
from pod_agent.modeller.strategies import ServerControl, ServerOptimizer, Strategy, robust_mean, strategy_named
from pod_agent.policy import effective_steps
from pod_agent.protocol import DataSelection, Hyperparameters, ModelRef, model_from_file
from pod_agent.training import control_correction, control_step, fit_local, initial_weights

PLOT, SMALL_PLOT = Path(__file__).with_name("strategies.png"), Path(__file__).with_name("strategies-smoke.png")
HYPER = Hyperparameters(epochs=1, batch_size=128, learning_rate=5e-3, seed=42)
FULL_ROUNDS = 5
# Flower's defaults where they suit a pod-side Adam at lr 5e-3; the server steps below are the tuned ones
# (Flower's FedAdam eta 0.1 moves every weight by ~0.1 a round, far past what one epoch of local Adam moves it).
FULL_STRATEGIES: tuple[Strategy, ...] = (
    strategy_named("fedavg"),
    replace(strategy_named("fedavgm", momentum=0.9, eta=0.5), name="fedavgm(0.9, eta .5)"),
    replace(strategy_named("fedadam", eta=0.01), name="fedadam(eta .01)"),
    strategy_named("fedyogi"),
    replace(strategy_named("fedadagrad", eta=0.01), name="fedadagrad(eta .01)"),
    replace(strategy_named("fedprox", proximal_mu=0.01), name="fedprox(mu .01)"),
    strategy_named("median"),
    strategy_named("trimmed-mean"),
    # SCAFFOLD's control variates assume SGD steps (the pods refuse it for an Adam model): it runs the demo's
    # network stepped by SGD (AdultMLPSGD) at lr 0.1, beside FedAvg of that same model for the comparison.
    replace(strategy_named("scaffold", eta_l=0.1), name="scaffold(SGD lr .1)"),
    replace(strategy_named("fedavg", eta_l=0.1), name="fedavg(SGD lr .1)"),
)
SMALL_STRATEGIES = (FULL_STRATEGIES[0], FULL_STRATEGIES[2], FULL_STRATEGIES[8])
SGD_CLASS = "AdultMLPSGD"
SMALL_ROWS, SMALL_ROUNDS = 3000, 1
# Each process holds torch, Lightning and a pod's prepared rows (~1.5 GB at the full size).
MAX_PROCESSES = 5


@dataclass
class _Pod:
    site: PodSite
    section: DatasourceSection
    local_control: dict[str, np.ndarray] | None = None
    scores: list[tuple[float, int]] = field(default_factory=list)


def run(small: bool) -> dict[str, Any]:
    _quiet()
    rounds = SMALL_ROUNDS if small else FULL_ROUNDS
    strategies = SMALL_STRATEGIES if small else FULL_STRATEGIES
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-strategies-") as tmp:
        root = Path(tmp)
        sites = prepare_sites(root / "data", first_rows=SMALL_ROWS if small else None)
        model = model_from_file(MODEL_SOURCE, style="lightning", class_name=MODEL_CLASS, name="adult-mlp")
        sections = [DatasourceSection(path=s.data, force_stypes=s.force_stypes) for s in sites]
        selection = _cohort_selection(sections)
        if small:  # in this process: a worker's start-up (torch, Lightning) would cost more than the smoke's training
            curves = {s.name: _federated(s, model, sites, sections, selection, rounds, root) for s in strategies}
            central = _central(model, sites, sections, selection, rounds, root)
        else:  # a process per strategy and one for central training, each with one torch thread as a pod has
            with ProcessPoolExecutor(min(len(strategies) + 1, MAX_PROCESSES), mp_context=get_context("spawn")) as pool:
                runs = {
                    s.name: pool.submit(_federated, s, model, sites, sections, selection, rounds, root)
                    for s in strategies
                }
                central_run = pool.submit(_central, model, sites, sections, selection, rounds, root)
                curves = {name: run.result() for name, run in runs.items()}
                central = central_run.result()
    best = max(curves, key=lambda name: curves[name][-1])
    gap = central - curves[best][-1]
    result = {
        "rounds": rounds, "rows": SMALL_ROWS if small else 48_842, "central_accuracy": central,
        "accuracy_per_round": curves, "final": {name: curve[-1] for name, curve in curves.items()},
        "best": best, "best_gap_points": 100 * gap, "seconds": time.monotonic() - started,
        "goal": "best strategy within 1 point of central", "ok": gap <= 0.01,
    }
    _plot(result, SMALL_PLOT if small else PLOT)
    return result


def _cohort_selection(sections: list[DatasourceSection]) -> DataSelection:
    """The demo's selection with the cohort's pooled scaling, from each pod's schema-stats facts."""
    stats = []
    for section in sections:
        ds = open_datasource(section)
        stats.append(schema_stats(ds, ds.schema())[0])
    return DataSelection(target=TARGET, categorical_encoding="hashed", scaling=pooled_moments(stats))


def _federated(
    strategy: Strategy, model: ModelRef, sites: list[PodSite], sections: list[DatasourceSection],
    selection: DataSelection, rounds: int, root: Path,
) -> list[float]:
    """Overall test accuracy of the global model after each round (round 0: the initial model excluded)."""
    _quiet()
    pods = [_Pod(site, section) for site, section in zip(sites, sections, strict=True)]
    hyper = HYPER if strategy.eta_l is None else HYPER.model_copy(update={"learning_rate": strategy.eta_l})
    if strategy.eta_l is not None:  # the SGD pair (see FULL_STRATEGIES)
        model = model.model_copy(update={"class_name": SGD_CLASS})
    ds = open_datasource(sections[0])
    structure = plan_datastructure(ds.schema(), selection, share_categories=False)
    weights = {n: a.astype(np.float32) for n, a in initial_weights(model, datastructure=structure,
                                                                    hyperparameters=hyper).items()}
    optimizer = ServerOptimizer(strategy)
    control = ServerControl(weights) if strategy.scaffold else None
    curve: list[float] = []
    for round_index in range(1, rounds + 2):
        path = root / f"{strategy.name}-{round_index}.safetensors"
        save_file(weights, str(path))
        updates, controls, rows, scores = [], [], [], []
        for pod in pods:
            correction = None if control is None else control_correction(control.c, pod.local_control)
            fit = fit_local(
                model, data=pod.section, selection=selection, hyperparameters=hyper, weights=path, accelerator="cpu",
                proximal_mu=strategy.proximal_mu, correction=correction, evaluate_first=True,
            )
            split_rows: Mapping[str, int] = fit.datastructure["n_rows"]  # type: ignore[assignment]
            scores.append((fit.metrics["test_accuracy"], split_rows["test"]))
            update = {n: fit.weights[n].numpy() - weights[n] for n in weights}
            if control is not None:
                steps = effective_steps(hyper, split_rows["train"])
                step = control_step(
                    update, server=control.c, local=pod.local_control, steps=steps, learning_rate=hyper.learning_rate
                )
                pod.local_control = step.local
                controls.append(step.delta)
            updates.append(update)
            rows.append(split_rows["train"])
        if round_index > 1:  # these tasks scored the previous round's model
            curve.append(sum(a * n for a, n in scores) / sum(n for _, n in scores))
        if round_index > rounds:
            break
        shares = np.asarray(rows, dtype=np.float64) / sum(rows)
        mean = robust_mean(updates, strategy) if strategy.robust else _weighted(updates, shares)
        if control is not None:
            control.step(_weighted(controls, shares), share=1.0)
        weights = apply_mean_update(weights, optimizer.step(mean))
    print(f"  {strategy.name:<22} " + " ".join(f"{a:.4f}" for a in curve), file=sys.stderr, flush=True)
    return curve


def _weighted(arrays: list[dict[str, np.ndarray]], shares: np.ndarray) -> dict[str, np.ndarray]:
    return {n: sum(s * a[n] for s, a in zip(shares, arrays, strict=True)).astype(np.float32) for n in arrays[0]}


def _central(
    model: ModelRef, sites: list[PodSite], sections: list[DatasourceSection], selection: DataSelection, rounds: int,
    root: Path,
) -> float:
    """The demo's central baseline for rounds x epochs epochs, scored on the pods' test rows."""
    _quiet()
    weights = central_fit(
        model, sites, selection, HYPER.model_copy(update={"epochs": rounds * (HYPER.epochs or 1)}),
        pooled=root / "data" / "central-train.parquet",
    )
    return _score(model, sites, sections, selection, weights, root)


def _quiet() -> None:
    """Lightning's banners and tips, once per task, would bury the curves."""
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")


def _score(
    model: ModelRef, sites: list[PodSite], sections: list[DatasourceSection], selection: DataSelection,
    weights: dict[str, np.ndarray], root: Path,
) -> float:
    """Overall test accuracy of ``weights`` on the pods' test splits (the pods' own evaluate-first)."""
    path = root / "central.safetensors"
    save_file({n: np.ascontiguousarray(a, dtype=np.float32) for n, a in weights.items()}, str(path))
    total = hits = 0.0
    for section in sections:
        fit = fit_local(model, data=section, selection=selection, hyperparameters=HYPER.model_copy(
            update={"epochs": None, "steps": 1}), weights=path, accelerator="cpu", evaluate_first=True)
        n = fit.datastructure["n_rows"]["test"]  # type: ignore[index]
        hits += fit.metrics["test_accuracy"] * n
        total += n
    return hits / total


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, curve in result["accuracy_per_round"].items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o", label=name)
    ax.axhline(result["central_accuracy"], color="black", linestyle="--", label="central")
    ax.set_xlabel("round (one epoch on each pod)")
    ax.set_ylabel("overall test accuracy")
    ax.set_title(f"Strategies on the demo's label-skewed split ({result['rows']} rows)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print(result: dict[str, Any]) -> None:
    print(f"strategies on the demo's label-skewed split: {result['rounds']} rounds, {result['rows']} rows")
    for name, curve in result["accuracy_per_round"].items():
        print(f"  {name:<22} " + " ".join(f"{a:.4f}" for a in curve))
    print(f"  {'central':<22} {result['central_accuracy']:.4f}")
    print(f"best {result['best']}: {result['best_gap_points']:+.2f} points below central")


def main() -> None:
    args = parser_for(__doc__, small_help="the smoke size CI runs").parse_args()
    show(run(args.small), as_json=args.json, table=_print)


if __name__ == "__main__":
    main()
