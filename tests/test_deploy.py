"""The deploy recipes: deploy/k8s (checked as files: no cluster here) and
deploy/swarm (checked as a file too, and deployed for real on a one-node
swarm; marker ``docker``, ``make e2e``).

Every manifest under deploy/ is parsed with PyYAML (a test extra: without
it these tests fail and say to run ``make install``), and checked for what
matters to a gobucket node and for what deploy/README.md says of it: a
headless Service that the peers' ``dns:`` name points at; the container's
ports, TCP and UDP (the node's probes) on the port the image listens on and
advertises; env values that are strings, ``$(VAR)`` references to earlier
variables, and only settings that gobucket-node reads; the secret from a
Secret; readiness on /v1/status and no liveness probe; a termination grace
period longer than the node's stop grace.

The swarm test initialises a swarm only if this Docker Engine is in none (and
leaves it again), builds the image offline like the compose e2e test, deploys
deploy/swarm/stack.yml with 3 replicas, and checks that they find each other
through ``tasks.node`` and that an overflow through one of them runs.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gobucket_py.cli import build_parser

from .test_docker_e2e import CLIENT, ROOT, SECRET, wait_for

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
STACK_FILE = DEPLOY / "swarm" / "stack.yml"

#: Kubernetes' IANA_SVC_NAME: what a container port's name may be.
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
#: ``kubectl create secret generic NAME --from-literal=KEY=...``
CREATE_SECRET = re.compile(r"kubectl create secret generic (\S+) --from-literal=(\w+)=")


def load_yaml(path: Path) -> list[Any]:
    """Every document of ``path``, parsed by PyYAML's safe loader."""
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is None:
        pytest.fail("PyYAML is not installed, so the deploy/ manifests cannot be checked: "
                    "run make install (it installs the test extras)", pytrace=False)
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(doc, dict) for doc in docs), f"{path}: {docs!r}"
    return docs


def node_settings() -> set[str]:
    """The GOBUCKET_* variables that gobucket-node reads (its --help names each)."""
    found = set(re.findall(r"\[(GOBUCKET_\w+)\]", build_parser().format_help()))
    assert {"GOBUCKET_PEERS", "GOBUCKET_SECRET", "GOBUCKET_APP"} <= found, found
    return found


def image_env() -> dict[str, str]:
    """The ENV of the Dockerfile (``ENV A=1 B=2``, continued lines included)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV (.+)$", text, re.M))))


def check_app(spec: str) -> None:
    """``GOBUCKET_APP``'s module:factory exists in this repository (the image has it)."""
    module, _, factory = spec.partition(":")
    assert callable(getattr(importlib.import_module(module), factory, None)), spec


def stop_grace(env: dict[str, str]) -> float:
    """The node's GOBUCKET_STOP_GRACE (gobucket-node's default when unset)."""
    return float(env.get("GOBUCKET_STOP_GRACE", build_parser().get_default("stop_grace")))


# -- Kubernetes: the manifests -----------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    """Every document of deploy/k8s/*.yaml, by kind (the kustomization by file name)."""
    docs: dict[str, dict[str, Any]] = {}
    paths = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))
    assert {p.name for p in paths} == {"deployment.yaml", "service.yaml", "kustomization.yaml"}
    for path in paths:
        for doc in load_yaml(path):
            kind = doc.get("kind", path.name)
            assert kind not in docs, f"two {kind} documents"
            docs[kind] = doc
    for kind in ("Deployment", "Service"):
        assert docs[kind]["metadata"]["name"], kind
    assert docs["Deployment"]["apiVersion"] == "apps/v1"
    assert docs["Service"]["apiVersion"] == "v1"
    return docs


def test_k8s_kustomization_lists_every_manifest(k8s: dict[str, dict[str, Any]]) -> None:
    others = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(k8s["kustomization.yaml"]["resources"]) == sorted(others)


def test_k8s_headless_service_selects_the_pods(k8s: dict[str, dict[str, Any]]) -> None:
    service, deployment = k8s["Service"]["spec"], k8s["Deployment"]["spec"]
    assert service["clusterIP"] == "None"  # headless: its name resolves to every pod's IP
    assert service["publishNotReadyAddresses"] is True  # a starting pod is found
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"] == labels  # or the API server refuses it
    assert service["selector"] == labels
    ports = {p["name"]: p for p in deployment["template"]["spec"]["containers"][0]["ports"]}
    for port in service["ports"]:  # each reaches a port of the container, the same number
        target = port.get("targetPort", port["port"])
        container = ports[target] if isinstance(target, str) else next(
            p for p in ports.values() if p["containerPort"] == target)
        assert container["containerPort"] == port["port"]
        assert container.get("protocol", "TCP") == port.get("protocol", "TCP")


def test_k8s_container_ports_tcp_and_udp(k8s: dict[str, dict[str, Any]]) -> None:
    spec = k8s["Deployment"]["spec"]["template"]["spec"]
    [node] = spec["containers"]
    env = {e["name"]: e.get("value") for e in node["env"]}
    listens = int(env.get("GOBUCKET_PORT") or image_env()["GOBUCKET_PORT"])
    assert env.get("GOBUCKET_HOST", image_env()["GOBUCKET_HOST"]) == "0.0.0.0"  # pod IP
    exposed = re.findall(r"^EXPOSE (.+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert {f"{listens}", f"{listens}/udp"} <= set(" ".join(exposed).split()), exposed
    ports = node["ports"]
    names = [p["name"] for p in ports]
    assert len(set(names)) == len(names) and all(PORT_NAME.match(n) for n in names), names
    # The peer protocol over TCP and the probes over UDP, both on the node's port.
    assert sorted((p["containerPort"], p.get("protocol", "TCP")) for p in ports) == [
        (listens, "TCP"), (listens, "UDP")]
    assert env["GOBUCKET_ADVERTISE"].rpartition(":")[2] == str(listens)
    service = k8s["Service"]
    assert env["GOBUCKET_PEERS"] == f"dns:{service['metadata']['name']}:{listens}"


def test_k8s_env(k8s: dict[str, dict[str, Any]]) -> None:
    [node] = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    known = node_settings()
    defined: set[str] = set()
    for var in node["env"]:
        name = var["name"]
        assert name not in defined, f"{name} is set twice"
        assert ("value" in var) != ("valueFrom" in var), var
        if "value" in var:
            # An unquoted 5 is an int to YAML, and the API server refuses it.
            assert isinstance(var["value"], str), f"{name}: quote {var['value']!r}"
            # Kubernetes expands $(VAR) only for a variable defined before it.
            for ref in re.findall(r"\$\((\w+)\)", var["value"]):
                assert ref in defined, f"{name} refers to $({ref}), not defined before it"
        if name.startswith("GOBUCKET_"):
            assert name in known, f"{name} is not a setting of gobucket-node"
        defined.add(name)
    env = {e["name"]: e for e in node["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["GOBUCKET_ADVERTISE"]["value"].startswith("$(POD_IP):")
    assert env["GOBUCKET_NODE_ID"]["value"] == "$(POD_NAME)"  # unique per pod
    assert "GOBUCKET_INSECURE" not in env
    check_app(env["GOBUCKET_APP"]["value"])
    # The secret from the Secret that the manifest's header and deploy/README.md create.
    ref = env["GOBUCKET_SECRET"]["valueFrom"]["secretKeyRef"]
    for doc in (K8S / "deployment.yaml", DEPLOY / "README.md"):
        assert CREATE_SECRET.findall(doc.read_text()) == [(ref["name"], ref["key"])], doc


def test_k8s_probes_and_stop(k8s: dict[str, dict[str, Any]]) -> None:
    deployment = k8s["Deployment"]["spec"]
    assert deployment["replicas"] == 3
    rolling = deployment["strategy"]["rollingUpdate"]
    assert deployment["strategy"]["type"] == "RollingUpdate" and rolling["maxUnavailable"] == 0
    pod = deployment["template"]["spec"]
    [node] = pod["containers"]
    env = {e["name"]: e.get("value") for e in node["env"]}
    # Ready once it answers GET /v1/status (read-only, unsigned) on its TCP port.
    probe = node["readinessProbe"]["httpGet"]
    assert probe["path"] == "/v1/status"
    named = {p["name"]: p for p in node["ports"]}
    port = named[probe["port"]] if isinstance(probe["port"], str) else {
        "containerPort": probe["port"]}
    assert port.get("protocol", "TCP") == "TCP" and port["containerPort"] == int(
        env.get("GOBUCKET_PORT") or image_env()["GOBUCKET_PORT"])
    assert "GOBUCKET_PAGES_TOKEN" not in env  # with it, the probe would get 401
    assert "livenessProbe" not in node  # a busy node is not a dead one
    # SIGTERM starts a graceful stop: stop grace plus a last handoff, about 10 s more.
    assert isinstance(pod["terminationGracePeriodSeconds"], int)
    assert pod["terminationGracePeriodSeconds"] > stop_grace(env) + 10


# -- Docker Swarm: the stack file ------------------------------------------------------------------


def test_swarm_stack_file() -> None:
    [stack] = load_yaml(STACK_FILE)
    [(name, service)] = stack["services"].items()
    env = service["environment"]
    assert all(isinstance(v, str) for v in env.values()), env
    assert set(k for k in env if k.startswith("GOBUCKET_")) <= node_settings()
    # tasks.NAME: every task's IP (the plain service name is a virtual IP)
    assert env["GOBUCKET_PEERS"] == f"dns:tasks.{name}:{image_env()['GOBUCKET_PORT']}"
    [secret] = service["secrets"]
    assert env["GOBUCKET_SECRET_FILE"] == f"/run/secrets/{secret}"
    assert stack["secrets"][secret] == {"external": True}
    assert secret == SWARM_SECRET  # what the e2e test creates
    grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert grace and int(grace[1]) > stop_grace(env) + 10
    assert service["deploy"]["replicas"] == REPLICAS
    assert service["deploy"]["update_config"]["order"] == "start-first"
    assert stack["networks"][service["networks"][0]]["driver"] == "overlay"


# -- Docker Swarm: the stack, on a one-node swarm ------------------------------------------------

STACK = "gobucket-e2e"
IMAGE = "gobucket-node:e2e-swarm"
SWARM_SECRET = "gobucket_secret"
REPLICAS = 3


def docker(*args: str, check: bool = True, timeout: float = 120,
           stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


def stack_containers(*, all_: bool = False) -> list[str]:
    return docker("ps", "-q", *(["-a"] if all_ else []), "--filter",
                  f"label=com.docker.stack.namespace={STACK}").stdout.split()


def on_task(cid: str, *args: str) -> Any:
    result = docker("exec", cid, "python3", "-c", CLIENT, SECRET, *args, timeout=60)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def swarm_stack() -> Iterator[None]:
    if docker("info", check=False).returncode != 0:
        pytest.skip("Docker Engine is not reachable")
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    if state != "inactive":
        pytest.skip(f"this Docker Engine is already in a swarm ({state}): not touching it")
    had_gwbridge = docker("network", "inspect", "docker_gwbridge", check=False).returncode == 0
    init = docker("swarm", "init", "--advertise-addr", "127.0.0.1", check=False, timeout=60)
    if init.returncode != 0:
        pytest.skip(f"docker swarm init failed: {init.stderr.strip()}")
    try:
        subprocess.run([str(ROOT / "docker" / "build-base-image.sh")], cwd=ROOT, check=True,
                       timeout=600)
        docker("build", "--build-arg", "BASE_IMAGE=gobucket-base:local", "-t", IMAGE, ".",
               timeout=600)
        docker("secret", "create", SWARM_SECRET, "-", stdin=SECRET)
        deploy = subprocess.run(
            ["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(STACK_FILE),
             STACK], cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "GOBUCKET_IMAGE": IMAGE})
        assert deploy.returncode == 0, deploy.stderr
        yield
    finally:
        docker("stack", "rm", STACK, check=False)
        deadline = time.monotonic() + 60
        while stack_containers(all_=True) and time.monotonic() < deadline:
            time.sleep(1)
        left = stack_containers(all_=True)
        docker("secret", "rm", SWARM_SECRET, check=False)
        docker("rmi", IMAGE, check=False)
        docker("swarm", "leave", "--force", check=False, timeout=60)
        if not had_gwbridge:  # made by `swarm init`
            docker("network", "rm", "docker_gwbridge", check=False)
        assert left == [], f"containers left behind: {left}"
        assert docker("image", "inspect", IMAGE, check=False).returncode != 0, "image left"
        state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
        assert state == "inactive", state


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_swarm_stack_with_three_replicas(swarm_stack: None) -> None:
    """deploy/swarm/stack.yml, 3 replicas: they find each other through
    ``dns:tasks.node:6666``, each under its own overlay IP, and an overflow
    through one of them spreads over the others and runs."""
    def healthy() -> bool:
        ids = stack_containers()
        return len(ids) == REPLICAS and all(
            docker("inspect", "-f", "{{.State.Health.Status}}", cid).stdout.strip()
            == "healthy" for cid in ids)

    wait_for(healthy, 120, step=1.0)
    ids = stack_containers()
    views: dict[str, dict[str, Any]] = {}

    def meshed() -> bool:
        for cid in ids:
            views[cid] = on_task(cid, "stats")
        nodes = {v["node"] for v in views.values()}
        return len(nodes) == REPLICAS and all(
            set(v["peers"]) == nodes - {v["node"]} and set(v["peers"].values()) == {"alive"}
            for v in views.values())

    took = wait_for(meshed, 90, step=1.0)
    print(f"\nswarm: {REPLICAS} tasks meshed through dns:tasks.node:6666 within {took:.1f} s: "
          f"{sorted(v['node'] for v in views.values())}")
    assert all(re.fullmatch(r"\d+\.\d+\.\d+\.\d+:6666", v["node"]) for v in views.values())

    tasks = [f"e2e-swarm-{i:03d}" for i in range(250)]
    first = ids[0]
    placed = Counter(on_task(first, "fill", "4", *tasks))
    print(f"swarm: placed {dict(sorted(placed.items()))} through {views[first]['node']}")
    assert placed[views[first]["node"]] == 100 and len(placed) == REPLICAS

    def finished() -> dict[str, int]:
        stats = [on_task(cid, "stats") for cid in ids]
        return {s["node"]: s["buckets"]["backups"]["finished"] for s in stats}

    wait_for(lambda: sum(finished().values()) >= len(tasks), 60, step=1.0)
    done = finished()
    print(f"swarm: finished {dict(sorted(done.items()))}")
    assert done == dict(placed)
