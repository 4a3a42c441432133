"""Build the task's model from its source or spec, with one fixed failure code per mistake.

Owns importing model source (style A and B) from the task input, choosing the class,
checking its base, instantiating it and building ``self._model``, and building a
declarative spec (style C) without executing any modeller code. Each failure is a
``TrainingError`` whose ``reason`` is a fixed code the agent may share; the detail
(which may quote the source) stays in the sandbox's local log.

Failure codes: ``source_missing``, ``source_hash_mismatch``, ``syntax_error``,
``model_import_error``, ``model_class_not_found``, ``multiple_model_classes``,
``wrong_base_class``, ``model_init_error``, ``create_model_error``,
``create_model_wrong_type``, ``bad_spec``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytorch_lightning as pl
from torch import nn

from pod_agent.errors import TrainingError
from pod_agent.protocol import ModelRef
from pod_agent.sdk import DeclarativeModel, ModelSpec, ModuleAdapter, PodModel

SOURCE_FILE_NAME = "model.py"
SPEC_FILE_NAME = "spec.json"
MODULE_NAME = "pod_task_model"


def build_model(ref: ModelRef, *, input_dir: Path, init_kwargs: Mapping[str, Any]) -> PodModel:
    """The model of ``ref``, instantiated with ``init_kwargs`` and ``_model`` built."""
    if ref.style == "declarative":
        spec = _load_spec(ref, input_dir)
        model: PodModel = DeclarativeModel(spec=spec, **init_kwargs)
    else:
        module = _import_source(ref, input_dir)
        cls = _choose_class(module, ref)
        try:
            model = (
                cls(**init_kwargs) if ref.style == "lightning" else ModuleAdapter(module_class=cls, **init_kwargs)
            )
        except TrainingError:
            raise
        except Exception as exc:
            raise TrainingError("model_init_error", f"{cls.__name__}(...) raised {exc!r}") from exc
    try:
        model.initialise_model()
    except TrainingError:
        raise
    except Exception as exc:
        raise TrainingError("create_model_error", f"create_model() raised {exc!r}") from exc
    return model


def _load_spec(ref: ModelRef, input_dir: Path) -> ModelSpec:
    path = input_dir / SPEC_FILE_NAME
    if path.exists():
        try:
            raw: object = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TrainingError("bad_spec", f"{SPEC_FILE_NAME} is not JSON: {exc}") from exc
    else:
        raw = ref.spec
    return ModelSpec.parse(raw)


def _read_source(ref: ModelRef, input_dir: Path) -> str:
    path = input_dir / SOURCE_FILE_NAME
    if path.exists():
        data = path.read_bytes()
    elif ref.source is not None:
        data = ref.source.encode("utf-8")
    else:
        raise TrainingError("source_missing", f"no {SOURCE_FILE_NAME} in the task input and no inline source")
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise TrainingError("source_hash_mismatch", "model source sha256 differs from the signed task")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrainingError("syntax_error", "model source is not UTF-8") from exc


def _import_source(ref: ModelRef, input_dir: Path) -> ModuleType:
    text = _read_source(ref, input_dir)
    try:
        code = compile(text, SOURCE_FILE_NAME, "exec")
    except (SyntaxError, ValueError) as exc:
        raise TrainingError("syntax_error", f"model source does not compile: {exc}") from exc
    spec = importlib.util.spec_from_loader(MODULE_NAME, loader=None)
    if spec is None:
        raise TrainingError("model_import_error", "cannot create a module for the model source")
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(input_dir / SOURCE_FILE_NAME)
    # Registered so that dataclasses, typing and pickling inside the source resolve the module.
    sys.modules[MODULE_NAME] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - this is the confined worker's purpose
    except TrainingError:
        raise
    except BaseException as exc:
        raise TrainingError("model_import_error", f"importing the model source raised {exc!r}") from exc
    return module


def _choose_class(module: ModuleType, ref: ModelRef) -> type[Any]:
    name = ref.class_name or ""
    found = module.__dict__.get(name)
    if found is None:
        raise TrainingError("model_class_not_found", f"the source defines no {name!r}")
    if not inspect.isclass(found):
        raise TrainingError("wrong_base_class", f"{name!r} is a {type(found).__name__}, not a class")
    if ref.style == "lightning":
        if not issubclass(found, PodModel):
            raise TrainingError(
                "wrong_base_class", f"{name} must subclass pod_agent.sdk.PodModel (bases: {found.__mro__[1:3]})"
            )
        defined = [
            c for c in module.__dict__.values()
            if inspect.isclass(c) and issubclass(c, PodModel) and c.__module__ == module.__name__
        ]
        leaves = [c for c in defined if not any(o is not c and issubclass(o, c) for o in defined)]
        if len(leaves) > 1:
            raise TrainingError(
                "multiple_model_classes",
                f"the source defines {len(leaves)} model classes ({sorted(c.__name__ for c in leaves)}); keep one",
            )
        return found
    if not issubclass(found, nn.Module) or issubclass(found, pl.LightningModule):
        raise TrainingError(
            "wrong_base_class", f"style 'module' needs a plain torch.nn.Module subclass; {name} is not one"
        )
    return found
