"""Kafka, topic and loop settings: frozen, typed, units in the names.

Security settings pass straight through to aiokafka (TLS, SASL PLAIN and SCRAM); secrets are
given as the *names* of environment variables, read when the first client is built: the client
options (SSLContext, credentials) are built once per process (`KafkaSettings.common_kwargs`).
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import schemas
from worker.config.base import Section


class KafkaSettings(Section, frozen=True, kw_only=True):
    bootstrap_servers: str = "127.0.0.1:19092"
    group_id: str = "llmroute"
    group_instance_id: str | None = None  # static membership; `${POD_NAME}`-style env expansion
    client_id: str = "llmroute-worker"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username_env: str | None = None
    sasl_password_env: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    session_timeout_ms: int = 45_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    max_poll_records: int = 500
    fetch_max_bytes: int = 50 * 1024 * 1024
    producer_linger_ms: int = 5
    # aiokafka keeps one open batch per partition and makes senders wait while it drains: with
    # the 16 KiB default, a ~1 KiB response per request capped a worker near 300 responses/s
    producer_batch_bytes: int = 1024 * 1024
    producer_max_request_bytes: int = 4 * 1024 * 1024
    producer_compression: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    # responses + dedupe markers + offsets in one transaction per interval
    # (`worker.kafka.transactions`): a killed member leaves no response a read_committed
    # reader sees twice
    transactions: bool = False
    transaction_interval_ms: int = 100
    # an open transaction of a member that died is aborted after this long at the latest (at
    # once when it restarts with the same group_instance_id); read_committed readers wait for it.
    # A live member whose transaction stays open longer (an overloaded host) is fenced and stops
    transaction_timeout_ms: int = 60_000

    def __post_init__(self) -> None:
        # a security setting that the protocol would silently ignore is a mistake: say so at load
        sasl = self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        if sasl and not (self.sasl_username_env and self.sasl_password_env):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_username_env and "
                "sasl_password_env (names of environment variables)"
            )
        if not sasl and (self.sasl_mechanism or self.sasl_username_env or self.sasl_password_env):
            raise ValueError("sasl_* settings need security_protocol SASL_PLAINTEXT or SASL_SSL")
        if not tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise ValueError("ssl_* settings need security_protocol SSL or SASL_SSL")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate for mTLS)")

    def common_kwargs(self, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Connection and security arguments shared by aiokafka consumers, producers, admins.

        For the process environment (`env` None) they are built once per settings: the
        SSLContext (certificate files read) and the SASL credentials are shared by every client
        of the process; each call returns its own dict. An explicit `env` builds them anew.
        """
        if env is None:
            return dict(_process_options(self))
        return self._build(env)

    def _build(self, env: Mapping[str, str]) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            ctx = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            ctx.check_hostname = self.ssl_check_hostname
            kw["ssl_context"] = ctx
        if self.security_protocol.startswith("SASL"):
            kw["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            kw["sasl_plain_username"] = _env(env, self.sasl_username_env)
            kw["sasl_plain_password"] = _env(env, self.sasl_password_env)
        return kw

    def instance_id(self) -> str | None:
        """The static member id, with `$VAR` / `${VAR}` expanded (e.g. `${POD_NAME}`)."""
        return os.path.expandvars(self.group_instance_id) if self.group_instance_id else None


@functools.cache
def _process_options(settings: KafkaSettings) -> Mapping[str, Any]:
    return MappingProxyType(settings._build(os.environ))


def _env(env: Mapping[str, str], name: str | None) -> str | None:
    if name is None:
        return None
    if name not in env:
        raise ValueError(f"environment variable {name} (a Kafka SASL credential) is not set")
    return env[name]


TOPIC_ROLES = (
    "requests",
    "responses",
    "decisions",
    "feedback",
    "dlq",
    "done",
    "batch_jobs",
    "control",
    "cache",
    "shadow",
    "feedback_dlq",
    "spend",
    "journal",
)


class TopicSettings(Section, frozen=True, kw_only=True):
    requests: str = schemas.TOPICS["requests"]
    responses: str = schemas.TOPICS["responses"]
    decisions: str = schemas.TOPICS["decisions"]
    feedback: str = schemas.TOPICS["feedback"]
    dlq: str = schemas.TOPICS["dlq"]
    batch_jobs: str = schemas.TOPICS["batch_jobs"]
    control: str = schemas.TOPICS["control"]
    shadow: str = schemas.TOPICS["shadow"]  # shadow answers (worker.pipeline shadow mode)
    cache: str = schemas.TOPICS["cache"]  # compacted: semantic cache entries (routers.semcache)
    done: str = "llm.requests.done"  # compacted dedupe log: request ids already answered
    feedback_dlq: str = "llm.feedback.dlq"  # feedback Langfuse refused, with its answer
    spend: str = "llm.spend"  # compacted: spend per tenant, member, window (worker.pipeline.spend)
    # paid answers written as they arrive (`loop.answer_journal`, worker.kafka.journal); not
    # compacted: deleted after `journal_retention_ms` (set when the worker creates it)
    journal: str = "llm.requests.journal"
    journal_retention_ms: int = 24 * 3600 * 1000
    # topics the worker (or `llmroute topics create`) creates: partitions bound how many members
    # of the group do work (a member beyond the request topic's partition count idles)
    partitions: int = 6
    replication_factor: int = 1

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.replication_factor < 1:
            raise ValueError("topics partitions and replication_factor must be >= 1")
        if self.journal_retention_ms < 60_000:
            raise ValueError("topics journal_retention_ms must be at least 60000 (a minute)")

    def names(self) -> dict[str, str]:
        """Every topic the worker uses, by role (`requests`, `responses`, ...)."""
        return {role: getattr(self, role) for role in TOPIC_ROLES}


class LoopSettings(Section, frozen=True, kw_only=True):
    max_in_flight: int = 2_000  # pause fetching at this many unfinished requests
    resume_below: int = 1_500  # resume under this many
    # ... or at this many record bytes in flight (resume under 3/4 of it): memory is bounded
    # by bytes too, whatever the request sizes (see docs/deployment.md for the arithmetic)
    max_in_flight_bytes: int = 64 * 1024 * 1024
    drain_timeout_s: float = 30.0  # SIGTERM: finish in-flight work for at most this long
    revoke_drain_timeout_s: float = 10.0  # rebalance: wait this long for a revoked partition
    # out of its group (no join or rebalance completed) this long: a warning, then once a minute
    join_warn_s: float = 60.0
    commit_interval_ms: int = 500
    max_request_bytes: int = 1_000_000  # larger records go to the dead-letter topic
    dedupe_window: int = 50_000  # answered request ids remembered per partition
    publish_decisions: bool = True
    worker_id: str | None = None
    # a record whose result its topic refuses (too large, an invalid or absent reply topic) is
    # tried this often, then dead-lettered; broker outages are retried until the member stops
    max_publish_attempts: int = 3
    reply_publish_timeout_s: float = 5.0  # a reply topic without metadata by then: a failure
    reply_topic_pattern: str | None = None  # when set, reply topics must match it (fullmatch)
    # each paid answer is written to the journal topic as it arrives (not in a transaction): a
    # member killed before the response is published or committed leaves it to the next owner,
    # which publishes it instead of calling the model again (worker.kafka.journal)
    answer_journal: bool = True
    journal_window: int = 5_000  # journal entries read back per partition on assignment
    # requests in the pipeline (routing and model calls) at once; the others of the in-flight
    # ones wait without having cost anything, so a crash repeats at most this many calls.
    # None: no limit but max_in_flight. Throughput is at most this / model latency
    max_model_calls: int | None = None

    def __post_init__(self) -> None:
        if self.journal_window < 0:
            raise ValueError("loop journal_window must be >= 0")
        if not self.join_warn_s > 0:
            raise ValueError("loop join_warn_s must be > 0")
        if self.max_model_calls is not None and self.max_model_calls < 1:
            raise ValueError("loop max_model_calls must be >= 1 (or absent: no limit)")
