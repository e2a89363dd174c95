"""Extra links from task instances to the record they touched (the URL is pushed to XCom by the task)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink


class _XComUrlLink(BaseOperatorLink):
    xcom_key = ""

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key=self.xcom_key)
        return str(value) if value else ""


class PipefyCardLink(_XComUrlLink):
    """Link to the Pipefy card a task created, updated, moved or watched."""

    name = "Pipefy card"
    xcom_key = "pipefy_card_url"


class PipefyPipeLink(_XComUrlLink):
    """Link to the Pipefy pipe (or database table) a task exported or upserted into."""

    name = "Pipefy pipe"
    xcom_key = "pipefy_pipe_url"


class PipefyTableLink(_XComUrlLink):
    """Link to the Pipefy database table a task wrote to or exported."""

    name = "Pipefy table"
    xcom_key = "pipefy_table_url"


class PipedriveRecordLink(_XComUrlLink):
    """Link to the Pipedrive record a task created, updated or watched."""

    name = "Pipedrive record"
    xcom_key = "pipedrive_record_url"


class PipedriveListLink(_XComUrlLink):
    """Link to the Pipedrive list (deals, persons, organizations...) a task exported or upserted into."""

    name = "Pipedrive list"
    xcom_key = "pipedrive_list_url"
