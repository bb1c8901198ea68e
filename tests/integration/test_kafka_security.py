"""The worker's Kafka security settings reach aiokafka and work against a secured broker.

The module starts its own single-node broker with `localkafka.start(..., secure=True)`: next to
PLAINTEXT it listens with SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), SSL, SASL_SSL and
MTLS (a client certificate is required), behind a throwaway CA made at start-up. Every client
here is built only from the worker's own settings path: a `[kafka]` table decoded into
`KafkaSettings` (as `worker.config` does), credentials named by environment variable, and
`KafkaSettings.common_kwargs()`. Each client is given only the secured address, and the broker
advertises each listener's own address, so no byte goes over PLAINTEXT.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

import schemas
from tests.kafka_support import localkafka, unique_topic
from tests.worker.support import (
    ROWS,
    SIM_KEYS,
    poll_until,
    replay_dataset,
    request_event,
    train_artifact,
    worker_config,
)
from worker.app import build
from worker.config.kafka import KafkaSettings
from worker.kafka.topics import ensure_topics
from worker.logs import setup_logging
from worker.sim import SimConfig, Simulator

pytestmark = pytest.mark.kafka

USER_ENV = "LLMROUTE_TEST_KAFKA_USERNAME"
PASSWORD_ENV = "LLMROUTE_TEST_KAFKA_PASSWORD"


@dataclass(frozen=True)
class SecureBroker:
    listeners: dict[str, str]  # SASL_PLAINTEXT, SSL, SASL_SSL, MTLS -> host:port
    ca_file: str
    client_cert_file: str
    client_key_file: str
    credentials: dict[str, dict[str, str]]  # mechanism -> {"username", "password"}
    broker_log: Path

    def env(self, mechanism: str) -> dict[str, str]:
        user = self.credentials[mechanism]
        return {USER_ENV: user["username"], PASSWORD_ENV: user["password"]}


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[SecureBroker]:
    lk = localkafka()
    name = f"pytest-secure-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        inst = lk.start(name, 1, 0, heap_mb=512, secure=True)
        info = inst.secure_json()
        yield SecureBroker(
            listeners=dict(info["listeners"]),
            ca_file=info["ca_file"],
            client_cert_file=info["client_cert_file"],
            client_key_file=info["client_key_file"],
            credentials=json.loads(Path(info["credentials_file"]).read_text()),
            broker_log=inst.logs / "node-1.log",
        )
    finally:
        lk.stop(name)


def settings(table: dict[str, Any]) -> KafkaSettings:
    """A `[kafka]` table decoded the way `worker.config.parse` decodes it."""
    return msgspec.convert(table, KafkaSettings)


def sasl_table(
    broker: SecureBroker, protocol: str, mechanism: str, *, tls: bool = False
) -> dict[str, Any]:
    table: dict[str, Any] = {
        "bootstrap_servers": broker.listeners[protocol],
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_username_env": USER_ENV,
        "sasl_password_env": PASSWORD_ENV,
    }
    if tls:
        table["ssl_cafile"] = broker.ca_file
    return table


async def roundtrip(kwargs: dict[str, Any], records: int = 3) -> list[bytes]:
    """Create a topic (admin), produce `records` (acks=all), consume them back from the start."""
    topic = unique_topic("secure")
    admin = AIOKafkaAdminClient(**kwargs)
    try:
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    sent = [f"{topic}-{i}".encode() for i in range(records)]
    producer = AIOKafkaProducer(acks="all", **kwargs)
    try:
        await producer.start()
        for value in sent:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, auto_offset_reset="earliest", enable_auto_commit=False, **kwargs
    )
    got: list[bytes] = []
    try:
        await consumer.start()
        for _ in range(50):
            batch = await consumer.getmany(timeout_ms=200)
            got += [r.value for rs in batch.values() for r in rs]
            if len(got) >= records:
                break
    finally:
        await consumer.stop()
    assert got == sent
    return got


async def start_producer(kwargs: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(request_timeout_ms=10_000, **kwargs)
    try:
        await producer.start()
    finally:
        await producer.stop()


# ---------------------------------------------------------------- each protocol works


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-512"),
        ("SASL_SSL", "SCRAM-SHA-256"),
        ("SASL_SSL", "PLAIN"),
    ],
)
async def test_sasl_produce_and_consume(
    secure_broker: SecureBroker, caplog: pytest.LogCaptureFixture, protocol: str, mechanism: str
) -> None:
    caplog.set_level(logging.INFO)
    kafka = settings(sasl_table(secure_broker, protocol, mechanism, tls=protocol == "SASL_SSL"))
    kwargs = kafka.common_kwargs(secure_broker.env(mechanism))
    if protocol == "SASL_SSL":
        assert kwargs["ssl_context"].check_hostname  # verified against the generated CA
    await roundtrip(kwargs)
    user = secure_broker.credentials[mechanism]["username"]
    assert f"Authenticated as {user} via {mechanism}" in caplog.text  # aiokafka.conn, per conn
    assert secure_broker.credentials[mechanism]["password"] not in caplog.text


async def test_tls_produce_and_consume_verifies_the_server(secure_broker: SecureBroker) -> None:
    kafka = settings(
        {
            "bootstrap_servers": secure_broker.listeners["SSL"],
            "security_protocol": "SSL",
            "ssl_cafile": secure_broker.ca_file,
        }
    )
    kwargs = kafka.common_kwargs({})
    assert kwargs["ssl_context"].check_hostname
    await roundtrip(kwargs)


async def test_mutual_tls_with_the_client_certificate(secure_broker: SecureBroker) -> None:
    table = {
        "bootstrap_servers": secure_broker.listeners["MTLS"],
        "security_protocol": "SSL",
        "ssl_cafile": secure_broker.ca_file,
    }
    await roundtrip(
        settings(
            {
                **table,
                "ssl_certfile": secure_broker.client_cert_file,
                "ssl_keyfile": secure_broker.client_key_file,
            }
        ).common_kwargs({})
    )
    # the same listener refuses a client that shows no certificate, and the broker says why
    with pytest.raises(KafkaConnectionError):
        await start_producer(settings(table).common_kwargs({}))
    port = secure_broker.listeners["MTLS"].rsplit(":", 1)[1]

    def refused() -> bool:
        return any(
            "Failed authentication" in line and f":{port}-" in line and "SSL handshake" in line
            for line in secure_broker.broker_log.read_text().splitlines()
        )

    assert await poll_until(refused, 10.0), "the broker logged no refused TLS handshake"


# ---------------------------------------------------------------- failures, and no secret shown


@pytest.mark.parametrize(
    ("protocol", "mechanism", "level"),
    [
        ("SASL_PLAINTEXT", "PLAIN", "INFO"),  # at DEBUG aiokafka prints PLAIN passwords (below)
        ("SASL_PLAINTEXT", "SCRAM-SHA-512", "DEBUG"),  # SCRAM never sends the password
        ("SASL_SSL", "SCRAM-SHA-256", "DEBUG"),
    ],
)
async def test_wrong_password_is_an_authentication_error_that_never_shows_it(
    secure_broker: SecureBroker,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    mechanism: str,
    level: str,
) -> None:
    caplog.set_level(level)
    wrong = f"not-the-password-{uuid.uuid4().hex}"
    env = {**secure_broker.env(mechanism), PASSWORD_ENV: wrong}
    kafka = settings(sasl_table(secure_broker, protocol, mechanism, tls=protocol == "SASL_SSL"))
    with pytest.raises(KafkaConnectionError) as err:
        await start_producer(kafka.common_kwargs(env))
    # aiokafka logs why the bootstrap failed, then raises a connection error
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("SaslAuthenticationFailed" in m for m in failures), failures
    real = secure_broker.credentials[mechanism]["password"]
    for text in (str(err.value), repr(err.value), caplog.text):
        assert wrong not in text
        assert real not in text


async def test_scram_user_with_the_plain_mechanism_is_refused(
    secure_broker: SecureBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """`sasl_mechanism` is what the client uses: the SCRAM user is unknown to PLAIN."""
    caplog.set_level(logging.INFO)
    kafka = settings(sasl_table(secure_broker, "SASL_PLAINTEXT", "PLAIN"))
    with pytest.raises(KafkaConnectionError):
        await start_producer(kafka.common_kwargs(secure_broker.env("SCRAM-SHA-512")))
    assert "SaslAuthenticationFailed" in caplog.text


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """A CA that did not sign the broker's certificate."""
    openssl = shutil.which("openssl")
    assert openssl is not None  # the secured broker was made with it
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(tmp_path / "other-ca.key"),
            "-out",
            str(tmp_path / "ca.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=some-other-ca",
        ],
        check=True,
        capture_output=True,
    )
    return tmp_path / "ca.pem"


async def test_tls_with_a_wrong_ca_fails(
    secure_broker: SecureBroker, other_ca: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for protocol, table in (
        ("SSL", {"security_protocol": "SSL"}),
        ("SASL_SSL", sasl_table(secure_broker, "SASL_SSL", "SCRAM-SHA-256")),
    ):
        kafka = settings(
            {
                **table,
                "bootstrap_servers": secure_broker.listeners[protocol],
                "ssl_cafile": str(other_ca),
            }
        )
        caplog.clear()
        with pytest.raises(KafkaConnectionError):
            await start_producer(kafka.common_kwargs(secure_broker.env("SCRAM-SHA-256")))
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_security_settings_that_would_be_ignored_are_refused_at_load() -> None:
    for table, words in (
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "sasl_password_env"),
        ({"ssl_cafile": "/ca.pem"}, "security_protocol SSL or SASL_SSL"),
        ({"security_protocol": "SSL", "sasl_username_env": "U"}, "SASL_PLAINTEXT or SASL_SSL"),
        ({"security_protocol": "SSL", "ssl_keyfile": "/k.pem"}, "ssl_certfile"),
    ):
        with pytest.raises(msgspec.ValidationError, match=words):
            settings(table)


def test_a_missing_credential_variable_is_named_without_a_value() -> None:
    kafka = settings(
        {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username_env": USER_ENV,
            "sasl_password_env": PASSWORD_ENV,
        }
    )
    with pytest.raises(ValueError, match=PASSWORD_ENV):
        kafka.common_kwargs({USER_ENV: "someone"})


async def test_plain_password_stays_out_of_the_worker_debug_log(
    secure_broker: SecureBroker,
) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = setup_logging("DEBUG", stream)
    try:
        kafka = settings(sasl_table(secure_broker, "SASL_PLAINTEXT", "PLAIN"))
        await start_producer(kafka.common_kwargs(secure_broker.env("PLAIN")))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert "Authenticated as" in stream.getvalue()
    assert secure_broker.credentials["PLAIN"]["password"] not in stream.getvalue()


# ---------------------------------------------------------------- the worker itself


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A router trained on 100 rows: routing quality does not matter here, only the plumbing."""
    return train_artifact(tmp_path_factory.mktemp("secure-router"), ROWS[:100])


@pytest.fixture
async def simulator(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Simulator]:
    for key, value in SIM_KEYS.items():
        monkeypatch.setenv(key, value)
    async with Simulator(SimConfig(seed=1), replay_dataset()) as server:
        yield server


async def test_worker_answers_requests_over_sasl_ssl_scram(
    secure_broker: SecureBroker,
    small_artifact: Path,
    simulator: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`build(config)` + `Worker.run()` with only SASL_SSL + SCRAM-SHA-256 settings."""
    caplog.set_level(logging.INFO)
    for key, value in secure_broker.env("SCRAM-SHA-256").items():
        monkeypatch.setenv(key, value)
    requests = unique_topic("secure-requests")
    topics = {
        "requests": requests,
        **{k: f"{requests}.{k}" for k in ("responses", "decisions", "dlq", "done", "feedback")},
        "batch_jobs": f"{requests}.batch-jobs",
        "control": f"{requests}.control",
    }
    kafka = sasl_table(secure_broker, "SASL_SSL", "SCRAM-SHA-256", tls=True)
    config = worker_config(
        kafka["bootstrap_servers"], topics, small_artifact, simulator.base_url, kafka=kafka
    )
    assert config.kafka.security_protocol == "SASL_SSL"
    await ensure_topics(config.kafka.common_kwargs(), config.topics, 1)

    n = 6
    producer = AIOKafkaProducer(acks="all", **config.kafka.common_kwargs())
    try:
        await producer.start()
        for i in range(n):
            event = request_event(ROWS[i], i)
            await producer.send_and_wait(
                requests, schemas.encode(event), key=event.request_id.encode()
            )
    finally:
        await producer.stop()

    app = build(config)
    try:
        task = asyncio.create_task(app.worker.run())
        try:
            await poll_until(lambda: app.worker.stats["published"] >= n or task.done(), 60)
            if task.done():
                task.result()  # a worker that died says why
        finally:
            app.worker.stop()
            await asyncio.wait_for(task, timeout=30)
    finally:
        await app.close()
    assert app.worker.stats["published"] == n

    consumer = AIOKafkaConsumer(
        topics["responses"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **config.kafka.common_kwargs(),
    )
    responses: list[schemas.RouteResponse] = []
    try:
        await consumer.start()
        for _ in range(50):
            batch = await consumer.getmany(timeout_ms=200)
            responses += [
                schemas.decode(r.value, schemas.RouteResponse) for rs in batch.values() for r in rs
            ]
            if len(responses) >= n:
                break
    finally:
        await consumer.stop()
    assert sorted(r.request_id for r in responses) == [f"req-{i:06d}" for i in range(n)]
    assert all(r.status == "ok" for r in responses), [r.error for r in responses]
    assert "Authenticated as scramuser via SCRAM-SHA-256" in caplog.text
    assert secure_broker.credentials["SCRAM-SHA-256"]["password"] not in caplog.text
