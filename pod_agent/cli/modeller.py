"""``pod-agent modeller ...``: the modeller's CLI over ``pod_agent.modeller.ModellerClient``.

keys (show or make the modeller key, and the pod.toml entry allowing it), register (the key
at the hub, with an enrolment token where the hub asks for one), pods (list them; --wait
until they are online), publish (a model version at the hub, private unless --public),
submit (sign and send a task; model source read and hashed locally, --weights uploaded and
pinned, the task recorded in ``tasks/`` beside the key file), status TASK, results TASK --out DIR (each
pod's signature verified, files named for what they hold, a metrics table), train (FedAvg
rounds). Hub, key and pinned pod keys come from options or POD_AGENT_MODELLER_* environment
variables.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import typer

from pod_agent.cli import fit_local
from pod_agent.cli.keys import modeller_entry
from pod_agent.errors import ConfigError, ModellerError
from pod_agent.modeller import (
    DEFAULT_TASK_LIFETIME_S,
    SEE_POD_LIST,
    UNKNOWN_TRAIN_BLOB,
    ModellerClient,
    PodAnswer,
    PodInfo,
    VerifiedResult,
    build_task,
    load_pod_keys,
    load_task_record,
    model_from_file,
    results_table,
    save_results,
    save_task_record,
)
from pod_agent.protocol import DataSelection, Hyperparameters, IdentityKey, PublicKey, passphrase_from_env

T = TypeVar("T")

_modeller = typer.Typer(name="modeller", help="Modeller side: register, list pods, submit tasks, fetch results.",
                        no_args_is_help=True)

DEFAULT_KEY = Path("~/.config/pod-agent/modeller.pem")
# One default for submit and train, so weights trained by one fit tasks of the other; hashed because
# it gives every pod the same model shape whatever categories each holds (one-hot needs equal sets).
ENCODINGS = ("hashed", "one-hot")
DEFAULT_ENCODING = "hashed"
ENCODING_HELP = "Categorical features: hashed (any cohort; the default) or one-hot (pods with the same categories)."
STRATEGY_HELP = (
    "fedavg, fedavgm, fedadam, fedyogi, fedadagrad (server optimisers), fedprox, scaffold (the pods correct local "
    "training), median, trimmed-mean (robust; plain rounds only, with --plain)."
)


def _names(csv: str) -> list[str]:
    return [p.strip() for p in csv.split(",") if p.strip()]


def _one_of(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ModellerError(f"{option} {value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class _Options:
    hub: str
    fallback_hubs: list[str]
    key_path: Path
    passphrase_env: str | None
    ca_bundle: Path | None
    pin: str | None
    unsafe_allow_http: bool
    pod_keys: dict[str, PublicKey] | None

    def key(self) -> IdentityKey:
        return IdentityKey.load(self.key_path.expanduser(), passphrase_from_env(self.passphrase_env))

    @property
    def task_records(self) -> Path:
        """Where submit records each task it sent, for results: beside the key, so not in whatever
        folder the command happened to run from."""
        return self.key_path.expanduser().parent / "tasks"

    def client(self) -> ModellerClient:
        return ModellerClient(
            self.hub, self.key(), fallback_urls=self.fallback_hubs, ca_bundle=self.ca_bundle,
            pinned_cert_sha256=self.pin, unsafe_allow_http=self.unsafe_allow_http, pod_keys=self.pod_keys,
        )


def _with_client(ctx: typer.Context, work: Callable[[ModellerClient], Awaitable[T]]) -> T:
    options: _Options = ctx.obj

    async def go() -> T:
        async with options.client() as client:
            return await work(client)

    return asyncio.run(go())


@_modeller.callback()
def _options(
    ctx: typer.Context,
    hub: str = typer.Option("http://127.0.0.1:8700", "--hub", envvar="POD_AGENT_MODELLER_HUB", help="Hub URL."),
    fallback_hubs: list[str] = typer.Option(
        [], "--fallback-hub", envvar="POD_AGENT_MODELLER_FALLBACK_HUBS",
        help="Another process of the same hub, tried when the current one cannot answer (repeatable; in the "
             "environment variable, separated by spaces)."),
    key: Path = typer.Option(DEFAULT_KEY, "--key", envvar="POD_AGENT_MODELLER_KEY", help="Modeller key file."),
    passphrase_env: str | None = typer.Option(None, "--passphrase-env", help="Env var holding the key passphrase."),
    ca_bundle: Path | None = typer.Option(None, "--ca-bundle", envvar="POD_AGENT_MODELLER_CA_BUNDLE",
                                          help="CA bundle to verify the hub's certificate."),
    pin: str | None = typer.Option(None, "--pin-sha256", envvar="POD_AGENT_MODELLER_PIN_SHA256",
                                   help="sha256 (hex) of the hub's DER certificate, instead of a CA."),
    unsafe_allow_http: bool = typer.Option(False, "--unsafe-allow-http",
                                           help="Allow plain http to a non-loopback hub (unsafe)."),
    renamed_http: bool = typer.Option(False, "--allow-insecure-http", hidden=True),
    pod_keys: Path | None = typer.Option(
        None, "--pod-keys", envvar="POD_AGENT_MODELLER_POD_KEYS",
        help="TOML file pinning each pod's public key (`pod-agent keys show` on its host), instead of the hub's word."),
) -> None:
    if renamed_http:  # the old spelling, kept only to name the new one to scripts that still use it
        raise ConfigError("--allow-insecure-http was renamed --unsafe-allow-http: use that")
    pinned = load_pod_keys(pod_keys.expanduser()) if pod_keys is not None else None
    ctx.obj = _Options(hub, fallback_hubs, key, passphrase_env, ca_bundle, pin, unsafe_allow_http, pinned)


@_modeller.command("keys")
def keys(
    ctx: typer.Context,
    generate: bool = typer.Option(False, "--generate", help="Create the key file if it does not exist."),
    name: str = typer.Option("my-modeller", "--name", help="Name to put in the printed pod.toml entry."),
) -> None:
    """Print the modeller's public key, id, and the [[security.modellers]] entry pod owners add to pod.toml."""
    options: _Options = ctx.obj
    path = options.key_path.expanduser()
    if generate and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        IdentityKey.generate().save(path, passphrase_from_env(options.passphrase_env))
        typer.echo(f"key file:   {path} (new, mode 0600)")
    key = options.key()
    typer.echo(f"public key: {key.public.to_b64()}")
    typer.echo(f"key id:     {key.key_id}\n")
    typer.echo(modeller_entry(name, key.public))


@_modeller.command("register")
def register_cmd(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="Your name at the hub."),
    enrolment_token: str | None = typer.Option(
        None, "--enrolment-token", envvar="POD_AGENT_MODELLER_ENROLMENT_TOKEN",
        help="One-time token from the hub operator (`pod-agent hub invite`), for a hub serving --registration token.",
    ),
) -> None:
    """Register the modeller's public key with the hub."""
    key_id = _with_client(ctx, lambda c: c.register(name, enrolment_token=enrolment_token))
    typer.echo(f"registered {name} ({key_id})")


@_modeller.command("publish")
def publish(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Model source file."),
    name: str = typer.Option(..., "--name", help="Model name at the hub."),
    version: str = typer.Option(..., "--version", help="Version; a published version never changes."),
    class_name: str = typer.Option(..., "--class", help="Model class in the source file."),
    style: str = typer.Option("lightning", "--style", help="lightning or module."),
    public: bool = typer.Option(
        False, "--public", help="Serve the source to every registered key, not only to the pods your tasks target."
    ),
) -> None:
    """Publish a model's source at the hub; tasks then name it as NAME@VERSION, pinned by its sha256."""
    _one_of("--style", style, ("lightning", "module"))
    ref = model_from_file(model, style=style, class_name=class_name, name=name)  # type: ignore[arg-type]
    source = ref.source or ""
    outcome = _with_client(
        ctx,
        lambda c: c.publish_model(
            name=name, version=version, style=style, source=source, sha256=ref.sha256, class_name=class_name,
            public=public,
        ),
    )
    typer.echo(f"{name}@{version} {outcome} ({'public' if public else 'private'}, sha256 {ref.sha256})")


@_modeller.command("pods")
def pods(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    wait_s: float = typer.Option(
        0.0,
        "--wait",
        min=0,
        help="Wait up to this many seconds for the pods (--pods, else every listed one) to be online.",
    ),
    pods_csv: str | None = typer.Option(None, "--pods", help="With --wait: comma-separated pods to wait for."),
) -> None:
    """List the pods registered with the hub (the hub's word: schema, rows, sandbox level, online).

    ``key`` compares the hub's key for each pod with --pod-keys: pinned (same), MISMATCH (the hub
    lists another key: its results will be refused), unpinned (not in the file), hub (no file given).
    """
    pinned = ctx.obj.pod_keys
    wanted = None if pods_csv is None else _names(pods_csv)
    if wait_s > 0:
        listed = _with_client(ctx, lambda c: c.wait_online(wanted, timeout_s=wait_s))
    else:
        listed = _with_client(ctx, lambda c: c.pods())

    def key_status(pod: PodInfo) -> str:
        if pinned is None:
            return "hub"
        if pod.name not in pinned:
            return "unpinned"
        return "pinned" if pinned[pod.name].to_b64() == pod.public_key else "MISMATCH"

    if as_json:
        typer.echo(json.dumps([p.__dict__ | {"key": key_status(p)} for p in listed], indent=2, sort_keys=True))
        return
    for p in listed:
        columns = len(p.schema.get("columns", []))
        typer.echo(
            f"{p.name:<20} {'online' if p.online else 'offline':<8} rows={p.row_count:<9} columns={columns:<4}"
            f" sandbox={p.sandbox_level:<11} schema={p.schema_hash[:12]} key={key_status(p)}"
        )


@_modeller.command("submit")
def submit(
    ctx: typer.Context,
    pods_csv: str = typer.Option(..., "--pods", help="Comma-separated pod names."),
    kind: str = typer.Option("train", "--kind", help="train, evaluate, predict or schema-stats."),
    model: Path | None = typer.Option(None, "--model", help="Model source file (or JSON spec for declarative)."),
    class_name: str | None = typer.Option(None, "--class", help="Model class in the source file."),
    style: str = typer.Option("lightning", "--style", help="lightning, module or declarative."),
    target: str | None = typer.Option(None, "--target", help="Target column."),
    epochs: int | None = typer.Option(None, "--epochs", help="Training epochs."),
    steps: int | None = typer.Option(None, "--steps", help="Training steps (instead of epochs)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    learning_rate: float = typer.Option(1e-3, "--lr"),
    lifetime_s: int = typer.Option(
        DEFAULT_TASK_LIFETIME_S, "--expires-in", help="Seconds the signed task stays valid."
    ),
    encoding: str = typer.Option(DEFAULT_ENCODING, "--encoding", help=ENCODING_HELP),
    weights: Path | None = typer.Option(
        None,
        "--weights",
        help="Safetensors weights (e.g. fedavg-output/final_model.safetensors) the task starts from (train) or "
        "scores (evaluate, predict); uploaded to the hub and pinned in the task by sha256.",
    ),
    untrained: bool = typer.Option(
        False, "--untrained", help="Let evaluate or predict score the freshly initialised model (no --weights)."
    ),
    returns: str = typer.Option(
        "update", "--returns", help="What a train task sends back: update (new minus starting weights) or weights."
    ),
    work_dir: Path = typer.Option(Path("modeller-work"), "--work-dir", help="Where starting weights are written."),
) -> None:
    """Sign a task and send it to the pods; prints the task id.

    A train task always starts from pinned weights: --weights, or the model freshly built
    (with the task's seed) from the pods' registered schemas. An evaluate or predict task
    needs --weights (or --untrained, to score the untrained model on purpose).
    """
    names = _names(pods_csv)
    records: Path = ctx.obj.task_records
    _one_of("--kind", kind, ("train", "evaluate", "predict", "schema-stats"))
    _one_of("--style", style, ("lightning", "module", "declarative"))
    _one_of("--encoding", encoding, ENCODINGS)
    _one_of("--returns", returns, ("update", "weights"))
    if returns == "weights" and kind != "train":
        raise ModellerError(f"--returns weights applies to train tasks; a {kind} task returns no weights")
    if kind in ("evaluate", "predict") and weights is None and not untrained:
        raise ModellerError(
            f"a {kind} task without --weights would score a freshly initialised model: pass --weights FILE "
            "(e.g. fedavg-output/final_model.safetensors), or --untrained to score the untrained model on purpose"
        )
    model_ref = None if model is None else model_from_file(model, style=style, class_name=class_name)  # type: ignore[arg-type]
    data = None if target is None else DataSelection(target=target, categorical_encoding=encoding)  # type: ignore[arg-type]

    hyperparameters = Hyperparameters(epochs=epochs, steps=steps, batch_size=batch_size, learning_rate=learning_rate)

    async def go(client: ModellerClient) -> str:
        # Imported here: weights planning needs pandas and pyarrow, which listing pods does not.
        from pod_agent.modeller import starting_weights

        listed = await client.registered(names, hint=SEE_POD_LIST)
        pinned = None
        if model_ref is not None and data is not None and (kind == "train" or weights is not None):
            pinned = await starting_weights(
                client, model=model_ref, cohort=[listed[n] for n in names], selection=data,
                hyperparameters=hyperparameters, weights_file=weights, work_dir=work_dir,
            )
        cohort = await client.cohort(names, schema_hashes={n: listed[n].schema_hash for n in names})
        task = build_task(
            modeller_id=client.key.key_id, cohort=cohort, kind=kind,  # type: ignore[arg-type]
            model=model_ref, data=data, lifetime_s=lifetime_s, hyperparameters=hyperparameters, weights=pinned,
            returns=returns,
        )
        task_id = await client.submit_task(task, cohort)
        save_task_record(task, records)
        return task_id

    typer.echo(_with_client(ctx, go))


@_modeller.command("status")
def status(ctx: typer.Context, task_id: str = typer.Argument(..., help="Task id from submit.")) -> None:
    """Per pod: acknowledged, refused (code), result status, last progress."""
    st = _with_client(ctx, lambda c: c.status(task_id))
    for pod, entry in sorted(st.pods.items()):
        progress = entry.get("progress") or {}
        typer.echo(
            f"{pod:<20} acked={'yes' if entry.get('acked') else 'no':<4} refusal={entry.get('refusal') or '-':<22}"
            f" result={entry.get('result') or '-':<8} stage={progress.get('stage', '-')}"
        )


@_modeller.command("results")
def results(
    ctx: typer.Context,
    task_id: str = typer.Argument(..., help="Task id from submit."),
    out: Path = typer.Option(..., "--out", help="Directory for <pod>.json and blobs."),
    wait_s: float = typer.Option(0.0, "--wait", help="Wait up to this many seconds for every pod to answer."),
) -> None:
    """Fetch results, verify each pod's signature, write them to --out, print a table.

    Each pod's tensors are named for what they hold: <pod>.update.safetensors (new minus starting
    weights), <pod>.weights.safetensors, <pod>.predictions.safetensors. ``key`` says whose key
    verified the signature: pinned (--pod-keys), unpinned (the hub's), unsigned (a refusal code
    the hub relays for a pod that could not verify the task).
    """
    records: Path = ctx.obj.task_records
    task = load_task_record(task_id, records)

    async def go(client: ModellerClient) -> list[PodAnswer]:
        if wait_s > 0:
            pods_of_task = sorted((await client.status(task_id)).pods)
            answers = await client.wait_results(task_id, pods_of_task, timeout_s=wait_s)
            verified = [a for a in answers.values() if isinstance(a, VerifiedResult)]
            refused = {p: a for p, a in answers.items() if isinstance(a, str)}
        else:
            verified, refused = await client.results(task_id), {}
        return await save_results(client, verified=verified, refused=refused, out=out, task=task)

    answers = _with_client(ctx, go)
    typer.echo(results_table(answers) if answers else f"task {task_id}: no results yet (use --wait SECONDS)")
    if task is None and any(a.blob is not None and UNKNOWN_TRAIN_BLOB in a.blob.name for a in answers):
        typer.echo(f"note: no record of task {task_id} in {records} (submitted with another key file): "
                   "whether its tensors are an update or weights is unknown", err=True)


@_modeller.command("train")
def train(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", help="Model source file (or JSON spec for declarative)."),
    class_name: str | None = typer.Option(None, "--class", help="Model class in the source file."),
    style: str = typer.Option("lightning", "--style", help="lightning, module or declarative."),
    pods_csv: str = typer.Option(..., "--pods", help="Comma-separated pod names (the cohort)."),
    target: str = typer.Option(..., "--target", help="Target column."),
    rounds: int = typer.Option(5, "--rounds", min=1),
    epochs_per_round: int = typer.Option(1, "--epochs-per-round", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    learning_rate: float = typer.Option(1e-3, "--lr"),
    secure: bool = typer.Option(True, "--secure/--plain", help="Secure aggregation (default) or plain FedAvg."),
    encoding: str = typer.Option(DEFAULT_ENCODING, "--encoding", help=ENCODING_HELP),
    min_pods: int = typer.Option(3, "--min-pods", min=2, help="Smallest cohort a secure round may continue with."),
    patience: int | None = typer.Option(None, "--patience", help="Stop after N rounds without a better loss."),
    out: Path = typer.Option(Path("fedavg-output"), "--out", help="Folder for the final model and the report."),
    dp_epsilon: float | None = typer.Option(
        None, "--dp-epsilon", min=0.01, help="Differential privacy: each pod's epsilon over the run (plans the noise)."
    ),
    dp_delta: float = typer.Option(1e-6, "--dp-delta", help="Delta of --dp-epsilon (at most 1 / a pod's rows)."),
    dp_clip: float = typer.Option(1.0, "--dp-clip", help="L2 clip of each pod's update under --dp-epsilon."),
    dp_noise: float | None = typer.Option(
        None, "--dp-noise", help="Noise multiplier under --dp-epsilon: plan the rounds that fit instead of the noise."
    ),
    dp_exact: bool = typer.Option(
        False, "--dp-exact-releases", help="Under --dp-epsilon, still evaluate each round (the pods' owners allow it)."
    ),
    strategy: str = typer.Option("fedavg", "--strategy", help=STRATEGY_HELP),
    mu: float | None = typer.Option(None, "--mu", min=0, help="FedProx's proximal mu (default 0.1; pods bound it)."),
    server_lr: float | None = typer.Option(None, "--server-lr", help="The server optimiser's eta (Flower's default)."),
    server_momentum: float | None = typer.Option(None, "--server-momentum", help="FedAvgM's momentum (default 0)."),
) -> None:
    """Federated averaging over R rounds; prints a per-round table, saves the model and a report."""
    from safetensors.numpy import save_file

    from pod_agent.modeller import DpTarget, FedAvg, FedAvgPlan, SecureSettings, strategy_named

    _one_of("--style", style, ("lightning", "module", "declarative"))
    _one_of("--encoding", encoding, ENCODINGS)
    plan = FedAvgPlan(
        model=model_from_file(model, style=style, class_name=class_name),  # type: ignore[arg-type]
        pods=_names(pods_csv),
        selection=DataSelection(target=target, categorical_encoding=encoding),  # type: ignore[arg-type]
        rounds=rounds, epochs_per_round=epochs_per_round, batch_size=batch_size, learning_rate=learning_rate,
        secure=SecureSettings() if secure else None, min_pods=min_pods, patience=patience,
        dp=None if dp_epsilon is None else DpTarget(
            epsilon=dp_epsilon, delta=dp_delta, clip_norm=dp_clip, noise_multiplier=dp_noise, exact_releases=dp_exact,
        ),
        strategy=strategy_named(strategy, proximal_mu=mu, eta=server_lr, momentum=server_momentum),
    )

    async def go(client: ModellerClient) -> Path:
        fedavg = FedAvg(client, plan, work_dir=out / "rounds", on_round=lambda r: typer.echo(r.summary()))
        if fedavg.dp is not None:
            typer.echo(f"dp: noise multiplier {fedavg.dp.noise_multiplier:g}, clip {fedavg.dp.clip_norm:g}, "
                       f"{fedavg.dp.rounds} rounds for epsilon {dp_epsilon:g} at delta {dp_delta:g} per pod")
        result = await fedavg.run()
        await asyncio.to_thread(save_file, result.weights, str(out / "final_model.safetensors"))
        typer.echo(result.report.table())
        return result.report.write(out)

    report = _with_client(ctx, go)
    typer.echo(f"final model: {out / 'final_model.safetensors'}\nreport: {report}")


def register(app: typer.Typer) -> None:
    fit_local.register(_modeller)  # `pod-agent modeller fit-local`
    app.add_typer(_modeller)
