"""Pipefy's GraphQL API without Airflow: documents, values, errors, pagination, the gql transport and
the clients. The hook (hooks/pipefy.py) turns an Airflow connection into :class:`PipefySettings`."""

from airflow_provider_crm.clients.pipefy.client import PipefyAsyncClient, PipefyClient
from airflow_provider_crm.clients.pipefy.settings import PipefySettings

__all__ = ["PipefyAsyncClient", "PipefyClient", "PipefySettings"]
