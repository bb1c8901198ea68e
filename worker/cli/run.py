"""`llmroute run --config FILE`: one member of the routing worker's consumer group.

Before anything else (no topic created, no port bound) the config, the router artifact,
telemetry keys and the broker are checked (`worker.preflight`); a problem is one line on stderr
and exit status 2. `--check` runs every check, prints one line each, and exits 0 or 1.

Environment overrides (a flag wins over its variable, a variable over the file):
LLMROUTE_BOOTSTRAP_SERVERS, LLMROUTE_GROUP_ID, LLMROUTE_METRICS_PORT, LLMROUTE_LOG_LEVEL,
LLMROUTE_LOG_FORMAT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os

from worker import preflight
from worker.cli import EXIT_CHECK_FAILED, PORT, Subparsers, UserError
from worker.logs import LOG_FORMATS, setup_logging

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
log = logging.getLogger(__name__)


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run one worker (a consumer-group member) until SIGTERM",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("--config", required=True, help="TOML configuration file")
    p.add_argument(
        "--check",
        action="store_true",
        help="check config, router, keys, telemetry and broker reach; start nothing",
    )
    p.add_argument("--bootstrap", help=f"Kafka bootstrap servers (${preflight.ENV_BOOTSTRAP})")
    p.add_argument("--group", help=f"consumer group id (${preflight.ENV_GROUP})")
    p.add_argument(
        "--metrics-port", type=PORT, help=f"0: any free port (${preflight.ENV_METRICS_PORT})"
    )
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help=f"default INFO (${preflight.ENV_LOG_LEVEL})",
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help=f"json lines, or text for people (${preflight.ENV_LOG_FORMAT}); default json",
    )
    p.set_defaults(handler=_run)


def _env(args: argparse.Namespace) -> dict[str, str]:
    """The process environment with the flags folded in (flags win)."""
    env = dict(os.environ)
    for flag, var in (
        (args.bootstrap, preflight.ENV_BOOTSTRAP),
        (args.group, preflight.ENV_GROUP),
        (args.metrics_port, preflight.ENV_METRICS_PORT),
        (args.log_level, preflight.ENV_LOG_LEVEL),
        (args.log_format, preflight.ENV_LOG_FORMAT),
    ):
        if flag is not None:
            env[var] = str(flag)
    return env


def _run(args: argparse.Namespace) -> int:
    env = _env(args)
    if args.check:
        checks = asyncio.run(preflight.run_checks(args.config, env))
        for check in checks:
            print(check.line())
        failed = [c.name for c in checks if not c.ok]
        print(f"{len(failed)} failed: {', '.join(failed)}" if failed else "ready to run")
        return EXIT_CHECK_FAILED if failed else 0
    try:
        setup_logging(
            env.get(preflight.ENV_LOG_LEVEL, "INFO"), fmt=env.get(preflight.ENV_LOG_FORMAT, "json")
        )
    except ValueError as exc:
        raise UserError(
            str(exc), f"check ${preflight.ENV_LOG_LEVEL} / ${preflight.ENV_LOG_FORMAT}"
        ) from None
    if logging.getLogger().level > logging.DEBUG:  # aiokafka's INFO is chatter per rebalance
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    config = preflight.load_config(args.config, env)
    router, artifact = preflight.check_router(config)
    if artifact is None:
        raise UserError(router.detail, router.hint)
    for check in (
        preflight.telemetry_check(config, env),
        asyncio.run(preflight.broker_check(config)),
    ):
        if not check.ok:
            raise UserError(check.detail, check.hint)
    blocked = None
    keys = preflight.keys_check(config, artifact, env)
    if not keys.ok:
        blocked = keys.detail
        log.error("%s: requests routed there fail; /readyz fails until it is set", keys.detail)
    from worker.app import serve

    # thousands of concurrent calls allocate many short-lived objects: with CPython's default
    # gen-0 threshold (700) collection took ~30% of client CPU (bench/provider_bench.py)
    gc.set_threshold(50_000, 50, 100)
    return asyncio.run(serve(config, blocked=blocked))
