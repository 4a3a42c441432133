"""Schema hash, public view and drift."""

from __future__ import annotations

import pytest

from pod_agent.data import ColumnSchema, Schema, check_drift, open_datasource
from pod_agent.errors import DataError, SchemaDrift

BASE = Schema(
    columns=[
        ColumnSchema(name="age", arrow_type="int64", stype="continuous"),
        ColumnSchema(name="sex", arrow_type="string", stype="categorical", categories=["f", "m"]),
    ],
    row_count=10,
)


def _with(**changes: object) -> Schema:
    columns = [BASE.columns[0], BASE.columns[1].model_copy(update=changes)]
    return Schema(columns=columns, row_count=10)


def test_hash_is_stable_across_reads(write_file, section) -> None:
    path = write_file("t.csv", "a,b\n1,x\n2,y\n")
    assert open_datasource(section(path)).schema().hash() == open_datasource(section(path)).schema().hash()


@pytest.mark.parametrize(
    "changed",
    [
        {"name": "gender"},
        {"arrow_type": "large_string"},
        {"categories": ["f", "m", "x"]},
        {"stype": "text", "categories": None},
    ],
)
def test_hash_changes_with_name_type_or_categories(changed: dict[str, object]) -> None:
    assert _with(**changed).hash() != BASE.hash()


def test_hash_ignores_row_count() -> None:
    assert BASE.model_copy(update={"row_count": 99}).hash() == BASE.hash()


def test_public_view_hides_categories_unless_shared() -> None:
    hidden = BASE.public(share_categories=False)
    assert hidden["columns"][1] == {"name": "sex", "arrow_type": "string", "stype": "categorical", "n_categories": 2}
    assert hidden["hash"] == BASE.hash() and hidden["row_count"] == 10
    assert BASE.public(share_categories=True)["columns"][1]["categories"] == ["f", "m"]


def test_column_lookup_names_the_choices() -> None:
    with pytest.raises(
        DataError, match=r"column 'income' is not in the datasource schema - choose one of \['age', 'sex'\]"
    ):
        BASE.column("income")


def test_same_columns_with_more_rows_is_no_drift() -> None:
    check_drift(BASE, BASE.model_copy(update={"row_count": 12}))


def test_drift_reports_added_dropped_and_changed() -> None:
    current = Schema(
        columns=[
            ColumnSchema(name="age", arrow_type="double", stype="continuous"),
            ColumnSchema(name="zip", arrow_type="string", stype="text"),
        ],
        row_count=10,
    )
    with pytest.raises(SchemaDrift, match=r"added \['zip'\]; dropped \['sex'\]; changed type \['age'\]") as info:
        check_drift(BASE, current)
    assert (info.value.added, info.value.dropped, info.value.changed) == (["zip"], ["sex"], ["age"])


def test_new_category_counts_as_changed() -> None:
    with pytest.raises(SchemaDrift) as info:
        check_drift(BASE, _with(categories=["f", "m", "x"]))
    assert info.value.changed == ["sex"]
