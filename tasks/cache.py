"""Work never redone: validation verdicts and feature sets, addressed by what they were computed from.

Under ``cache/<pipeline>/`` of the data root (:meth:`tasks.storage.DataLayout.cache_dir`)::

    validation/<key>.json     a batch's verdict: key = sha256(parquet SHA-256, suite hash, GX version)
    features/<key>/           a window's training rows, features and holdout: key = sha256(each partition's
                              parquet SHA-256, the spec's features section, columns, holdout split)

A key names everything the result depends on, so a changed partition, suite, spec section or library
version is a different key (a miss), never a stale hit. Entries are written atomically and never edited;
a reader that finds none (or an unreadable one) computes the result again. Looking a verdict up imports
neither Great Expectations nor pandas. ``python -m tasks cache clear --pipeline P [--kind K]`` removes
entries (:func:`clear`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.storage import atomic_path, write_json

if TYPE_CHECKING:
    from tasks.spec import PipelineSpec
    from tasks.storage import DataLayout

log = logging.getLogger(__name__)

VALIDATION = "validation"
FEATURES = "features"
KINDS = (VALIDATION, FEATURES)
FEATURE_FILES = ("train_raw.parquet", "train_features.parquet", "holdout.parquet")
_FORMAT = 1  # bump when an entry's meaning changes: every older entry becomes a miss


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@functools.cache
def library_version(package: str) -> str:
    """Installed version of ``package`` (from its metadata: nothing is imported), ``none`` if absent.

    Read once per process (each read parses the distribution's METADATA: 6 ms, and a 28-day window asked 56
    times); a process keeps the library it imported, so the first answer stays the right one.
    """
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def suite_hash(path: Path) -> str:
    """SHA-256 of a suite's canonical JSON (key order and whitespace do not count; any other edit does)."""
    try:
        return _digest({"suite": json.loads(path.read_text())})
    except (OSError, json.JSONDecodeError):
        return "unreadable"  # never a hit: loading the suite fails with its own message


def validation_key(parquet_sha256: str, suite: str) -> str:
    """Key of a batch's verdict: its bytes, the suite's hash, and the versions that judge it."""
    parts = {
        "format": _FORMAT,
        "data": parquet_sha256,
        "suite": suite,
        "great_expectations": library_version("great_expectations"),
        "pandas": library_version("pandas"),
    }
    return _digest(parts)


@dataclass(frozen=True)
class Verdict:
    """A cached judgement of one batch: its failed expectations (none: valid) and the report that judged it."""

    failures: list[dict[str, Any]]
    report: str
    partition: str

    @property
    def valid(self) -> bool:
        """Whether the batch passed the suite."""
        return not self.failures


def get_verdict(layout: DataLayout, pipeline: str, key: str) -> Verdict | None:
    """The cached verdict under ``key``, or None (never judged, or the entry is unreadable)."""
    path = layout.cache_dir(pipeline, VALIDATION) / f"{key}.json"
    try:
        raw = json.loads(path.read_text())
        return Verdict(failures=list(raw["failures"]), report=str(raw["report"]), partition=str(raw["partition"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable validation cache entry %s: %s", path, exc)
        return None


def put_verdict(layout: DataLayout, pipeline: str, key: str, verdict: Verdict, parts: dict[str, str]) -> Path:
    """Record a verdict (atomically; a concurrent writer of the same key writes the same content)."""
    path = layout.cache_dir(pipeline, VALIDATION) / f"{key}.json"
    payload = {"failures": verdict.failures, "report": verdict.report, "partition": verdict.partition}
    return write_json(path, payload | {"key_parts": parts})


def features_key(spec: PipelineSpec, partitions: dict[str, str]) -> str:
    """Key of a window's feature set: each partition's bytes and everything of the spec the build reads."""
    parts = {
        "format": _FORMAT,
        "partitions": sorted(partitions.items()),
        "features": spec.features.model_dump(mode="json"),
        "schema": spec.schema_.model_dump(mode="json"),
        "partition_column": spec.source.partition_column,
        "holdout_days": spec.training.holdout_days,
        "pandas": library_version("pandas"),
        "pyarrow": library_version("pyarrow"),
        "numpy": library_version("numpy"),
    }
    if spec.features.custom:  # the team's transformer code: edited code, new features
        from tasks.features import custom_code_digest

        parts["custom_code"] = custom_code_digest(spec.features)
    return _digest(parts)


def get_features(layout: DataLayout, pipeline: str, key: str) -> tuple[dict[str, Any], Path] | None:
    """A cached feature set: its summary (rows, partitions) and folder, or None when incomplete or absent."""
    folder = layout.cache_dir(pipeline, FEATURES) / key
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable feature cache entry %s: %s", folder, exc)
        return None
    if not all((folder / name).is_file() for name in FEATURE_FILES):
        return None
    return meta, folder


def put_features(layout: DataLayout, pipeline: str, key: str, files: dict[str, Path], meta: dict[str, Any]) -> Path:
    """Keep a run's feature files under ``key`` (hard links when possible); ``meta.json`` last marks it complete."""
    folder = layout.cache_dir(pipeline, FEATURES) / key
    for name in FEATURE_FILES:
        link_or_copy(files[name], folder / name)
    write_json(folder / "meta.json", meta)
    return folder


def link_or_copy(src: Path, target: Path) -> Path:
    """Put ``src``'s bytes at ``target`` atomically: a hard link (no copy) or, across devices, a copy."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return target


def clear(layout: DataLayout, pipeline: str, kind: str | None = None) -> dict[str, int]:
    """Remove a pipeline's cache entries (of one ``kind``, or all); returns how many of each were removed.

    Raises:
        ValueError: ``kind`` is not ``validation`` or ``features``.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"cache kind is one of {', '.join(KINDS)}, not {kind!r}")
    removed = {}
    for name in [kind] if kind else list(KINDS):
        folder = layout.cache_dir(pipeline, name)
        removed[name] = sum(1 for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else 0
        shutil.rmtree(folder, ignore_errors=True)
    return removed
