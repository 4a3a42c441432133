"""Category values stay home: with ``share_categories`` off nothing bound for the sandbox or the hub names one.

Everything that may leave the datasource (the datastructure, the prepared file's bytes, the
public schema and a modeller's plan from it) is serialised and searched for every category
value of the real Adult table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest

from pod_agent.config import DatasourceSection
from pod_agent.data import Datasource, Schema, open_datasource
from pod_agent.data.task_input import plan_datastructure, prepare_task_input, read_datastructure
from pod_agent.protocol.messages import DataSelection

ENCODINGS = ["one-hot", "hashed"]


@pytest.fixture(scope="module")
def adult(adult_parquet: Path) -> Datasource:
    return open_datasource(DatasourceSection(path=adult_parquet))


@pytest.fixture(scope="module")
def category_values(adult: Datasource) -> set[str]:
    values = {value for column in adult.schema().columns for value in column.categories or []}
    assert {"Female", "Male", "<=50K", ">50K", "Married-civ-spouse", "16"} <= values
    return values


def _leaked(text: str, values: Iterable[str]) -> list[str]:
    """The values that ``text`` names.

    A word counts anywhere in the text. A number's digits turn up by chance (row counts, the
    schema hash), so a number counts as a whole JSON string or after a feature name's ``=``.
    """
    def names(value: str) -> bool:
        if value.isdigit():
            return f'"{value}"' in text or f'={value}"' in text
        return value in text

    return sorted(value for value in values if names(value))


def _outbound(adult: Datasource, tmp_path: Path, *, encoding: str, share_categories: bool) -> str:
    """Everything the sandbox and the hub would get, as one text."""
    schema = adult.schema()
    selection = DataSelection.model_validate({"target": "TARGET", "categorical_encoding": encoding})
    prepared = prepare_task_input(adult, schema, selection, tmp_path / "in", share_categories=share_categories)
    public = schema.public(share_categories)
    planned = plan_datastructure(
        Schema.from_public(public), selection, share_categories=Schema.public_shares_categories(public)
    )
    parts = [
        json.dumps(prepared.datastructure),
        json.dumps(read_datastructure(prepared.path)),
        prepared.path.read_bytes().decode("latin-1"),
        json.dumps(public),
        json.dumps(planned),
    ]
    return "\n".join(parts)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_no_category_value_leaves_when_categories_are_not_shared(
    adult: Datasource, category_values: set[str], tmp_path: Path, encoding: str
) -> None:
    text = _outbound(adult, tmp_path, encoding=encoding, share_categories=False)
    assert _leaked(text, category_values) == []


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_search_finds_values_where_categories_are_shared(
    adult: Datasource, category_values: set[str], tmp_path: Path, encoding: str
) -> None:
    # The public schema carries every value when shared, so the search must find them all.
    text = _outbound(adult, tmp_path, encoding=encoding, share_categories=True)
    assert _leaked(text, category_values) == sorted(category_values)


def test_unshared_names_are_indices_and_the_modellers_plan_is_the_pods(adult: Datasource, tmp_path: Path) -> None:
    schema = adult.schema()
    selection = DataSelection(target="TARGET", columns=["sex", "age"])
    prepared = prepare_task_input(adult, schema, selection, tmp_path / "in", share_categories=False)
    structure = prepared.datastructure
    assert structure["feature_names"] == ["sex=#0", "sex=#1", "sex=#other", "age"]
    assert structure["target_categories"] == ["#0", "#1"]
    public = schema.public(False)
    assert all("categories" not in column for column in public["columns"])
    planned = plan_datastructure(
        Schema.from_public(public), selection, share_categories=Schema.public_shares_categories(public)
    )
    fixed = set(structure) - {"n_rows", "n_dropped"}
    assert {k: planned[k] for k in fixed} == {k: structure[k] for k in fixed}
