-- One PostgreSQL server, three databases: Airflow's metadata, MLflow's tracking store / registry, Optuna's studies.
-- The owner is POSTGRES_USER (docker-compose.yaml); run once when the volume is first created.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
CREATE DATABASE optuna;
