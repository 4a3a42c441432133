"""The weights a task starts from: made locally from the model and the pods' registered schemas, or read
from a file, then published to the hub and pinned by sha256 in the task.

Owns ``starting_weights``, which every modeller path that sends a train task goes through, because a pod
refuses a train task that does not pin its starting weights (``weights_not_pinned``) and checks the
returned update against exactly their names, shapes and dtypes. Building the model needs torch
(``pod_agent.training.local``), imported only when weights are made.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from pod_agent.data import Schema, plan_datastructure
from pod_agent.errors import ModellerError
from pod_agent.modeller.client import ModellerClient, PodInfo
from pod_agent.protocol import DataSelection, Hyperparameters, ModelRef, WeightsRef

Weights = dict[str, np.ndarray]


def cohort_datastructure(cohort: list[PodInfo], selection: DataSelection) -> dict[str, object]:
    """The datastructure every pod of ``cohort`` will prepare, from their public schemas;
    raises ModellerError when the pods would build models of different shapes."""
    planned = {
        p.name: plan_datastructure(
            Schema.from_public(p.schema), selection, share_categories=Schema.public_shares_categories(p.schema)
        )
        for p in cohort
    }
    shapes = {name: (d["input_size"], d["n_classes"]) for name, d in planned.items()}
    if len(set(shapes.values())) != 1:
        raise ModellerError(
            f"the pods would build models of different shapes (input_size, n_classes): {shapes}; "
            "use categorical_encoding='hashed' (--encoding hashed) or pods with the same categories"
        )
    return planned[cohort[0].name]


def initial_weights(
    model: ModelRef, cohort: list[PodInfo], selection: DataSelection, hyperparameters: Hyperparameters
) -> Weights:
    """The model as a pod would build it (same seed) for the cohort's common datastructure."""
    from pod_agent.training import initial_weights as build

    datastructure = cohort_datastructure(cohort, selection)
    return build(model, datastructure=datastructure, hyperparameters=hyperparameters)


async def publish_weights(client: ModellerClient, weights: Weights, path: Path) -> WeightsRef:
    """Save ``weights`` (float32, sorted) at ``path`` and upload them; returns the reference a task pins."""
    ordered = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in sorted(weights.items())}
    path.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(save_file, ordered, str(path))
    return await client.upload_weights(path)


async def starting_weights(
    client: ModellerClient,
    *,
    model: ModelRef,
    cohort: list[PodInfo],
    selection: DataSelection,
    hyperparameters: Hyperparameters,
    weights_file: Path | None,
    work_dir: Path,
) -> WeightsRef:
    """Publish ``weights_file`` (checked to be safetensors), or freshly initialised weights, and pin them."""
    if weights_file is not None:
        try:
            weights = await asyncio.to_thread(load_file, str(weights_file))
        except (OSError, ValueError) as exc:
            raise ModellerError(f"--weights {weights_file} is not a readable safetensors file: {exc}") from exc
    else:
        weights = await asyncio.to_thread(initial_weights, model, cohort, selection, hyperparameters)
    return await publish_weights(client, weights, work_dir / "starting-weights.safetensors")
