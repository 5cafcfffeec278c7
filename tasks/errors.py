"""The one distinction the orchestrator needs from stage errors: can a retry help?"""

from __future__ import annotations


class PermanentError(Exception):
    """A deterministic failure (bad data, bad config, a gate verdict): retrying the same input cannot fix it.

    Stage errors of this kind subclass it; the Airflow wiring fails such tasks without retries.
    """
