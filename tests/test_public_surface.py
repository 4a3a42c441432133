"""Each package's public surface is pinned, and other packages reach it only through ``__all__``.

A package's ``__all__`` is what the rest of pod-agent may use; its submodules are its own business,
so they can be split or renamed without touching a caller (the sdk's surface, what model source
may import, is pinned in ``tests/sdk/test_sdk_surface.py``; ``cli`` is the top and exports nothing).
A name added to or dropped from a surface is a decision, made here in the same change.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "pod_agent"
NOT_PINNED_HERE = {"cli", "sdk"}

SURFACE: dict[str, list[str]] = {
    "agent": [
        "Agent", "Backoff", "HubClient", "PipelineOutput", "TaskPipeline", "run_agent"
    ],
    "config": [
        "AllowedModel", "DEFAULT_MAX_PREDICTION_COLUMNS", "DatasourceSection", "DpBudget",
        "ENROLMENT_TOKEN_PATTERN", "HubSection", "ImagesSection", "ModellerKey", "ModellerPolicy", "OpsSection",
        "PodName", "PodSection", "PodSettings", "PrivacySection", "SandboxLimitsSection", "SecuritySection",
        "TextSection", "TrainingSection",
        "example_text", "load_settings", "render_pod_toml"
    ],
    "data": [
        "ColumnSchema", "ColumnStore", "CompactRows", "DATA_FILE_NAME", "DEFAULT_BATCH_ROWS", "Datasource",
        "ROW_SHAPE_METADATA_KEY", "SPLIT_CODES", "STYPES", "Schema",
        "Stype", "TabularLayout", "TaskInputCache", "assign_splits", "check_drift", "dense_x", "open_datasource",
        "partition_by_category", "plan_datastructure", "prepare_task_input", "read_datastructure", "stype_reason",
        "write_adult"
    ],
    "demo": [
        "DemoOptions", "FederationError", "LocalFederation", "PodSite", "Tutorial", "run_demo", "tutorial_federation",
        "write_federation_file"
    ],
    "hub": [
        "DEFAULT_BLOB_GRACE_S", "DEFAULT_BLOB_QUOTA_BYTES", "DEFAULT_BLOB_QUOTA_COUNT", "DEFAULT_GC_INTERVAL_S",
        "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_RATE_BURST", "DEFAULT_RATE_PER_S", "DEFAULT_TOKEN_TTL_S",
        "HubLimits", "PostgresCluster", "PostgresStorage", "REGISTRATION_POLICIES", "RegistrationPolicy",
        "SqliteStorage", "StatusPage",
        "Storage", "StorageConflict", "blob_dir_for", "create_app", "invite", "is_postgres_url",
        "listening", "open_storage", "serve", "server_tls_context"
    ],
    "modeller": [
        "DEFAULT_TASK_LIFETIME_S", "DpTarget", "FedAvg", "FedAvgPlan", "HubTaskStatus", "ModellerClient",
        "PodAnswer", "PodInfo", "PodMetrics", "RoundRecord", "RunReport", "SEE_POD_LIST", "STRATEGIES",
        "SecureSettings", "Strategy", "UNKNOWN_TRAIN_BLOB", "VerifiedResult", "build_task", "load_pod_keys",
        "load_task_record",
        "model_from_file", "pin_line", "results_table", "run_sync", "save_results", "save_task_record",
        "schema_stats", "starting_weights", "strategy_named"
    ],
    "ops": [
        "AgentMetrics", "HealthPortTaken", "HealthServer", "HumanFormatter", "JsonFormatter", "Notifier", "Readiness",
        "TaskLogAdapter", "bind_health_socket", "configure_logging", "pod_on_health_port", "task_context",
        "task_logger"
    ],
    "policy": [
        "BudgetUse", "FailureCode", "NoisePlan", "PrivacyFloor", "RefusalCode", "TaskVerifier", "TrustedPeers",
        "VerifiedTask", "budget_report", "check_fetched_source", "effective_steps", "epsilon", "failure_code_for",
        "gaussian_event", "install_roster", "model_text", "modeller_keys", "noise_plan", "review_diff",
        "used_splits"
    ],
    "protocol": [
        "AddressedMessage", "AdvertRoster", "BLOB_CHUNK_BYTES", "BlobRef", "Code", "Cohort", "CohortEntry",
        "CohortProof", "CohortTree",
        "CommittedList", "ConsistencySignature",
        "DEFAULT_OVERLAP_S", "DEFAULT_REPLAY_ENTRIES", "DEFAULT_REPLAY_ENTRIES_PER_KEY", "DataSelection",
        "DpParams", "EncryptedShares", "Envelope", "FederationRoster", "HeartbeatAck", "HubPush", "HubReply",
        "Hyperparameters", "IdentityKey", "KeyAdvertisement", "KeyRotation", "MAX_JSON_DEPTH", "MAX_LISTED_ROTATIONS",
        "MAX_PROOF_HASHES", "MAX_REPLY_BYTES",
        "MAX_REQUEST_SKEW_S", "MAX_STAGE_BYTES", "MODELLER_SENDER", "MODELLER_STAGES", "MaskedInput",
        "ModelPublication", "ModelRef", "ModelSource", "ModelStyle", "ModellerRegisteredStanding",
        "ModellerRegistration", "Ok", "POD_READ_STAGES", "POD_STAGES", "PendingTasks", "PinOutdated",
        "PodAck", "PodHeartbeat", "PodList", "PodMessage", "PodPromote", "PodRegisteredStanding", "PodRegistration",
        "ProgressEvent",
        "PublicKey", "Refusal", "RequestReplayCache", "ResultPayload", "RosterPod", "RoundMessage", "RoundMessages",
        "STAGES", "STAGE_MODELS", "ScaffoldParams", "SecAggParams", "SignedHeaders", "Split", "Stage", "Stored",
        "SurvivorList",
        "TaskDelivery", "TaskKind", "TaskPayload", "TaskResults", "TaskStatusReply", "TaskSubmission",
        "TaskSubmitted", "TlsOptionNames", "UnmaskShares", "WeightsRef", "addressed_sender", "b64decode_strict",
        "canonical_json",
        "check_inclusion", "check_signature", "cohort_tree",
        "download_blob", "envelope_bytes", "file_chunks", "first_error", "hub_session", "is_loopback",
        "key_id_of", "keys_in_force", "model_from_file", "oneshot_call", "open_envelope", "parse_envelope",
        "parse_json", "parse_reply",
        "parse_signed_headers", "passphrase_from_env", "rotation_statement", "round_path", "sha256_hex",
        "sign_envelope", "sign_request", "signed_call", "source_sha256", "spec_sha256", "tls_for_hub",
        "verified_rotation", "verify_envelope", "verify_request"
    ],
    "sandbox": [
        "Channel", "LayerReport", "SandboxJob", "SandboxLimits", "SandboxOutcome", "SandboxRunner", "best_level",
        "cap_code", "check_worker_package", "plan_layers", "probe_layers", "release_and_print",
        "sandbox_check_detail", "sandbox_check_lines", "sandbox_report_lines"
    ],
    "secagg": [
        "AggregateResult", "ClipBound", "ClippedUpdate", "EncodedUpdate", "Encoding", "HeldShares", "Layout",
        "METRIC_BOUND", "MetricPlan", "NeighbourGraph", "NormClip", "PeerKeys", "RingPlacement", "RoundSecrets",
        "Share", "SurvivorView", "TensorSlot", "UnmaskAnswer", "UnmaskRequest", "aggregate_masked",
        "check_share_range", "clip_l2", "clip_update", "cohort_graph", "combine_shares", "confirmed_owners",
        "decrypt_shares", "default_degree", "encode_update",
        "encrypt_shares", "floating_tensors", "mask_input", "max_weight", "modulus_dtype", "neighbour_graph",
        "noise_update", "plan_encoding", "plan_metrics", "split_secret", "sum_vectors", "unmask_answer",
        "unmask_request",
        "unmask_sum", "vector_from_bytes", "vector_to_bytes"
    ],
    "state": [
        "AlreadyReleased", "AlreadySeen", "ApprovedModel", "AuditRow", "ExportBroken", "ExportSummary",
        "IllegalTransition", "LEGAL_TRANSITIONS", "LedgerEntry", "NonceStore", "OutboxEntry", "PodState",
        "Reservation", "ReviewHold", "ReviewNotPending", "ReviewRecord", "TaskRecord", "TaskStatus", "Verdict",
        "export_lines", "verify_export"
    ],
    "training": [
        "CONTROL_PREFIX", "CORRECTION_FILE_NAME", "CheckedResult", "ControlStep", "TensorDescription", "TensorSpec",
        "TrainerSettings", "WorkerPrivacy", "WorkerProgress", "WorkerRequest", "WorkerResultHeader", "check_result",
        "control_correction", "control_step", "expected_from_safetensors", "fit_local", "initial_weights",
        "parse_progress", "reported_rows", "safetensors_head", "save_fit", "tagged", "untagged"
    ],
}


def _packages() -> list[str]:
    return sorted(p.name for p in PACKAGE_ROOT.iterdir() if (p / "__init__.py").is_file())


def test_every_package_has_a_pinned_surface() -> None:
    assert sorted(SURFACE) == sorted(set(_packages()) - NOT_PINNED_HERE)


@pytest.mark.parametrize("package", sorted(SURFACE))
def test_package_public_names_are_pinned(package: str) -> None:
    module = importlib.import_module(f"pod_agent.{package}")
    assert sorted(module.__all__) == SURFACE[package]


@pytest.mark.parametrize("package", sorted(SURFACE))
def test_every_public_name_resolves_to_what_it_names(package: str) -> None:
    # Lazy packages (modeller, sandbox, demo, part of protocol and training) map names to modules by hand.
    # Every submodule is imported first: importing one sets the package attribute of its name, which
    # would shadow a lazily resolved public name spelled the same (a function named like its module).
    module = importlib.import_module(f"pod_agent.{package}")
    for sub in pkgutil.iter_modules(module.__path__):
        importlib.import_module(f"pod_agent.{package}.{sub.name}")
    for name in module.__all__:
        value = getattr(module, name)
        assert not isinstance(value, types.ModuleType), f"pod_agent.{package}.{name} is shadowed by a submodule"


def _sources() -> list[Path]:
    return sorted(PACKAGE_ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_other_packages_are_imported_through_their_surface(path: Path) -> None:
    rel = path.relative_to(PACKAGE_ROOT)
    if len(rel.parts) == 1:  # pod_agent/__main__.py, errors.py: the root, not a package
        return
    own = rel.parts[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                assert not (parts[0] == "pod_agent" and len(parts) > 2 and parts[1] != own), (
                    f"{rel}:{node.lineno} imports {alias.name}: import names from pod_agent.{parts[1]}"
                )
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "pod_agent" or len(parts) < 2 or parts[1] in (own, "errors"):
                continue
            assert len(parts) == 2, f"{rel}:{node.lineno} reaches into {node.module}: import from pod_agent.{parts[1]}"
            surface = set(importlib.import_module(node.module).__all__)
            hidden = [alias.name for alias in node.names if alias.name not in surface]
            assert not hidden, f"{rel}:{node.lineno} imports {hidden} from {node.module}, not in its __all__"
