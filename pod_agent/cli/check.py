"""``pod-agent check``: is this pod ready to run? One line per named check.

Owns the list of checks and their order (cheapest and most basic first; a check whose
prerequisite failed is skipped, not run). A check is a function of the CheckContext that
returns a short success detail or raises a PodAgentError whose message says what to fix;
other concerns add theirs by appending to ``CHECKS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer

from pod_agent.agent import HubClient
from pod_agent.config import PodSettings, load_settings
from pod_agent.data import open_datasource
from pod_agent.errors import ConfigError, PodAgentError
from pod_agent.policy import PrivacyFloor, TrustedPeers
from pod_agent.protocol import IdentityKey, passphrase_from_env
from pod_agent.sandbox import sandbox_check_detail


@dataclass
class CheckContext:
    """What earlier checks found, for later ones to use."""

    config_path: Path
    loaded: PodSettings | None = None
    loaded_key: IdentityKey | None = None  # read and decrypted once, by the identity key check

    @property
    def settings(self) -> PodSettings:
        if self.loaded is None:
            raise ConfigError(f"{self.config_path}: not loaded - the config check must pass first")
        return self.loaded

    @property
    def identity_key(self) -> IdentityKey:
        if self.loaded_key is None:
            raise ConfigError(f"{self.config_path}: identity key not loaded - the identity key check must pass first")
        return self.loaded_key


@dataclass(frozen=True)
class NamedCheck:
    name: str
    run: Callable[[CheckContext], str]
    needs: tuple[str, ...] = ()  # names of checks that must have passed first


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "ok", "FAIL" or "skip"
    detail: str


def _config(ctx: CheckContext) -> str:
    settings = load_settings(ctx.config_path)
    ctx.loaded = settings
    return f"{ctx.config_path} (pod {settings.pod.name!r})"


def _identity_key(ctx: CheckContext) -> str:
    pod = ctx.settings.pod
    key = IdentityKey.load(pod.identity_key_path, passphrase_from_env(pod.identity_key_passphrase_env))
    ctx.loaded_key = key
    return f"{pod.identity_key_path} (key id {key.key_id[:16]}...)"


def _datasource(ctx: CheckContext) -> str:
    source = open_datasource(ctx.settings.datasource)
    schema = source.schema()
    return (
        f"{source.path} ({source.kind}): {schema.row_count} rows, {len(schema.columns)} columns,"
        f" schema hash {schema.hash()[:16]}..."
    )


def _sandbox(ctx: CheckContext) -> str:
    return sandbox_check_detail(ctx.settings)


def _privacy_floor(ctx: CheckContext) -> str:
    """The trusted peers and, per modeller, the privacy floor in force (the [privacy] defaults with its own keys)."""
    settings = ctx.settings
    peers = TrustedPeers.from_settings(settings.privacy, own_name=settings.pod.name, own_key=ctx.identity_key.public)
    lines = [
        f"{len(peers.names)} trusted secure-aggregation peers (this pod included): {', '.join(sorted(peers.names))}"
    ]
    if not settings.security.modellers:
        lines.append("no modellers listed: every task is refused")
    lines += [
        f"{modeller.name}: {PrivacyFloor.for_modeller(settings.privacy, modeller).describe()}"
        + ("" if modeller.dp is None else f", dp epsilon={modeller.dp.epsilon:g} delta={modeller.dp.delta:g}")
        for modeller in settings.security.modellers
    ]
    dp = settings.privacy.dp
    if any(m.dp is not None for m in settings.security.modellers):
        cap = "none" if dp.dataset is None else f"epsilon={dp.dataset.epsilon:g} delta={dp.dataset.delta:g}"
        lines.append(f"dp: dataset cap {cap}, min_noise_multiplier={dp.min_noise_multiplier:g}, "
                     f"honest_pods={dp.honest_pods}, unaccounted kinds {dp.unsafe_unaccounted_kinds or 'none'}")
    return "\n      ".join(lines)


def _hub(ctx: CheckContext) -> str:
    settings, key = ctx.settings, ctx.identity_key

    async def probe() -> float:
        async with HubClient(settings.hub, key) as hub:
            return await hub.health_seconds()

    return f"{settings.hub.url} answered /healthz in {1000 * asyncio.run(probe()):.0f} ms"


def _ports(ctx: CheckContext) -> str:
    """The health endpoint's port can be bound now (``pod-agent run`` binds it first thing), or is held by this
    pod's own running agent (its /healthz names this pod)."""
    from pod_agent.ops import HealthPortTaken, bind_health_socket, pod_on_health_port

    ops, pod = ctx.settings.ops, ctx.settings.pod.name
    if ops.health_port == 0:
        return "health endpoint off (ops.health_port = 0)"
    try:
        bind_health_socket(ops.health_host, ops.health_port).close()
    except HealthPortTaken:
        if pod_on_health_port(ops.health_host, ops.health_port) != pod:
            raise
        return f"health endpoint {ops.health_host}:{ops.health_port} is in use by this pod's running agent"
    return f"health endpoint {ops.health_host}:{ops.health_port} is free"


CHECKS: list[NamedCheck] = [
    NamedCheck("config", _config),
    NamedCheck("identity key", _identity_key, needs=("config",)),
    NamedCheck("datasource", _datasource, needs=("config",)),
    NamedCheck("sandbox", _sandbox, needs=("config",)),
    NamedCheck("ports", _ports, needs=("config",)),
    NamedCheck("hub", _hub, needs=("config", "identity key")),
    NamedCheck("privacy floor", _privacy_floor, needs=("config", "identity key")),
]


def run_checks(config_path: Path, checks: list[NamedCheck] | None = None) -> list[CheckResult]:
    """Run ``checks`` (default: CHECKS) in order; never raises for a failing check."""
    ctx = CheckContext(config_path=config_path)
    passed: set[str] = set()
    results: list[CheckResult] = []
    for check in CHECKS if checks is None else checks:
        missing = [name for name in check.needs if name not in passed]
        if missing:
            results.append(CheckResult(check.name, "skip", f"needs {', '.join(missing)}"))
            continue
        try:
            detail = check.run(ctx)
        except PodAgentError as exc:
            results.append(CheckResult(check.name, "FAIL", str(exc)))
            continue
        passed.add(check.name)
        results.append(CheckResult(check.name, "ok", detail))
    return results


def check(
    config: Path = typer.Option(..., "--config", help="The pod's pod.toml."),
) -> None:
    """Validate the config, identity key, datasource, sandbox layers, free ports and hub reachability;
    exit 1 if any fails."""
    results = run_checks(config)
    width = max(len(result.name) for result in results)
    for result in results:
        typer.echo(f"{result.status:<4}  {result.name:<{width}}  {result.detail}")
    if any(result.status != "ok" for result in results):
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("check")(check)
