"""The Airflow-free stage library: every pipeline stage as a typed function over URIs and small configs."""
