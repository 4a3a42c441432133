"""The pod's table: CSV/Parquet datasource, schema inference, schema hash and drift."""

from pod_agent.data.datasource import DEFAULT_BATCH_ROWS, Datasource, open_datasource
from pod_agent.data.schema import STYPES, ColumnSchema, Schema, Stype, check_drift, stype_reason

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "STYPES",
    "ColumnSchema",
    "Datasource",
    "Schema",
    "Stype",
    "check_drift",
    "stype_reason",
    "open_datasource",
]
