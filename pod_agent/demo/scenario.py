"""The demo scenario: Adult split non-IID over three pods, secure FedAvg, central baseline.

Owns the choices that make the demo meaningful and quick: the split (by marital
status, so the pods differ in size and in their share of incomes > 50K), the
model (``adult_mlp.py``), the round plan, and what is printed and written to the
output folder (data, pod logs, final model, report with curves). With
``dp_epsilon`` each pod's owner gives the modeller that budget (``dp_pod_toml``)
and the modeller plans its noise for the rounds (``modeller.fedavg.plan_dp``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pod_agent.config import DatasourceSection, SecuritySection
from pod_agent.data import assign_splits, open_datasource, partition_by_category, write_adult
from pod_agent.demo.federation import LocalFederation, PodSite
from pod_agent.modeller import (
    DpTarget,
    FedAvg,
    FedAvgPlan,
    ModellerClient,
    PodMetrics,
    RoundRecord,
    RunReport,
    SecureSettings,
)
from pod_agent.protocol import DataSelection, Hyperparameters, IdentityKey, ModelRef, Split, model_from_file
from pod_agent.sandbox import best_level, probe_layers, sandbox_report_lines

_log = logging.getLogger(__name__)

MODEL_SOURCE = Path(__file__).with_name("adult_mlp.py")
MODEL_CLASS = "AdultMLP"
TARGET = "TARGET"
SPLIT_COLUMN = "marital-status"
POD_NAMES = ("married", "never-married", "other")
# Numeric census columns with few distinct values would otherwise be inferred categorical
# on a small pod and continuous on a large one; the cohort must agree on every column's type.
CONTINUOUS = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]


@dataclass(frozen=True)
class DemoOptions:
    out_dir: Path
    rounds: int = 5
    epochs_per_round: int = 1
    batch_size: int = 128
    learning_rate: float = 5e-3
    secure: bool = True
    split_column: str = SPLIT_COLUMN
    dp_epsilon: float | None = None  # each pod's epsilon for the whole run; None: no differential privacy


# Differential privacy in the demo: delta well under 1 / rows of the smallest pod; an L2 clip near the size
# of one round's update; the three pods trust one another to add their noise shares (a round's sum holds at
# least 2 of them, so each adds half the variance); a per-value bound of 128 leaves room for a share
# (policy.budget, secagg.noise).
DP_DELTA = 1e-5
DP_CLIP = 1.0
DP_BOUND = 128
DP_SECURE = SecureSettings(prime_q=2 * 2**16 * len(POD_NAMES) * DP_BOUND)


def dp_pod_toml(epsilon: float) -> tuple[str, str]:
    """(the modeller entry's dp key, the owner's [privacy] keys) of a demo pod under a DP budget.

    The demo's owners let evaluate and schema-stats through (unaccounted, exact) so that the report can
    show accuracy per round; an owner protecting real data would weigh that.
    """
    modeller = f"dp = {{ epsilon = {epsilon!r}, delta = {DP_DELTA!r} }}\n"
    owner = (
        f"\n[privacy]\nmax_clip_norm = {DP_CLIP!r}\nmax_clip_bound = {float(DP_BOUND)!r}\n"
        f"\n[privacy.dp]\nmin_noise_multiplier = 0.5\nhonest_pods = {len(POD_NAMES)}\n"
        'unsafe_unaccounted_kinds = ["evaluate", "schema-stats"]\n'
    )
    return modeller, owner


@dataclass(frozen=True)
class DemoResult:
    report: RunReport
    report_path: Path


def run_demo(options: DemoOptions, *, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo: the report (rounds and central baseline) and where it was written."""
    return asyncio.run(_run(options, echo))


async def _run(options: DemoOptions, echo: Callable[[str], None]) -> DemoResult:
    out = options.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    level = _announce_sandbox(echo)
    sites = await asyncio.to_thread(prepare_sites, out / "data", split_column=options.split_column, echo=echo)
    dp = None
    if options.dp_epsilon is not None:
        modeller_toml, owner_toml = dp_pod_toml(options.dp_epsilon)
        sites = [replace(site, modeller_toml=modeller_toml, extra_toml=site.extra_toml + owner_toml) for site in sites]
        dp = DpTarget(epsilon=options.dp_epsilon, delta=DP_DELTA, clip_norm=DP_CLIP, exact_releases=True)
    modeller = IdentityKey.generate()
    plan = demo_plan(options, [s.name for s in sites], dp=dp)
    model = plan.model
    hyper = Hyperparameters(epochs=options.epochs_per_round, batch_size=options.batch_size,
                            learning_rate=options.learning_rate)
    echo(f"starting an embedded hub and {len(sites)} pods (sandbox level {level!r}); logs in {out / 'logs'}")
    async with LocalFederation(out, sites, modeller=modeller, sandbox=level) as federation:
        echo(f"hub at {federation.hub_url}; pods online: {', '.join(s.name for s in sites)}")
        echo("the modeller pins the pods' identity keys (as their owners would send them), not the hub's list")
        if options.secure:
            echo(_dropout_line([s.name for s in sites]))
        async with ModellerClient(federation.hub_url, modeller, pod_keys=federation.pod_keys) as client:
            echo(f"{'secure ' if options.secure else ''}FedAvg: {options.rounds} rounds x "
                 f"{options.epochs_per_round} epoch(s) on each pod")
            fedavg = FedAvg(client, plan, work_dir=out / "rounds", on_round=lambda r: echo(f"  {r.summary()}"))
            if fedavg.dp is not None:
                echo(f"differential privacy: epsilon {options.dp_epsilon:g} at delta {DP_DELTA:g} per pod; noise "
                     f"multiplier {fedavg.dp.noise_multiplier:g}, L2 clip {fedavg.dp.clip_norm:g}; the pods split "
                     "the noise variance over the honest pods any round's sum surely holds")
            result = await fedavg.run()
            echo("central baseline: the same model and epochs on the pods' training rows pooled, "
                 "evaluated on the pods' test rows")
            central_weights = await asyncio.to_thread(
                central_fit, model, sites, fedavg.selection,
                hyper.model_copy(update={"epochs": options.rounds * options.epochs_per_round}),
                pooled=out / "data" / "central-train.parquet",
            )
            started_eval = time.monotonic()
            central = RoundRecord(
                round=options.rounds, pods=await fedavg.evaluate(central_weights, plan.pods, label="central"),
                seconds=time.monotonic() - started_eval,
            )
    report = result.report
    report.central = central
    report.notes += [
        f"pods split by {options.split_column!r}: " + ", ".join(f"{s.name}" for s in sites),
        f"sandbox level in force on the pods: {level}",
        "the central model trained on the pods' train and validation rows pooled (split as the pods split "
        "them) and never saw a row of the pods' test splits, on which both models are evaluated",
        "secure aggregation (SecAgg+): pairwise- and self-masked fixed-point updates with fresh signed round keys "
        "per round; the hub and the modeller saw only masked vectors and the cohort's sum"
        if options.secure else "plain FedAvg (no secure aggregation)",
        *([] if fedavg.dp is None else [
            f"differential privacy: each pod's budget epsilon {options.dp_epsilon:g} at delta {DP_DELTA:g}; "
            f"noise multiplier {fedavg.dp.noise_multiplier:g} over {fedavg.dp.rounds} rounds, L2 clip "
            f"{fedavg.dp.clip_norm:g}; evaluation releases exact metrics (allowed, unaccounted)"]),
        f"wall time {time.monotonic() - started:.0f} s",
    ]
    from safetensors.numpy import save_file

    save_file(result.weights, str(out / "final_model.safetensors"))
    path = report.write(out)
    echo("")
    echo(report.table())
    fed = report.rounds[-1].overall if report.rounds else PodMetrics(float("nan"), float("nan"), 0)
    pooled = central.overall
    echo(f"\nfederated accuracy {fed.accuracy:.4f} vs central {pooled.accuracy:.4f} "
         f"({100 * (pooled.accuracy - fed.accuracy):+.2f} points), on the same {pooled.n_rows} test rows")
    echo(f"final model: {out / 'final_model.safetensors'}\nreport: {path}")
    return DemoResult(report=report, report_path=path)


def demo_plan(options: DemoOptions, pods: list[str], *, dp: DpTarget | None = None) -> FedAvgPlan:
    """The demo's FedAvg plan (its model, selection and round settings) for ``pods``; bench/rounds.py times it."""
    return FedAvgPlan(
        model=model_from_file(MODEL_SOURCE, style="lightning", class_name=MODEL_CLASS, name="adult-mlp"),
        pods=pods, selection=DataSelection(target=TARGET, categorical_encoding="hashed"), rounds=options.rounds,
        epochs_per_round=options.epochs_per_round, batch_size=options.batch_size,
        learning_rate=options.learning_rate, dp=dp,
        secure=(SecureSettings() if dp is None else DP_SECURE) if options.secure else None,
    )


def _dropout_line(pods: list[str]) -> str:
    """How many pods may drop out of a SecAgg+ round before it cannot finish (n - t)."""
    from pod_agent.secagg import neighbour_graph

    # The degree and threshold depend on the cohort size only; the task id just seeds the ring.
    graph = neighbour_graph(pods, task_id="demo", round_index=0)
    n = len(pods)
    return (f"SecAgg+: each pod masks with {graph.degree} neighbours and pins the others' keys; a round finishes "
            f"with up to n - t = {n - graph.threshold} of the {n} pods dropped out (threshold t = {graph.threshold}), "
            "never by a retry")


def _announce_sandbox(echo: Callable[[str], None]) -> str:
    """The strongest sandbox level this host offers, with the missing layers named."""
    reports = probe_layers(SecuritySection())
    level = best_level(reports)
    echo(f"sandbox: strongest level on this host is {level!r}")
    if level != "strict":
        # Says which layer strict lacks here and how to enable it.
        for line in sandbox_report_lines("strict", reports):
            echo(f"  {line}")
    return level


def prepare_sites(
    data_dir: Path,
    *,
    split_column: str = SPLIT_COLUMN,
    first_rows: int | None = None,
    echo: Callable[[str], None] = lambda line: None,
) -> list[PodSite]:
    """Write the Adult table (pooled, for the baseline) and one share per pod; name the pods.

    ``first_rows`` keeps only the table's first rows (pooled table included), for quick runs.
    """
    files = write_adult(data_dir)
    table = pq.read_table(files.parquet)
    if first_rows is not None:
        table = table.slice(0, first_rows)
        pq.write_table(table, files.parquet)
    parts = partition_by_category(table, column=split_column, n_parts=len(POD_NAMES))
    names = POD_NAMES if split_column == SPLIT_COLUMN else tuple(f"pod-{i + 1}" for i in range(len(parts)))
    sites = []
    for name, part in zip(names, parts, strict=True):
        path = data_dir / f"{name}.parquet"
        pq.write_table(part.table, path)
        rich = pc.sum(pc.equal(part.table[TARGET], ">50K")).as_py() or 0
        echo(f"  pod {name:<14} {part.table.num_rows:>6} rows, {100 * rich / part.table.num_rows:4.1f}% >50K "
             f"({', '.join(part.values)})")
        sites.append(PodSite(name=name, data=path, force_stypes={"continuous": CONTINUOUS}))
    return sites


def central_fit(
    model: ModelRef, sites: list[PodSite], selection: DataSelection, hyper: Hyperparameters, *, pooled: Path
) -> dict[str, np.ndarray]:
    """Train on the pods' training rows pooled, in this process (same preparation as a pod); the weights.

    Each pod's rows are split exactly as that pod splits them (``assign_splits``); its train and
    validation rows are pooled and its test rows left out, so the baseline is scored on rows it
    never saw. The pooled rows are split again train:validation in the pods' ratio.
    """
    from pod_agent.training import fit_local

    shares = []
    for site in sites:
        # Opened as the pod's own pod.toml describes it, so its schema, and thus its split, is the pod's.
        ds = open_datasource(DatasourceSection.model_validate({"path": site.data, "force_stypes": site.force_stypes}))
        codes = assign_splits(ds, ds.schema(), selection)
        shares.append(pq.read_table(site.data).filter(pa.array(np.isin(codes, (0, 1)))))
    pq.write_table(pa.concat_tables(shares), pooled)
    split = selection.split
    train = round(100 * split.train / (split.train + split.validation))
    central = selection.model_copy(
        update={"split": Split(train=train, validation=100 - train, test=0, seed=split.seed)}
    )
    section = DatasourceSection(path=pooled, force_stypes={"continuous": CONTINUOUS})
    with _quiet_lightning():
        fit = fit_local(model, data=section, selection=central, hyperparameters=hyper, accelerator="cpu")
    return {name: t.numpy() for name, t in fit.weights.items()}


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's start-up banners and tips would interleave with the demo's own output."""
    loggers = [logging.getLogger(name) for name in ("lightning", "lightning.pytorch", "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
