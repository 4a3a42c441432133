"""The pod's table: CSV/Parquet datasource, schema inference, schema hash and drift."""

from pod_agent.data.adult import write_adult
from pod_agent.data.column_store import ColumnStore
from pod_agent.data.datasource import DEFAULT_BATCH_ROWS, Datasource, open_datasource
from pod_agent.data.input_cache import TaskInputCache
from pod_agent.data.partition import partition_by_category
from pod_agent.data.schema import STYPES, ColumnSchema, Schema, Stype, check_drift, stype_reason
from pod_agent.data.tabular_layout import CompactRows, TabularLayout, dense_x
from pod_agent.data.task_input import (
    DATA_FILE_NAME,
    ROW_SHAPE_METADATA_KEY,
    SPLIT_CODES,
    assign_splits,
    plan_datastructure,
    prepare_task_input,
    read_datastructure,
)

__all__ = [
    "DATA_FILE_NAME",
    "DEFAULT_BATCH_ROWS",
    "ROW_SHAPE_METADATA_KEY",
    "SPLIT_CODES",
    "STYPES",
    "ColumnSchema",
    "ColumnStore",
    "CompactRows",
    "Datasource",
    "Schema",
    "Stype",
    "TabularLayout",
    "TaskInputCache",
    "assign_splits",
    "check_drift",
    "dense_x",
    "open_datasource",
    "partition_by_category",
    "plan_datastructure",
    "prepare_task_input",
    "read_datastructure",
    "stype_reason",
    "write_adult",
]
