"""deploy/compose.cluster.yaml and deploy/nginx.conf: three nodes on one PostgreSQL
behind one port, checked without a Docker engine: the files agree with each other and
with the code, and a node started with the nodes' settings really serves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mqpy.config import parse_duration
from mqpy.store import StoreLocation
from tests.conftest import ServerFactory
from tests.support import raw_http
from tests.test_deploy_files import (
    ADMIN_KEY,
    DEPLOY,
    DOCKERFILE,
    ROOT,
    SETTINGS,
    arguments_of,
    healthcheck_command,
    image_env,
    load_yaml,
    mqpy_variables,
    run_healthcheck,
    shutdown_grace,
)

CLUSTER = DEPLOY / "compose.cluster.yaml"
NGINX = DEPLOY / "nginx.conf"


def services() -> dict[str, dict[str, Any]]:
    (document,) = load_yaml(CLUSTER)
    found = document["services"]
    assert isinstance(found, dict)
    return found


def nodes() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if name.startswith("node-")}


def node_env(service: dict[str, Any]) -> dict[str, str]:
    """What a node's process sees: the image's environment, then the service's."""
    own = {str(k): str(v) for k, v in service.get("environment", {}).items()}
    return {**image_env(), **own}


def env_file_paths(service: dict[str, Any]) -> list[str]:
    return [e["path"] if isinstance(e, dict) else e for e in service.get("env_file", [])]


def test_three_nodes_of_the_image_built_from_the_dockerfile() -> None:
    found = nodes()
    assert sorted(found) == ["node-1", "node-2", "node-3"]
    for service in found.values():
        context = (CLUSTER.parent / service["build"]["context"]).resolve()
        assert context == ROOT
        assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert service["healthcheck"]["test"] == ["CMD", *healthcheck_command()]
        assert "ports" not in service, "nodes are reached through the proxy only"


def test_every_node_stores_in_the_compose_postgres() -> None:
    database = services()["postgres"]
    user = database["environment"]["POSTGRES_USER"]
    name = database["environment"]["POSTGRES_DB"]
    for service in nodes().values():
        env = node_env(service)
        location = StoreLocation.parse(env["MQPY_STORE"], Path(env["MQPY_DATA_DIR"] or "mqpy-data"))
        assert location.backend == "postgresql"
        assert location.target == f"postgresql://{user}@postgres:5432/{name}"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in database["healthcheck"]["test"]
    mounts = [str(volume).split(":") for volume in database["volumes"]]
    (document,) = load_yaml(CLUSTER)
    assert any(source in document["volumes"] for source, *_ in mounts), mounts


def test_node_settings_parse_and_stop_grace_covers_the_shutdown() -> None:
    for service in nodes().values():
        env = node_env(service)
        for name in mqpy_variables(" ".join(env)):
            if name != "MQPY_DATA_DIR" or env[name]:
                SETTINGS[name].parse(env[name])
        lease = parse_duration(env["MQPY_LEASE_SECONDS"])
        assert lease >= SETTINGS["MQPY_DELIVERY_TIMEOUT"].parse(
            env.get("MQPY_DELIVERY_TIMEOUT", "10s")
        )
        assert parse_duration(service["stop_grace_period"]) > 2 * shutdown_grace(env)


def test_secrets_come_from_git_ignored_env_files_with_empty_examples() -> None:
    ignored = (DEPLOY / ".gitignore").read_text().split()
    paths = {p for s in services().values() for p in env_file_paths(s)}
    assert paths == {"mqpy.env", "postgres.env"}
    for path in paths:
        assert path in ignored
        example = (DEPLOY / f"{path}.example").read_text()
        assigned = dict(re.findall(r"^([A-Z_]+)=(.*)$", example, re.M))
        assert assigned and all(value == "" for value in assigned.values()), assigned
    password_file = (DEPLOY / "postgres.env.example").read_text()
    assert {"POSTGRES_PASSWORD", "PGPASSWORD"} <= set(
        re.findall(r"^([A-Z_]+)=", password_file, re.M)
    )
    for service in nodes().values():
        assert "postgres.env" in env_file_paths(service)  # libpq reads PGPASSWORD
        assert (
            "@" in node_env(service)["MQPY_STORE"]
            and ":" not in (node_env(service)["MQPY_STORE"].split("//", 1)[1].split("@", 1)[0])
        ), "no password in the URL"


def test_the_proxy_publishes_one_port_and_reaches_every_node() -> None:
    proxy = services()["proxy"]
    (published,) = proxy["ports"]
    host, _host_port, container_port = str(published).split(":")
    assert host == "127.0.0.1"
    assert (DEPLOY / proxy["volumes"][0].split(":")[0]).resolve() == NGINX
    config = NGINX.read_text()
    assert re.search(rf"listen\s+{container_port};", config)
    upstream = set(re.findall(r"server\s+([\w-]+):(\d+);", config))
    assert upstream == {(name, arguments_of("EXPOSE")[0]) for name in nodes()}
    assert set(proxy["depends_on"]) == set(nodes())
    # Above what a node accepts, so that the node answers 413 with a problem body.
    size = re.search(r"client_max_body_size\s+(\d+)m;", config)
    assert size is not None
    assert int(size.group(1)) * 1024 * 1024 > SETTINGS["MQPY_MAX_BATCH_BYTES"].parse("16MiB")


def test_a_node_with_the_nodes_settings_serves_from_postgresql(
    start_server: ServerFactory, postgres_url: str
) -> None:
    env = {
        "MQPY_STORE": postgres_url,
        "MQPY_DATA_DIR": "",
        "MQPY_ADMIN_KEY": ADMIN_KEY,
        "MQPY_LEASE_SECONDS": node_env(nodes()["node-1"])["MQPY_LEASE_SECONDS"],
    }
    server = start_server(env=env)
    for path in ("/healthz", "/readyz"):
        answer = raw_http.request(server.url, "GET", path)
        assert answer.status == 200, (path, answer.status, answer.body[:300])
    assert run_healthcheck(healthcheck_command(), port=server.port).returncode == 0
