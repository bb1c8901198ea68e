#!/usr/bin/env python3
"""Local Apache Kafka (KRaft, no ZooKeeper) on 127.0.0.1, from Maven Central jars.

Standard library only, so it runs before (and without) the project's virtualenv.

    localkafka.py jars                         resolve the broker jars into .kafka/jars (cached)
    localkafka.py tools-jars                   resolve Kafka's command-line tools (console producer
                                               and consumer, consumer groups) into .kafka/tools-jars
    localkafka.py tool NAME -- ARGS ...        run one of them (console-producer, console-consumer,
                                               consumer-groups) with those jars
    localkafka.py up [--name N] [--port P]     start a single combined broker+controller node
                     [--secure]                ... with SASL_PLAINTEXT, SSL, SASL_SSL and mTLS
                                               listeners too (see "Secured listeners" below)
    localkafka.py cluster-up [--name N]        start three nodes (RF 3, min.insync.replicas 2)
    localkafka.py down [--name N | --all]      stop every node of an instance (default: `single`,
                                               the one `up` starts), delete its data; --all: every
                                               instance here, other runs' included
    localkafka.py clean                        delete .kafka (jars, data, logs) unless an instance
                                               still runs (a `make test` in progress): then say so
    localkafka.py stop-node --name N --node I  stop one node of a running instance (failover tests)
    localkafka.py status [--name N]            print the instance's bootstrap and live nodes
    localkafka.py run [--name N] -- CMD ...    start a broker, run CMD with KAFKA_BOOTSTRAP set,
                                               stop the broker whatever CMD did; exit with CMD's rc

`--port 0` picks free ports. Every instance keeps its data in `.kafka/<name>/` and its logs in
`.kafka/logs/<name>/`; an instance that is already running is never started twice. Readiness means
the broker answered a Kafka Metadata request listing every node of the instance.

Secured listeners (`up --secure`, one node only). Next to PLAINTEXT (kept for the controller,
inter-broker traffic and the readiness probe) the node listens on four more ports (P+2..P+5, or
free ones with `--port 0`):

    SASL_PLAINTEXT   SASL with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, no TLS
    SSL              TLS, server certificate only
    SASL_SSL         TLS + SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
    MTLS             TLS that requires a client certificate signed by the instance's CA

At start-up a throwaway CA, a server certificate (SAN localhost, 127.0.0.1) and a client
certificate are made with openssl into `.kafka/<name>/tls/` (`ca.pem`, `client.pem`,
`client.key`; the broker uses `server.p12`). The PLAIN user lives in the listener JAAS config; the
SCRAM user (both SHA-256 and SHA-512) is written into the metadata log when the node is formatted.
Names and random passwords are in `.kafka/<name>/credentials.json` (mode 0600); `status` prints the
secured addresses and the file paths, never the passwords. Everything is deleted by `down`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STATE = Path(os.environ.get("LLMROUTE_KAFKA_HOME", ROOT / ".kafka"))
JARS = STATE / "jars"
TOOLS_JARS = STATE / "tools-jars"
TOOLS = {
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
}
DEP_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

SINGLE_PORT = 19092
CLUSTER_PORT = 29092
SECURE_LISTENERS = ("SASL_PLAINTEXT", "SSL", "SASL_SSL", "MTLS")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PLAIN_USER = "plainuser"
SCRAM_USER = "scramuser"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


# Brokers this process started; kept so their Popen objects are reaped, not garbage-collected live.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class KafkaError(RuntimeError):
    """A local broker could not be fetched, started, probed or stopped."""


# ---------------------------------------------------------------- jars


def ensure_jars() -> Path:
    """Resolve the runtime jars once; later calls (and ~/.m2) make this offline."""
    return _resolve(HERE / "pom.xml", JARS, "kafka_2.13-*.jar")


def ensure_tools_jars() -> Path:
    """Kafka's command-line tools (kafka-tools and what it needs), resolved once like the jars."""
    return _resolve(HERE / "tools-pom.xml", TOOLS_JARS, "kafka-tools-*.jar")


def tool_command(name: str, *args: str) -> list[str]:
    """The command line that runs one of Kafka's tools (`TOOLS`) with `args`."""
    if name not in TOOLS:
        raise KafkaError(f"unknown tool {name!r}; known: {', '.join(sorted(TOOLS))}")
    jars = ensure_tools_jars()
    log4j = jars / "log4j2-tools.xml"
    if not log4j.exists():
        log4j.write_text(_TOOLS_LOG4J)
    return [
        _java(),
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-cp",
        f"{jars}/*",
        f"-Dlog4j2.configurationFile={log4j}",
        TOOLS[name],
        *args,
    ]


_TOOLS_LOG4J = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders><Console name="err" target="SYSTEM_ERR"><PatternLayout pattern="%p %m%n"/></Console>
  </Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="err"/></Root></Loggers>
</Configuration>
"""


def _resolve(pom: Path, dest: Path, expect: str) -> Path:
    marker = dest / ".complete"
    if marker.exists() and marker.read_text() == _pom_digest(pom):
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaError("mvn is not on PATH: install Maven (apt-get install maven)")
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        f"{DEP_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={dest}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(dest.glob(expect)):
        raise KafkaError(f"maven could not resolve {pom.name}:\n{proc.stdout}\n{proc.stderr}")
    marker.write_text(_pom_digest(pom))
    return dest


def _pom_digest(pom: Path) -> str:
    import hashlib

    return hashlib.sha256(pom.read_bytes()).hexdigest()


# ---------------------------------------------------------------- instance layout


@dataclass(frozen=True)
class Node:
    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True)
class Instance:
    name: str
    nodes: tuple[Node, ...]
    # `up --secure`: listener name (SECURE_LISTENERS) -> port, on the single node
    secure_ports: tuple[tuple[str, int], ...] = ()

    @property
    def home(self) -> Path:
        return STATE / self.name

    @property
    def logs(self) -> Path:
        return STATE / "logs" / self.name

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def pidfile(self, node: Node) -> Path:
        return self.home / f"node-{node.node_id}.pid"

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.json"

    def secure_json(self) -> dict[str, object]:
        """Where the secured listeners are and which files a client needs (no secrets)."""
        return {
            "listeners": {name: f"127.0.0.1:{port}" for name, port in self.secure_ports},
            "ca_file": str(self.tls_dir / "ca.pem"),
            "client_cert_file": str(self.tls_dir / "client.pem"),
            "client_key_file": str(self.tls_dir / "client.key"),
            "credentials_file": str(self.credentials_file),
        }

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "bootstrap": self.bootstrap,
            "nodes": [[n.node_id, n.port, n.controller_port] for n in self.nodes],
        }
        if self.secure_ports:
            out["secure"] = self.secure_json()
        return out

    @staticmethod
    def load(name: str) -> Instance | None:
        meta = STATE / name / "instance.json"
        if not meta.exists():
            return None
        data = json.loads(meta.read_text())
        nodes = tuple(Node(int(a), int(b), int(c)) for a, b, c in data["nodes"])
        listeners = data.get("secure", {}).get("listeners", {})
        secure = tuple((str(k), int(v.rsplit(":", 1)[1])) for k, v in listeners.items())
        return Instance(str(data["name"]), nodes, secure)


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def plan(name: str, size: int, base_port: int, secure: bool = False) -> Instance:
    if secure and size != 1:
        raise KafkaError("secured listeners are offered on a single node only (up --secure)")
    extra = len(SECURE_LISTENERS) if secure else 0
    if base_port == 0:
        ports = _free_ports(2 * size + extra)
        nodes = tuple(Node(i + 1, ports[2 * i], ports[2 * i + 1]) for i in range(size))
        secure_ports = ports[2 * size :]
    else:
        nodes = tuple(
            Node(i + 1, base_port + 100 * i, base_port + 100 * i + 1) for i in range(size)
        )
        secure_ports = [base_port + 2 + i for i in range(extra)]
    return Instance(name, nodes, tuple(zip(SECURE_LISTENERS[:extra], secure_ports, strict=True)))


def _properties(inst: Instance, node: Node) -> str:
    size = len(inst.nodes)
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in inst.nodes)
    rf = 3 if size >= 3 else 1
    isr = 2 if size >= 3 else 1
    listeners = f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
    protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    for listener, port in inst.secure_ports:
        listeners += f",{listener}://127.0.0.1:{port}"
        protocols += f",{listener}:{'SSL' if listener == 'MTLS' else listener}"
    props: dict[str, object] = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": listeners,
        "advertised.listeners": listeners,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": protocols,
        "log.dirs": inst.home / f"data-{node.node_id}",
        "num.partitions": 1,
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "transaction.state.log.num.partitions": 2,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
        "group.initial.rebalance.delay.ms": 0,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "auto.create.topics.enable": "true",
        "log.retention.hours": 24,
        "log.segment.bytes": 64 * 1024 * 1024,
        "message.max.bytes": 4 * 1024 * 1024,
    }
    if inst.secure_ports:
        props.update(_secure_properties(inst))
    return "".join(f"{k}={v}\n" for k, v in props.items())


# ---------------------------------------------------------------- secured listeners


def _secure_properties(inst: Instance) -> dict[str, object]:
    """TLS for SSL/SASL_SSL/MTLS, the SASL mechanisms and their JAAS configs per listener.

    Names as in the Kafka 4.x security docs: `listener.name.<listener>.<mechanism>.sasl.jaas.config`
    (listener and mechanism in lower case); PLAIN users are `user_<name>="<password>"` options.
    """
    creds = json.loads(inst.credentials_file.read_text())
    tls = inst.tls_dir
    props: dict[str, object] = {
        "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": tls / "server.p12",
        "ssl.keystore.password": creds["keystore_password"],
        "ssl.key.password": creds["keystore_password"],
        "ssl.client.auth": "none",
        # only the MTLS listener asks for client certificates; it trusts the instance's CA
        "listener.name.mtls.ssl.client.auth": "required",
        "listener.name.mtls.ssl.truststore.type": "PEM",
        "listener.name.mtls.ssl.truststore.location": tls / "ca.pem",
    }
    plain = creds["PLAIN"]
    for listener in ("sasl_plaintext", "sasl_ssl"):
        prefix = f"listener.name.{listener}"
        props[f"{prefix}.plain.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{plain["username"]}="{plain["password"]}";'
        )
        for mechanism in ("scram-sha-256", "scram-sha-512"):
            props[f"{prefix}.{mechanism}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
    return props


def _new_credentials(inst: Instance) -> dict[str, object]:
    """Random passwords for this instance only, kept in a file only its owner can read."""
    scram = {"username": SCRAM_USER, "password": secrets.token_hex(16)}
    creds: dict[str, object] = {
        "PLAIN": {"username": PLAIN_USER, "password": secrets.token_hex(16)},
        "SCRAM-SHA-256": scram,
        "SCRAM-SHA-512": scram,
        "keystore_password": secrets.token_hex(16),
    }
    path = inst.credentials_file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(creds, fh, indent=2)
    return creds


def _scram_format_args(inst: Instance) -> list[str]:
    """`kafka-storage format --add-scram` arguments: SCRAM users exist from the first start."""
    creds = json.loads(inst.credentials_file.read_text())
    args = []
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        user = creds[mechanism]
        args += [
            "--add-scram",
            f"{mechanism}=[name={user['username']},password={user['password']}]",
        ]
    return args


def _make_tls(inst: Instance, keystore_password: str) -> None:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate.

    EC P-256 keys, valid 7 days; the CA key is deleted once both leaves are signed. The broker gets
    `server.p12` (key, certificate, CA); clients get PEM files.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise KafkaError(
            "openssl is not on PATH: --secure makes its CA with it (apt install openssl)"
        )
    tls = inst.tls_dir
    tls.mkdir(mode=0o700)
    env = {**os.environ, "LOCALKAFKA_KEYSTORE_PASSWORD": keystore_password}

    def run(args: str, *extra: str) -> None:
        proc = subprocess.run(
            [openssl, *args.split(), *extra],
            capture_output=True,
            text=True,
            check=False,
            cwd=tls,
            env=env,
        )
        if proc.returncode != 0:
            raise KafkaError(f"openssl {args.split()[0]} failed:\n{proc.stdout}{proc.stderr}")

    new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    run(
        f"req -x509 {new_key} -keyout ca.key -out ca.pem -days 7 "
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
        "-subj",
        f"/CN=llmroute-local-ca-{inst.name}",
    )
    leaves = {
        "server": ("localhost", "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
        "client": ("llmroute-client", "clientAuth", ""),
    }
    for leaf, (cn, usage, san) in leaves.items():
        (tls / f"{leaf}.ext").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={usage}\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n" + san
        )
        run(f"req {new_key} -keyout {leaf}.key -out {leaf}.csr -subj /CN={cn}")
        run(
            f"x509 -req -in {leaf}.csr -CA ca.pem -CAkey ca.key -days 7 -extfile {leaf}.ext "
            f"-out {leaf}.pem -set_serial {secrets.randbits(63)}"
        )
    run(
        "pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem -name broker "
        "-out server.p12 -passout env:LOCALKAFKA_KEYSTORE_PASSWORD"
    )
    for leftover in ("ca.key", "server.csr", "client.csr", "server.ext", "client.ext"):
        (tls / leftover).unlink()  # nothing else is ever signed by this CA


def _wait_secure_ports(inst: Instance, timeout_s: float) -> None:
    """The secured listeners accept connections (the readiness probe speaks PLAINTEXT only)."""
    deadline = time.monotonic() + timeout_s
    for listener, port in inst.secure_ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise KafkaError(
                        f"listener {listener} on port {port} is not up: {exc}; logs in {inst.logs}"
                    ) from None
                time.sleep(0.1)


def _log4j(inst: Instance, node: Node) -> str:
    log = inst.logs / f"node-{node.node_id}.log"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{log}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java:
        raise KafkaError("java is not on PATH: Kafka 4.x needs Java 17 or newer")
    return java


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still answers kill(0); reap it if it is ours
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def running_nodes(inst: Instance) -> list[Node]:
    return [n for n in inst.nodes if (pid := _read_pid(inst.pidfile(n))) and _alive(pid)]


# ---------------------------------------------------------------- Kafka wire probe


def metadata_brokers(host: str, port: int, timeout_s: float = 2.0) -> list[int]:
    """Send a Kafka Metadata v4 request (no topics) and return the node ids it lists."""
    client = b"llmroute-probe"
    body = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", 0, 0)
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv(sock, 4))[0]
        buf = _recv(sock, size)
    pos = 8  # correlation id, throttle time
    (count,) = struct.unpack_from(">i", buf, pos)
    pos += 4
    ids = []
    for _ in range(count):
        node_id, hlen = struct.unpack_from(">ih", buf, pos)
        pos += 6 + hlen + 4
        (rlen,) = struct.unpack_from(">h", buf, pos)
        pos += 2 + max(rlen, 0)
        ids.append(node_id)
    return sorted(ids)


def _recv(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        out += chunk
    return bytes(out)


def wait_ready(inst: Instance, expect: int, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        for node in running_nodes(inst):
            try:
                if len(metadata_brokers("127.0.0.1", node.port)) >= expect:
                    return
            except (OSError, struct.error) as exc:
                last = exc
        if not running_nodes(inst):
            break
        time.sleep(0.25)
    raise KafkaError(
        f"instance {inst.name!r} did not list {expect} brokers within {timeout_s:.0f}s "
        f"(last error: {last}); logs in {inst.logs}"
    )


# ---------------------------------------------------------------- start / stop


def start(name: str, size: int, base_port: int, heap_mb: int, secure: bool = False) -> Instance:
    existing = Instance.load(name)
    if existing is not None and running_nodes(existing):
        raise KafkaError(
            f"instance {name!r} is already running at {existing.bootstrap}; "
            f"stop it first (localkafka.py down --name {name})"
        )
    if existing is not None:
        shutil.rmtree(existing.home, ignore_errors=True)
    jars = ensure_jars()
    inst = plan(name, size, base_port, secure)
    inst.home.mkdir(parents=True)
    inst.logs.mkdir(parents=True, exist_ok=True)
    (inst.home / "instance.json").write_text(json.dumps(inst.to_json()))
    scram: list[str] = []
    if secure:
        creds = _new_credentials(inst)
        try:
            _make_tls(inst, str(creds["keystore_password"]))
        except KafkaError:
            shutil.rmtree(inst.home, ignore_errors=True)
            raise
        scram = _scram_format_args(inst)
    classpath = f"{jars}/*"
    java = _java()
    cluster_id = _cluster_id(java, classpath)
    for node in inst.nodes:
        props = inst.home / f"server-{node.node_id}.properties"
        props.touch(mode=0o600)  # with --secure it holds the PLAIN and keystore passwords
        props.write_text(_properties(inst, node))
        log4j = inst.home / f"log4j2-{node.node_id}.xml"
        log4j.write_text(_log4j(inst, node))
        fmt = subprocess.run(
            [
                java,
                "-cp",
                classpath,
                f"-Dlog4j2.configurationFile={log4j}",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(props),
                *scram,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            shutil.rmtree(inst.home, ignore_errors=True)
            raise KafkaError(f"formatting node {node.node_id} failed:\n{fmt.stdout}{fmt.stderr}")
    for node in inst.nodes:
        with (inst.logs / f"node-{node.node_id}.out").open("ab") as out:
            proc = subprocess.Popen(
                [
                    java,
                    f"-Xms{min(512, heap_mb)}m",
                    f"-Xmx{heap_mb}m",
                    "-XX:+UseG1GC",
                    "-cp",
                    classpath,
                    f"-Dlog4j2.configurationFile={inst.home / f'log4j2-{node.node_id}.xml'}",
                    "kafka.Kafka",
                    str(inst.home / f"server-{node.node_id}.properties"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        inst.pidfile(node).write_text(str(proc.pid))
    try:
        wait_ready(inst, expect=size)
        _wait_secure_ports(inst, timeout_s=30.0)
    except KafkaError:
        stop(name)
        raise
    (inst.home / "bootstrap").write_text(inst.bootstrap)
    return inst


def _cluster_id(java: str, classpath: str) -> str:
    proc = subprocess.run(
        [java, "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"],
        capture_output=True,
        text=True,
        check=False,
    )
    cid = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not cid:
        # the StorageTool id is a base64url UUID; make one the same way
        import base64

        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return cid


def stop_node(inst: Instance, node: Node, sig: int = signal.SIGTERM) -> None:
    pid = _read_pid(inst.pidfile(node))
    if pid is None or not _alive(pid):
        inst.pidfile(node).unlink(missing_ok=True)
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    inst.pidfile(node).unlink(missing_ok=True)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait()


def stop(name: str) -> bool:
    inst = Instance.load(name)
    if inst is None:
        return False
    for node in inst.nodes:
        stop_node(inst, node)
    shutil.rmtree(inst.home, ignore_errors=True)
    return True


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("jars")
    sub.add_parser("tools-jars")
    p = sub.add_parser("tool")
    p.add_argument("tool", choices=sorted(TOOLS))
    p.add_argument("args", nargs=argparse.REMAINDER)
    for cmd, default_name, default_port in (
        ("up", "single", SINGLE_PORT),
        ("cluster-up", "cluster", CLUSTER_PORT),
    ):
        p = sub.add_parser(cmd)
        p.add_argument("--name", default=default_name)
        p.add_argument("--port", type=int, default=default_port, help="0 picks free ports")
        p.add_argument("--json", action="store_true")
        if cmd == "up":
            p.add_argument(
                "--secure",
                action="store_true",
                help="also SASL_PLAINTEXT, SSL, SASL_SSL and mTLS listeners, with a throwaway CA",
            )
    p = sub.add_parser("down")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--name", default="single", help="the instance to stop")
    which.add_argument("--all", action="store_true", help="every instance started here")
    sub.add_parser("clean")
    p = sub.add_parser("status")
    p.add_argument("--name", default=None, help="default: every instance")
    p = sub.add_parser("stop-node")
    p.add_argument("--name", required=True)
    p.add_argument("--node", type=int, required=True)
    p.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM")
    p = sub.add_parser("run")
    p.add_argument("--name", default="run")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        return _dispatch(args)
    except KafkaError as exc:
        print(f"localkafka: {exc}", file=sys.stderr)
        return 1


def _instances(name: str | None) -> list[str]:
    if name is not None:
        return [name]
    if not STATE.exists():
        return []
    return sorted(p.name for p in STATE.iterdir() if (p / "instance.json").exists())


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "jars":
        print(ensure_jars())
        return 0
    if args.cmd == "tools-jars":
        print(ensure_tools_jars())
        return 0
    if args.cmd == "tool":
        rest = args.args[1:] if args.args[:1] == ["--"] else args.args
        return subprocess.run(tool_command(args.tool, *rest), check=False).returncode
    if args.cmd in ("up", "cluster-up"):
        size = 3 if args.cmd == "cluster-up" else 1
        secure = bool(getattr(args, "secure", False))
        inst = start(args.name, size, args.port, heap_mb=768 if size > 1 else 1024, secure=secure)
        if args.json:
            print(json.dumps(inst.to_json()))
        else:
            print(f"kafka {args.name!r} ready at {inst.bootstrap} (logs: {inst.logs})")
            for listener, port in inst.secure_ports:
                print(f"  {listener:<15} 127.0.0.1:{port}")
            if inst.secure_ports:
                print(f"  CA {inst.tls_dir / 'ca.pem'}; users, passwords: {inst.credentials_file}")
        return 0
    if args.cmd == "down":
        for name in _instances(None if args.all else args.name):
            if stop(name):
                print(f"kafka {name!r} stopped")
        return 0
    if args.cmd == "clean":
        running = [n for n in _instances(None) if (i := Instance.load(n)) and running_nodes(i)]
        if running:
            print(
                f"localkafka: kept {STATE}: instance(s) {', '.join(running)} still running "
                "(stop them with `localkafka.py down --name N`)"
            )
            return 0
        shutil.rmtree(STATE, ignore_errors=True)
        print(f"localkafka: removed {STATE}")
        return 0
    if args.cmd == "status":
        for name in _instances(args.name):
            found = Instance.load(name)
            if found is not None:
                live = [n.node_id for n in running_nodes(found)]
                print(json.dumps({**found.to_json(), "running": live}))
        return 0
    if args.cmd == "stop-node":
        target = Instance.load(args.name)
        if target is None:
            raise KafkaError(f"no instance {args.name!r}")
        node = next((n for n in target.nodes if n.node_id == args.node), None)
        if node is None:
            raise KafkaError(f"instance {args.name!r} has no node {args.node}")
        stop_node(target, node, signal.SIGKILL if args.kill else signal.SIGTERM)
        return 0
    if args.cmd == "run":
        command = (
            [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else args.command
        )
        if not command:
            raise KafkaError("run needs a command after --")
        return _run_with_broker(args.name, args.port, command)
    raise AssertionError(args.cmd)


def _run_with_broker(name: str, port: int, command: list[str]) -> int:
    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signum)

    signal.signal(signal.SIGTERM, _terminate)
    inst = start(name, 1, port, heap_mb=1024)
    print(f"localkafka: broker {name!r} ready at {inst.bootstrap}", flush=True)
    rc = 1
    try:
        env = {**os.environ, "KAFKA_BOOTSTRAP": inst.bootstrap}
        rc = subprocess.run(command, env=env, check=False).returncode
    except KeyboardInterrupt:
        rc = 130
    finally:
        stop(name)
        print(f"localkafka: broker {name!r} stopped", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
