"""A pipeline's SQL source gets its database URL from an Airflow connection, at task run time only.

A spec names an environment variable (``source.sql.url_env``), never the URL. On a worker, the task bodies
that pull a day (the landing sensor, ingest) call :func:`export_source_url` first: when the variable is unset
and the spec names ``source.sql.conn_id``, the connection's URI goes into it, registered with Airflow's secret
masker so no log shows it. DAG files never call this (no Connection lookup at parse time). In Kubernetes mode a
pod reads the variable from the pipeline's Secret (see :mod:`mlops_airflow.pods`).
"""

from __future__ import annotations

import os

_SCHEMES = {"postgres://": "postgresql://"}  # Airflow's postgres connection URI -> SQLAlchemy's dialect name


def sqlalchemy_url(uri: str) -> str:
    """An Airflow connection URI as SQLAlchemy accepts it (``postgres://`` -> ``postgresql://``)."""
    for airflow, sqlalchemy in _SCHEMES.items():
        if uri.startswith(airflow):
            return sqlalchemy + uri[len(airflow) :]
    return uri


def export_source_url(pipeline: str) -> str | None:
    """Fill ``source.sql.url_env`` from ``source.sql.conn_id`` when it is unset; returns the variable set, if any."""
    from tasks.spec import load_spec

    sql = load_spec(pipeline).source.sql
    if sql is None or not sql.conn_id or os.environ.get(sql.url_env):
        return None
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException
    from airflow.sdk.log import mask_secret

    try:
        connection = Connection.get(sql.conn_id)
    except AirflowNotFoundException:  # the pull then fails at once, naming the variable and the connection
        return None
    url = sqlalchemy_url(connection.get_uri())
    mask_secret(url)
    os.environ[sql.url_env] = url
    return sql.url_env
