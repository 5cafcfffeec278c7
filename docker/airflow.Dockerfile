# The Airflow image: api-server, scheduler, dag-processor, triggerer (LocalExecutor in docker-compose;
# KubernetesExecutor / CeleryExecutor with deploy/helm/values.yaml). It holds the DAGs, the plugin (DAG
# factory, StagePodOperator) and the stage library, so light stages run in the worker and heavy ones in
# the task image (kubernetes mode) or right here (local mode). CPU-only torch: no stage trains on a GPU here.
#   docker build -f docker/airflow.Dockerfile -t ghcr.io/mlops-airflow/airflow:0.1.0 .
FROM apache/airflow:slim-3.3.2-python3.11

ENV GX_ANALYTICS_ENABLED=False \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/project/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/project/plugins \
    MLP_DATA_ROOT=/data

USER root
RUN mkdir -p /opt/project /data && chown -R airflow:0 /opt/project /data
USER airflow
WORKDIR /opt/project
COPY --chown=airflow:0 requirements.lock pyproject.toml README.md ./
# the lock already pins apache-airflow to the base image's version; torch from PyTorch's CPU index
RUN grep -v '^torch==' requirements.lock > /tmp/req.txt \
 && pip install --no-cache-dir -r /tmp/req.txt \
 && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY --chown=airflow:0 tasks ./tasks
COPY --chown=airflow:0 plugins ./plugins
COPY --chown=airflow:0 dags ./dags
COPY --chown=airflow:0 config ./config
COPY --chown=airflow:0 include ./include
RUN pip install --no-cache-dir --no-deps -e .
