"""Command line: stages, the model server and the promotion ledger.

``python -m tasks <stage> --pipeline NAME --args JSON [--result FILE]``, ``python -m tasks serve``,
``python -m tasks ledger [--pipeline NAME] [--limit N] [--json]`` (read the promotion ledger),
``python -m tasks suite --pipeline NAME --sample FILE [--out PATH]`` (write a starter expectation suite) and
``python -m tasks spec-schema [--check]`` (regenerate the spec reference and its JSON Schema) and
``python -m tasks cache clear --pipeline NAME [--kind validation|features]`` (forget kept validation
verdicts and feature sets, so the next run computes them again).

This is the contract a Kubernetes pod runs: the same stage functions the Airflow tasks call. With
``--result`` the outcome is written as a manifest in the shared store, which is how a pod's result gets
back to Airflow (not through the XCom sidecar)::

    {"ok": true,  "stage": "train_model", "pipeline": "bike_demand", "result": {...}}
    {"ok": false, "stage": "train_model", "pipeline": "bike_demand", "error": "...", "error_type": "...",
     "permanent": true}      # permanent: bad data, config or gate verdict; retrying will not help

The result is also printed to stdout. Exit codes: 0 success, 1 stage failure, 2 bad arguments: a
``--pipeline`` that is not a spec in the specs folder, a day that is not strict ``YYYY-MM-DD``, or a ``..``
path segment anywhere in an argument, or a keyword the stage does not take (the message lists the ones
it takes).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from tasks.redact import redact
from tasks.storage import write_json

# stage keyword arguments that name a day, or a list of days: strict YYYY-MM-DD
_DAY_ARGS = frozenset({"day", "start", "end", "as_of"})
_DAY_LIST_ARGS = frozenset({"partitions", "corrupt"})
_PARENT = re.compile(r"(^|[/\\])\.\.($|[/\\])")


def _no_parent(value: str) -> str:
    """An argument with no ``..`` path segment (an argparse ``type``)."""
    if _PARENT.search(value):
        raise argparse.ArgumentTypeError(f"'..' path segments are not allowed: {value[:80]!r}")
    return value


def _strings(value: Any, where: str) -> list[tuple[str, str]]:
    """Every string in a JSON value (keys too), with where it is."""
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k, where) + _strings(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, f"{where}[{i}]")]
    return []


def check_stage_args(kwargs: Any) -> str | None:
    """Why ``--args`` is refused (None when it is fine).

    Refused: not an object, a ``..`` path segment anywhere, or a day (``day``, ``start``, ``end``, ``as_of``,
    ``partitions``, ``corrupt``) that is not strict ``YYYY-MM-DD``.
    """
    from tasks.storage import LayoutError, strict_day

    if not isinstance(kwargs, dict):
        return f"--args must be a JSON object, got {type(kwargs).__name__}"
    for where, text in _strings(kwargs, "--args"):
        if _PARENT.search(text):
            return f"{where}: '..' path segments are not allowed: {text[:80]!r}"
    try:
        for key in _DAY_ARGS & kwargs.keys():
            if kwargs[key] is not None:
                strict_day(kwargs[key])
        for key in _DAY_LIST_ARGS & kwargs.keys():
            days = kwargs[key]
            if days is not None and not isinstance(days, list):
                return f"--args {key} must be a list of days (YYYY-MM-DD), got {type(days).__name__}"
            for day in days or []:
                strict_day(day)
    except LayoutError as exc:
        return f"--args {key}: {exc}"
    return None


def stage_arg_problem(stage: Any, kwargs: dict[str, Any]) -> str | None:
    """Why ``kwargs`` cannot call ``stage`` (unknown or missing keywords, with the accepted ones), or None."""
    import inspect

    params = [p for p in inspect.signature(stage).parameters.values() if p.name != "pipeline"]
    accepted = [p.name for p in params]
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    unknown = sorted(set(kwargs) - set(accepted))
    missing = [name for name in required if name not in kwargs]
    if not unknown and not missing:
        return None
    parts = [f"unknown {unknown}"] if unknown else []
    parts += [f"missing {missing}"] if missing else []
    shown = ", ".join(f"{n} (required)" if n in required else n for n in accepted) or "none"
    return f"--args: {'; '.join(parts)}; accepted arguments: {shown}"


def _parser() -> argparse.ArgumentParser:
    from tasks.spec import pipeline_names, pipelines_dir
    from tasks.stages import STAGES

    names = pipeline_names()
    parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    where = f"a spec under {pipelines_dir()}"
    for name, fn in STAGES.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").splitlines()[0])
        p.add_argument("--pipeline", required=True, choices=names, help=where)
        p.add_argument("--args", default="{}", help="JSON object of the stage's keyword arguments")
        p.add_argument("--result", type=lambda v: Path(_no_parent(v)), help="also write the JSON result to this file")
    serve = sub.add_parser("serve", help="run the model server in the foreground")
    serve.add_argument("--pipelines", nargs="+", choices=names, help="pipelines to serve (default: every spec)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the port and the prediction log (default 1)"
    )
    ledger = sub.add_parser("ledger", help="print the promotion ledger (append-only: who, what, when, why)")
    ledger.add_argument("--pipeline", type=_no_parent, help="only this pipeline's entries")
    ledger.add_argument("--limit", type=int, help="only the last N entries")
    ledger.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    suite = sub.add_parser("suite", help="write a starter expectation suite from the schema and a sample file")
    suite.add_argument("--pipeline", required=True, choices=names, help=where)
    suite.add_argument("--sample", required=True, type=_no_parent, help="CSV (any delimiter, gzip ok) or Parquet")
    suite.add_argument("--out", type=_no_parent, help="where to write it (default: the spec's expectations path)")
    schema = sub.add_parser("spec-schema", help="regenerate docs/spec-reference.md and docs/pipeline-spec.schema.json")
    schema.add_argument("--check", action="store_true", help="exit 1 when the committed files are stale")
    cache = sub.add_parser("cache", help="the kept validation verdicts and feature sets (tasks.cache)")
    cache.add_argument("action", choices=["clear"], help="clear: remove entries; the next run computes them again")
    cache.add_argument("--pipeline", required=True, choices=names, help=where)
    cache.add_argument("--kind", choices=["validation", "features"], help="only this kind (default: both)")
    return parser


def _serve(args: argparse.Namespace) -> int:
    from tasks.serving.app import serve
    from tasks.settings import get_settings
    from tasks.spec import list_specs

    names = args.pipelines or [s.name for s in list_specs(resolve_code=False)]
    serve(get_settings(), names, args.host, args.port, args.workers)
    return 0


def _ledger(args: argparse.Namespace) -> int:
    from tasks.ledger import PromotionLedger, format_table
    from tasks.settings import get_settings

    entries = PromotionLedger(get_settings().ledger_uri).read(args.pipeline, args.limit)
    if args.json:
        for entry in entries:
            print(json.dumps(entry.to_dict(), sort_keys=True))  # noqa: T201 - the CLI's output
    else:
        print(format_table(entries))  # noqa: T201 - the CLI's output
    return 0


def _suite(args: argparse.Namespace) -> int:
    from tasks.suite import write_suite

    print(json.dumps(write_suite(args.pipeline, args.sample, args.out)))  # noqa: T201 - the CLI's output
    return 0


def _spec_schema(args: argparse.Namespace) -> int:
    from tasks.spec_doc import write_reference

    changed = write_reference(check=args.check)
    for path in changed:
        print(f"{'stale' if args.check else 'wrote'}: {path}")  # noqa: T201 - the CLI's output
    return 1 if (args.check and changed) else 0


def _cache(args: argparse.Namespace) -> int:
    from tasks.cache import clear
    from tasks.settings import get_settings
    from tasks.storage import DataLayout

    removed = clear(DataLayout(get_settings().data_root), args.pipeline, args.kind)
    print(json.dumps({"pipeline": args.pipeline, "removed": removed}))  # noqa: T201 - the CLI's output
    return 0


_TOOLS = {"serve": _serve, "ledger": _ledger, "suite": _suite, "spec-schema": _spec_schema, "cache": _cache}


def main(argv: list[str] | None = None) -> int:
    """Run one stage; exit 0 with its JSON result, or 1 with the error on stderr."""
    from tasks.redact import install

    install()  # every log line and traceback of this process is masked (URI passwords, the admin token)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    from tasks.settings import get_settings, register_secrets

    register_secrets(get_settings())

    if args.command in _TOOLS:
        return _TOOLS[args.command](args)
    from tasks.stages import STAGES

    try:
        kwargs: dict[str, Any] = json.loads(args.args)
    except json.JSONDecodeError as exc:
        print(f"--args is not JSON: {exc}", file=sys.stderr)  # noqa: T201 - CLI error channel
        return 2
    refused = check_stage_args(kwargs) or stage_arg_problem(STAGES[args.command], kwargs)
    if refused:
        print(f"python -m tasks {args.command}: {refused}", file=sys.stderr)  # noqa: T201 - CLI error channel
        return 2
    manifest: dict[str, Any] = {"stage": args.command, "pipeline": args.pipeline}
    try:
        result = STAGES[args.command](args.pipeline, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the CLI reports any stage failure the same way
        logging.getLogger("tasks").error("%s failed: %s", args.command, exc)
        if args.result:
            from tasks.errors import PermanentError

            failure = {
                "error": redact(str(exc)),
                "error_type": type(exc).__name__,
                "permanent": isinstance(exc, PermanentError),
            }
            write_json(args.result, manifest | {"ok": False} | failure)
        return 1
    if args.result:
        write_json(args.result, manifest | {"ok": True, "result": result})
    print(json.dumps(result, default=str))  # noqa: T201 - the result is the CLI's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
