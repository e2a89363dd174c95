"""Pipefy GraphQL API client, with no Airflow imports."""
