"""deploy/: what can be checked without a Docker engine or a cluster.

The Dockerfile is read instruction by instruction; compose.yaml and the Kubernetes
manifests are parsed as YAML (with PyYAML; those tests skip, saying so, where it is not
installed). Every check ties a file back to the code: the settings named are real
settings with values that parse, the command is a real `mqpy` subcommand, the ports,
paths and users agree across files, and the health check command really runs.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mqpy.cli import build_parser
from mqpy.commands import KEY_ENV, URL_ENV
from mqpy.config import Option, Settings, options, parse_duration
from tests.conftest import ServerFactory
from tests.support import raw_http
from tests.support.load import unused_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
DOCKERIGNORE = ROOT / ".dockerignore"
SETTINGS: dict[str, Option] = {option.env: option for option in options()}
# Environment variables of the `mqpy` client commands, not of the server's settings.
CLIENT_VARIABLES = {URL_ENV, KEY_ENV}
ADMIN_KEY = "deploy-test-admin-key-3f9a61"


# -- reading the files ------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int  # 0 for the first FROM's stage, and so on


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped (as
    Docker drops comment lines, even inside a continued instruction)."""
    instructions: list[Instruction] = []
    pending = ""
    stage = -1
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), arguments.strip(), stage))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last = max(instruction.stage for instruction in instructions)
    return [instruction for instruction in instructions if instruction.stage == last]


def arguments_of(keyword: str, instructions: list[Instruction] | None = None) -> list[str]:
    return [i.arguments for i in instructions or final_stage() if i.keyword == keyword]


def image_env() -> dict[str, str]:
    """The final stage's ENV, as `NAME=value` pairs (the form the Dockerfile uses)."""
    env: dict[str, str] = {}
    for arguments in arguments_of("ENV"):
        for pair in shlex.split(arguments):
            name, equals, value = pair.partition("=")
            assert equals, f"ENV {arguments!r}: use NAME=value"
            env[name] = value
    return env


def exec_form(arguments: str) -> list[str]:
    """A JSON-array CMD, or HEALTHCHECK's CMD after its options."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(part, str) for part in value), arguments
    return value


def healthcheck_command() -> list[str]:
    (arguments,) = arguments_of("HEALTHCHECK")
    _, cmd, command = arguments.partition(" CMD ")
    assert cmd, f"HEALTHCHECK {arguments!r} has no CMD"
    return exec_form(command.strip())


def image_uid() -> int:
    (user,) = arguments_of("USER")
    return int(user.split(":")[0])


def load_yaml(path: Path) -> list[Any]:
    yaml = pytest.importorskip(
        "yaml",
        reason="PyYAML is not installed, so deploy/*.yaml cannot be parsed here "
        "(`.venv/bin/pip install pyyaml` runs these checks)",
    )
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def kubernetes_objects() -> list[dict[str, Any]]:
    paths = sorted(KUBERNETES.glob("*.yaml"))
    assert paths, f"no manifests in {KUBERNETES}"
    return [document for path in paths for document in load_yaml(path)]


def one_of_kind(kind: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def broker_container(statefulset: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = statefulset["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def mqpy_variables(text: str) -> set[str]:
    return set(re.findall(r"\bMQPY_[A-Z0-9_]+", text))


def deploy_files() -> Iterator[Path]:
    yield from (path for path in DEPLOY.rglob("*") if path.is_file())
    yield DOCKERIGNORE


def shutdown_grace(env: dict[str, str]) -> float:
    raw = env.get("MQPY_SHUTDOWN_GRACE")
    return parse_duration(raw) if raw else Settings().shutdown_grace


def assert_serve_command(command: list[str]) -> None:
    """`command` is the `mqpy` console script running a real subcommand: its arguments
    parse, and `python -m mqpy <subcommand> --help` runs."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts, f"{command[0]!r} is not a console script of the package"
    assert build_parser().parse_args(command[1:]).command == "serve", command
    result = subprocess.run(
        [sys.executable, "-m", "mqpy", *command[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mqpy serve"), result.stdout[:200]


# -- every file ---------------------------------------------------------------------------


def test_every_mqpy_variable_named_in_deploy_files_is_a_real_setting() -> None:
    named = {path: mqpy_variables(path.read_text()) for path in deploy_files()}
    assert any(named.values()), "no MQPY_* variable found: the files were not read"
    unknown = {
        str(path.relative_to(ROOT)): sorted(names - SETTINGS.keys() - CLIENT_VARIABLES)
        for path, names in named.items()
        if names - SETTINGS.keys() - CLIENT_VARIABLES
    }
    assert not unknown, f"not settings of mqpy.config: {unknown}"


# -- Dockerfile ---------------------------------------------------------------------------


def test_the_image_is_slim_python_3_11() -> None:
    images = arguments_of("FROM", dockerfile())
    assert images, "no FROM"
    assert all(image.split()[0] == "python:3.11-slim" for image in images), images


def test_the_package_is_installed_with_pip_without_dev_extras() -> None:
    runs = " ".join(arguments_of("RUN", dockerfile()))
    assert "pip install" in runs
    assert "mq-py" in " ".join(arguments_of("RUN")), "the final stage does not install mq-py"
    assert "[dev" not in runs and " -e " not in runs, runs


def test_the_broker_runs_as_a_numeric_non_root_user() -> None:
    users = arguments_of("USER")
    assert users, "no USER: the broker would run as root"
    # Kubernetes' runAsNonRoot can only verify a numeric uid.
    assert image_uid() > 0, users
    runs = " ".join(arguments_of("RUN"))
    assert f"--uid {image_uid()}" in runs, "USER is not the user the image creates"


def test_data_is_on_a_volume_that_is_the_data_dir() -> None:
    env = image_env()
    volumes = [path for arguments in arguments_of("VOLUME") for path in exec_form(arguments)]
    assert env["MQPY_DATA_DIR"] in volumes, (env, volumes)


def test_it_listens_beyond_loopback_on_the_exposed_port() -> None:
    env = image_env()
    assert env["MQPY_HOST"] == "0.0.0.0"
    assert "MQPY_ADMIN_KEY" not in env, "never bake the admin key into the image"
    (exposed,) = arguments_of("EXPOSE")
    assert exposed == env.get("MQPY_PORT", str(Settings().port))
    assert "MQPY_ADMIN_KEY" in DOCKERFILE.read_text(), "say that a key is required"


def test_image_settings_parse() -> None:
    settings = {name: value for name, value in image_env().items() if name.startswith("MQPY_")}
    # Without this the loop below passes on a Dockerfile that sets nothing (or whose ENV
    # lines the parser stopped finding), which is the case the test exists to catch.
    assert settings, "the image's final stage sets no MQPY_ variable in ENV"
    for name, value in settings.items():
        SETTINGS[name].parse(value)


def test_the_command_is_mqpy_serve() -> None:
    (cmd,) = arguments_of("CMD")
    assert_serve_command(exec_form(cmd))


def test_the_healthcheck_asks_healthz_with_python() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"], command
    assert "/healthz" in command[2] and "urllib" in command[2]


def test_the_healthcheck_fails_when_nothing_answers() -> None:
    result = run_healthcheck(healthcheck_command(), port=unused_port())
    assert result.returncode != 0


def test_the_healthcheck_and_probes_pass_on_a_keyed_server(start_server: ServerFactory) -> None:
    # As deployed: keys configured, and the check and probes send no key.
    server = start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    for path in ("/healthz", "/readyz"):
        answer = raw_http.request(server.url, "GET", path)
        assert answer.status == 200, (path, answer.status, answer.body[:300])
    result = run_healthcheck(healthcheck_command(), port=server.port)
    assert result.returncode == 0, result.stderr


def run_healthcheck(command: list[str], port: int) -> subprocess.CompletedProcess[str]:
    """The image's health check command, with this interpreter for `python`, and a proxy
    in the environment that it must ignore (nothing listens there)."""
    dead_proxy = f"http://127.0.0.1:{unused_port()}"
    env = {"MQPY_PORT": str(port), "HTTP_PROXY": dead_proxy, "http_proxy": dead_proxy}
    return subprocess.run(
        [sys.executable, *command[1:]], capture_output=True, text=True, timeout=30, env=env
    )


def test_dockerignore_keeps_what_the_build_copies_and_drops_secrets() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        source
        for arguments in arguments_of("COPY", dockerfile())
        if not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    ]
    assert copied, "the Dockerfile copies nothing from the context"
    for source in copied:
        assert not ignored(source.rstrip("/"), patterns), f"{source} is in .dockerignore"
    for secret in (".venv", ".git", "mqpy-data", "deploy/mqpy.env", "tests"):
        assert ignored(secret, patterns), f"{secret} would be sent to the builder"


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or one of its
    parent directories decides; `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, body) for prefix in prefixes):
            verdict = not negated
    return verdict


# -- compose ------------------------------------------------------------------------------


def compose_service() -> dict[str, Any]:
    (document,) = load_yaml(COMPOSE)
    (service,) = document["services"].values()
    assert isinstance(service, dict)
    return service


def test_compose_builds_the_dockerfile() -> None:
    build = compose_service()["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert context == ROOT, "the .dockerignore at the root must apply"


def test_compose_keeps_data_on_a_named_volume() -> None:
    (document,) = load_yaml(COMPOSE)
    mounts = [str(volume).split(":") for volume in compose_service()["volumes"]]
    data = [source for source, target, *_ in mounts if target == image_env()["MQPY_DATA_DIR"]]
    assert data and data[0] in document["volumes"], (mounts, document.get("volumes"))


def test_compose_takes_the_admin_key_from_an_env_file() -> None:
    env_files = compose_service()["env_file"]
    paths = [entry["path"] if isinstance(entry, dict) else entry for entry in env_files]
    assert paths, "no env_file"
    for path in paths:
        example = COMPOSE.parent / f"{path}.example"
        assert mqpy_variables(example.read_text()) == {"MQPY_ADMIN_KEY"}
        # Empty, so an unedited copy fails closed (protected mode) instead of running
        # with a key published in the repository.
        assert "MQPY_ADMIN_KEY=\n" in example.read_text()
        assert path in (COMPOSE.parent / ".gitignore").read_text().split()


def test_compose_publishes_the_container_port_and_checks_health() -> None:
    service = compose_service()
    container_ports = {str(port).rsplit(":", 1)[-1] for port in service["ports"]}
    assert arguments_of("EXPOSE")[0] in container_ports
    assert service["healthcheck"]["test"] == ["CMD", *healthcheck_command()]


def test_compose_settings_parse_and_stop_grace_covers_the_shutdown() -> None:
    service = compose_service()
    environment = {str(k): str(v) for k, v in service.get("environment", {}).items()}
    for name, value in environment.items():
        SETTINGS[name].parse(value)
    grace = shutdown_grace({**image_env(), **environment})
    assert parse_duration(service["stop_grace_period"]) > 2 * grace


# -- Kubernetes ---------------------------------------------------------------------------


@pytest.fixture
def objects() -> list[dict[str, Any]]:
    return kubernetes_objects()


@pytest.fixture
def statefulset(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one_of_kind("StatefulSet", objects)


def test_one_replica_of_a_statefulset(statefulset: dict[str, Any]) -> None:
    # The SQLite store is single-writer and its data directory is locked.
    assert statefulset["spec"]["replicas"] == 1
    assert "single-writer" in (KUBERNETES / "statefulset.yaml").read_text()


def test_the_container_runs_mqpy_serve(statefulset: dict[str, Any]) -> None:
    container = broker_container(statefulset)
    assert "command" not in container
    if "args" in container:
        assert_serve_command(container["args"])


def test_probes_ask_healthz_and_readyz_on_the_container_port(
    statefulset: dict[str, Any],
) -> None:
    container = broker_container(statefulset)
    ports = {port.get("name"): port["containerPort"] for port in container["ports"]}
    assert list(ports.values()) == [int(arguments_of("EXPOSE")[0])]
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    if "startupProbe" in container:
        expected["startupProbe"] = "/healthz"
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, (probe, get)
        assert ports.get(get["port"], get["port"]) in ports.values(), (probe, get)


def test_the_data_volume_is_a_claim_mounted_at_the_data_dir(
    statefulset: dict[str, Any],
) -> None:
    container = broker_container(statefulset)
    env = container_env(container)
    data_dir = env["MQPY_DATA_DIR"]["value"] if "MQPY_DATA_DIR" in env else None
    data_dir = data_dir or image_env()["MQPY_DATA_DIR"]
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts[data_dir]["name"] in claims
    assert not mounts[data_dir].get("readOnly", False)


def test_security_context_is_locked_down(statefulset: dict[str, Any]) -> None:
    pod = statefulset["spec"]["template"]["spec"]
    container = broker_container(statefulset)
    pod_context = pod.get("securityContext", {})
    context = container["securityContext"]
    assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    uid = context.get("runAsUser", pod_context.get("runAsUser"))
    assert uid in (None, image_uid()), "a different uid could not write the image's /data"
    # A read-only root: SQLite's temporary files need a writable /tmp.
    assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}


def test_resources_are_requested_and_limited(statefulset: dict[str, Any]) -> None:
    resources = broker_container(statefulset)["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[section].keys(), resources


def test_termination_grace_is_longer_than_the_shutdown(statefulset: dict[str, Any]) -> None:
    env = {
        name: entry["value"]
        for name, entry in container_env(broker_container(statefulset)).items()
        if "value" in entry
    }
    grace = shutdown_grace({**image_env(), **env})
    # On SIGTERM: the HTTP drain, then deliveries in flight, up to `grace` each.
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 2 * grace


def test_settings_in_the_manifest_are_real_and_parse(statefulset: dict[str, Any]) -> None:
    env = container_env(broker_container(statefulset))
    for name, entry in env.items():
        option = SETTINGS[name]
        if "value" in entry:
            assert not option.secret, f"{name} is a secret: take it from a Secret"
            option.parse(str(entry["value"]))
    assert env["MQPY_HOST"]["value"] == "0.0.0.0"


def test_the_admin_key_comes_from_the_example_secret(
    statefulset: dict[str, Any], objects: list[dict[str, Any]]
) -> None:
    reference = container_env(broker_container(statefulset))["MQPY_ADMIN_KEY"]
    selector = reference["valueFrom"]["secretKeyRef"]
    secret = one_of_kind("Secret", objects)
    assert secret["metadata"]["name"] == selector["name"]
    # Empty, so applying the example unedited fails closed (protected mode).
    assert secret["stringData"] == {selector["key"]: ""}


def test_the_service_is_cluster_internal_and_reaches_the_pod(
    statefulset: dict[str, Any], objects: list[dict[str, Any]]
) -> None:
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    governing = services[statefulset["spec"]["serviceName"]]
    assert governing["spec"].get("clusterIP") == "None"
    public = [s for s in services.values() if s["spec"].get("clusterIP") != "None"]
    assert public, "no Service for clients"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    container = broker_container(statefulset)
    ports = {port.get("name"): port["containerPort"] for port in container["ports"]}
    for service in services.values():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert ports.get(target, target) in ports.values(), port


def test_kustomization_applies_everything_but_the_secret() -> None:
    (kustomization,) = load_yaml(KUBERNETES / "kustomization.yaml")
    resources = kustomization["resources"]
    assert all((KUBERNETES / resource).is_file() for resource in resources)
    assert "secret.example.yaml" not in resources
    assert {"statefulset.yaml", "service.yaml"} <= set(resources)
