-- One PostgreSQL server, two databases: Airflow's metadata and MLflow's tracking store / registry.
-- The owner is POSTGRES_USER (docker-compose.yaml); run once when the volume is first created.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
