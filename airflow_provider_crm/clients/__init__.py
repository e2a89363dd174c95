"""Plain API clients, one package per service: no Airflow imports (hooks wrap them)."""
