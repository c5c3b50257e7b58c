"""Real engines on 127.0.0.1 for the tests, the demo and a laptop: an Apache Kafka broker (KRaft,
combined broker and controller) and an OpenSearch node, both run from Maven Central jars.

    python deploy/engines/engines.py start [kafka] [opensearch]   # fetch once, start or reuse, wait until ready
    python deploy/engines/engines.py stop [kafka] [opensearch]
    python deploy/engines/engines.py status

``start`` prints ``KAFKA_BOOTSTRAP=HOST:PORT`` and ``ES_URL=http://HOST:PORT`` on lines of their own on
stdout (everything else goes to stderr), so ``eval "$(… start)"`` sets both. With ``--use-env``, an engine
whose variable is already set (a cluster of the user's own) is neither started nor checked: its address
is printed back as given.

Where and on which ports, from the environment (the Makefile passes make variables of the same names):
ENGINES_DIR (<repo>/.engines: jars, data, logs, pid files), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT
(9093), OPENSEARCH_PORT (9200), OPENSEARCH_TRANSPORT_PORT (9300), JAVA (java), MVN (mvn).

An engine is reused when its pid file names a live process of this directory, or when something
healthy of the same kind already answers on its port (another clone's engines, say); a port held by
anything else is an error naming the variable to change. The jars are fetched once per pom: a
changed pom fetches again. The start-up functions are also what the tests use for brokers of their own
(three brokers, a broker to restart).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HOST = "127.0.0.1"
KAFKA_HEAP = ["-Xms256m", "-Xmx512m"]
OPENSEARCH_HEAP = ["-Xms1g", "-Xmx1g"]
KAFKA_START_S = 120  # generous: two cores shared with test runs
OPENSEARCH_START_S = 180


class EngineError(Exception):
    """An engine could not be fetched or started; the message names it and its log."""


def engines_dir() -> Path:
    return Path(os.environ.get("ENGINES_DIR") or REPO / ".engines").resolve()


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _java() -> str:
    return os.environ.get("JAVA") or "java"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- fetching the jars ---------------------------------------------------------------------------


def fetch(engine: str, target: Path) -> Path:
    """The directory of ``engine``'s jars (its pom's runtime dependencies), downloaded with Maven once per pom."""
    pom = HERE / engine / "pom.xml"
    lib = target / "lib"
    stamp = lib / ".pom-sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return lib
    target.mkdir(parents=True, exist_ok=True)
    log = target / "fetch.log"
    _say(f"{engine}: fetching its jars with Maven (once; log {log})")
    if lib.exists():
        for old in lib.glob("*.jar"):
            old.unlink()
    command = [os.environ.get("MVN") or "mvn", "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={lib}", "-DincludeScope=runtime"]
    try:
        with open(log, "w") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    except FileNotFoundError:
        raise EngineError(f"{engine}: Maven ({command[0]}) is not installed; it fetches the engines' jars") from None
    if done.returncode != 0:
        raise EngineError(f"{engine}: the Maven download failed (exit {done.returncode}); see {log}")
    stamp.write_text(digest)
    return lib


def _classpath(*parts: Path) -> str:
    return os.pathsep.join(str(p / "*") if p.name == "lib" else str(p) for p in parts)


# -- processes -----------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child has exited
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


def _ours(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process is alive and runs from this engine directory."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) and str(pid_file.parent) in cmdline else None


def _spawn(command: list[str], home: Path, console: Path) -> subprocess.Popen:
    """Start a JVM in its own session (a terminal's Ctrl-C or the end of `make` does not stop it)."""
    with open(console, "ab") as out:
        proc = subprocess.Popen(command, cwd=home, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    (home / "pid").write_text(str(proc.pid))
    return proc


def stop_process(pid: int, what: str, timeout: float = 60) -> None:
    """SIGTERM (both engines then shut down cleanly), SIGKILL if it is still there after ``timeout``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        _say(f"{what}: still running {timeout:g}s after SIGTERM; killing it")
        os.kill(pid, signal.SIGKILL)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def _wait(ready, proc: subprocess.Popen | None, timeout: float, what: str, log: Path) -> float:
    """Poll ``ready()`` until true; seconds taken. Raises EngineError naming the log if the process dies
    or time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise EngineError(f"{what} exited with {proc.returncode} while starting; see {log}")
        if ready():
            return time.monotonic() - started
        time.sleep(0.5)
    raise EngineError(f"{what} was not ready after {timeout:g}s; see {log}")


# -- Kafka -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaNode:
    """One broker-and-controller process: its directory (config, data, logs, pid), id and ports."""

    home: Path
    node_id: int = 1
    port: int = 9092
    controller_port: int = 9093

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / "logs" / "server.log"


def new_cluster_id() -> str:
    """A KRaft cluster id as Kafka's Uuid.randomUuid() makes them: 16 random bytes in unpadded base64url
    (never starting with "-", which Kafka's command-line tools would read as an option). Made here rather
    than by `kafka-storage random-uuid` to spare a JVM start."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def kafka_config(node: KafkaNode, voters: list[KafkaNode] | None = None, extra: dict | None = None) -> str:
    """server.properties of a combined broker and controller. Alone (``voters`` None): a dynamic quorum of
    itself, replication 1 everywhere. With voters: a static quorum of them, replication over all of them."""
    replicas = len(voters) if voters else 1
    settings = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": node.home / "data",
        # As in production (docker-compose.yml): topics come from `newsmon topics create`, so a misnamed
        # topic is an error rather than a new topic.
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "share.coordinator.state.topic.replication.factor": replicas,
        "default.replication.factor": replicas,
        "min.insync.replicas": min(2, replicas),
        "transaction.state.log.min.isr": min(2, replicas),
        "share.coordinator.state.topic.min.isr": min(2, replicas),
        # A consumer group starts at once rather than waiting 3 s for more members (tests start many groups).
        "group.initial.rebalance.delay.ms": 0,
    }
    if voters:
        settings["controller.quorum.voters"] = ",".join(f"{v.node_id}@{HOST}:{v.controller_port}" for v in voters)
    else:
        settings["controller.quorum.bootstrap.servers"] = f"{HOST}:{node.controller_port}"
    settings.update(extra or {})
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def kafka_command(node: KafkaNode, lib: Path, main: list[str], heap: list[str] = KAFKA_HEAP) -> list[str]:
    """A JVM running one of Kafka's main classes with the broker's log4j2 configuration and log directory."""
    return [_java(), *heap, "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={HERE / 'kafka' / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={node.home / 'logs'}", "-cp", _classpath(lib), *main]


def start_kafka_node(node: KafkaNode, lib: Path, cluster_id: str, voters: list[KafkaNode] | None = None,
                     extra: dict | None = None, heap: list[str] = KAFKA_HEAP) -> subprocess.Popen:
    """Write the node's config, format its storage the first time, and start it (not waiting for it)."""
    (node.home / "logs").mkdir(parents=True, exist_ok=True)
    config = node.home / "server.properties"
    config.write_text(kafka_config(node, voters, extra))
    console = node.home / "logs" / "console.log"
    if not (node.home / "data" / "meta.properties").exists():
        quorum = [] if voters else ["--standalone"]
        with open(console, "ab") as out:
            formatted = subprocess.run(
                kafka_command(node, lib, ["kafka.tools.StorageTool", "format", *quorum, "-t", cluster_id,
                                          "-c", str(config)], heap=["-Xmx256m"]),
                stdout=out, stderr=subprocess.STDOUT, timeout=300)
        if formatted.returncode != 0:
            raise EngineError(f"kafka node {node.node_id}: formatting its storage failed; see {console}")
    return _spawn(kafka_command(node, lib, ["kafka.Kafka", str(config)], heap), node.home, console)


def kafka_ready(bootstrap: str, brokers: int = 1) -> bool:
    """The cluster at ``bootstrap`` (HOST:PORT[,HOST:PORT…]) answers a metadata request listing ``brokers``
    brokers and a controller."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="newsmon-engines", request_timeout_ms=5000,
                                 api_version_auto_timeout_ms=3000)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        cluster = admin.describe_cluster()
        return len(cluster["brokers"]) >= brokers and cluster.get("controller_id", -1) != -1
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        admin.close()


def start_kafka(root: Path) -> str:
    """Start (or reuse) the single broker; returns its HOST:PORT once it answers metadata requests."""
    node = KafkaNode(root / "kafka", 1, _port("KAFKA_PORT", 9092), _port("KAFKA_CONTROLLER_PORT", 9093))
    pid = _ours(node.home / "pid")
    if pid is None and _port_open(node.port):
        if kafka_ready(node.bootstrap):
            _say(f"kafka: a broker already answers on {node.bootstrap} (not started from {root}); using it")
            return node.bootstrap
        raise EngineError(f"kafka: port {node.port} is taken by something that is not a Kafka broker; "
                          "set KAFKA_PORT (and KAFKA_CONTROLLER_PORT) to free ones")
    if pid is None and _port_open(node.controller_port):
        raise EngineError(f"kafka: controller port {node.controller_port} is taken; set KAFKA_CONTROLLER_PORT")
    proc = None
    if pid is None:
        lib = fetch("kafka", node.home)
        meta = node.home / "data" / "meta.properties"
        cluster_id = new_cluster_id() if not meta.exists() else ""
        _say(f"kafka: starting a broker on {node.bootstrap} (log {node.log})")
        proc = start_kafka_node(node, lib, cluster_id)
    took = _wait(lambda: kafka_ready(node.bootstrap), proc, KAFKA_START_S, "kafka", node.log)
    _say(f"kafka: ready on {node.bootstrap}" + (f" after {took:.1f}s" if proc else " (already running)"))
    return node.bootstrap


# -- OpenSearch --------------------------------------------------------------------------------------


def opensearch_config(home: Path, port: int, transport_port: int) -> str:
    settings = {
        "cluster.name": "newsmon-engines",
        "node.name": "newsmon-1",
        "network.host": HOST,
        "http.port": port,
        "transport.port": transport_port,
        "discovery.type": "single-node",
        "path.data": home / "data",
        "path.logs": home / "logs",
    }
    return "".join(f"{key}: {json.dumps(str(value))}\n" for key, value in settings.items())


def _http_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def opensearch_ready(url: str) -> bool:
    """Yellow or better, an OpenSearch (not an Elasticsearch) answering, with the analysis the template uses."""
    try:
        _http_json(f"{url}/_cluster/health?wait_for_status=yellow&timeout=2s")
        if _http_json(url).get("version", {}).get("distribution") != "opensearch":
            return False
        folded = _http_json(f"{url}/_analyze", {"tokenizer": "standard", "filter": ["lowercase", "asciifolding"],
                                                 "text": "Sécurité"})
        stemmed = _http_json(f"{url}/_analyze", {"analyzer": "french", "text": "alliés"})
    except (OSError, ValueError):  # not up yet (urllib's errors are OSErrors), or not JSON
        return False
    return [t["token"] for t in folded["tokens"]] == ["securite"] and len(stemmed["tokens"]) == 1


def _launcher(lib: Path, target: Path) -> Path:
    """The compiled OpenSearchNode launcher, recompiled when its source changes."""
    source = HERE / "opensearch" / "OpenSearchNode.java"
    classes = target / "classes"
    stamp = classes / ".source-sha256"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == digest):
        classes.mkdir(parents=True, exist_ok=True)
        javac = str(Path(_java()).with_name("javac")) if os.environ.get("JAVA") else "javac"  # the same JDK
        done = subprocess.run([javac, "-d", str(classes), "-cp", _classpath(lib), str(source)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise EngineError(f"opensearch: compiling {source.name} failed:\n{done.stderr}")
        stamp.write_text(digest)
    return classes


def start_opensearch(root: Path) -> str:
    """Start (or reuse) the single node; returns its URL once it is yellow and analyses text."""
    home = root / "opensearch"
    port, transport = _port("OPENSEARCH_PORT", 9200), _port("OPENSEARCH_TRANSPORT_PORT", 9300)
    url = f"http://{HOST}:{port}"
    log = home / "logs" / "newsmon-engines.log"
    pid = _ours(home / "pid")
    if pid is None and _port_open(port):
        if opensearch_ready(url):
            _say(f"opensearch: a node already answers on {url} (not started from {root}); using it")
            return url
        raise EngineError(f"opensearch: port {port} is taken by something that is not an OpenSearch node; "
                          "set OPENSEARCH_PORT (and OPENSEARCH_TRANSPORT_PORT) to free ones")
    if pid is None and _port_open(transport):
        raise EngineError(f"opensearch: transport port {transport} is taken; set OPENSEARCH_TRANSPORT_PORT")
    proc = None
    if pid is None:
        lib = fetch("opensearch", home)
        classes = _launcher(lib, home)
        (home / "config").mkdir(parents=True, exist_ok=True)
        (home / "logs").mkdir(parents=True, exist_ok=True)
        (home / "config" / "opensearch.yml").write_text(opensearch_config(home, port, transport))
        (home / "config" / "log4j2.properties").write_bytes((HERE / "opensearch" / "log4j2.properties").read_bytes())
        _say(f"opensearch: starting a node on {url} (log {log})")
        command = [_java(), *OPENSEARCH_HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true",
                   "-Dfile.encoding=UTF-8", "-Djna.nosys=true", "-Dlog4j2.disable.jmx=true",
                   "-Dlog4j.shutdownHookEnabled=false",  # the node's own hook closes it, logging to the end
                   f"-Djava.io.tmpdir={home / 'tmp'}", "-cp", _classpath(classes, lib), "OpenSearchNode", str(home)]
        (home / "tmp").mkdir(exist_ok=True)
        proc = _spawn(command, home, home / "logs" / "console.log")
    took = _wait(lambda: opensearch_ready(url), proc, OPENSEARCH_START_S, "opensearch", log)
    _say(f"opensearch: ready on {url}" + (f" after {took:.1f}s" if proc else " (already running)"))
    return url


# -- the command line ----------------------------------------------------------------------------------

ENGINES = {"kafka": ("KAFKA_BOOTSTRAP", start_kafka), "opensearch": ("ES_URL", start_opensearch)}


def start(names: list[str], use_env: bool) -> dict[str, str]:
    root = engines_dir()
    found = {}
    for name in names:
        variable, starter = ENGINES[name]
        if use_env and os.environ.get(variable):
            _say(f"{name}: {variable} is set; using {os.environ[variable]}")
            found[variable] = os.environ[variable]
        else:
            found[variable] = starter(root)
    return found


def stop(names: list[str]) -> None:
    root = engines_dir()
    for name in names:
        pid = _ours(root / name / "pid")
        if pid is None:
            _say(f"{name}: not running from {root}")
            continue
        _say(f"{name}: stopping (pid {pid})")
        stop_process(pid, name)
        (root / name / "pid").unlink(missing_ok=True)


def status() -> int:
    root = engines_dir()
    running = 0
    for name in ENGINES:
        pid = _ours(root / name / "pid")
        rss = ""
        if pid is not None:
            running += 1
            kib = next((line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if line.startswith("VmRSS:")), "?")
            rss = f", RSS {int(kib) // 1024} MiB" if kib.isdigit() else ""
        _say(f"{name}: " + (f"running (pid {pid}{rss})" if pid else "not running") + f", in {root / name}")
    return 0 if running == len(ENGINES) else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("engines", nargs="*", metavar="ENGINE", help="kafka, opensearch (default: both)")
    parser.add_argument("--use-env", action="store_true",
                        help="do not start an engine whose variable (KAFKA_BOOTSTRAP, ES_URL) is set")
    args = parser.parse_args(argv)
    names = args.engines or list(ENGINES)
    if unknown := set(names) - set(ENGINES):
        parser.error(f"unknown engine(s) {', '.join(sorted(unknown))}: choose from {', '.join(ENGINES)}")
    try:
        if args.action == "start":
            for variable, address in start(names, args.use_env).items():
                print(f"{variable}={address}", flush=True)
        elif args.action == "stop":
            stop(names)
        else:
            return status()
    except EngineError as exc:
        _say(f"engines: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
