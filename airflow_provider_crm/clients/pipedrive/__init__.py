"""Pipedrive REST API client (v2 for core entities, v1 where v2 has nothing), with no Airflow imports."""
