"""Airflow-side reusable parts: the spec-to-DAG factory."""
