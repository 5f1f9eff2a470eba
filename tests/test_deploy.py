"""The deploy recipes: deploy/k8s (checked as files: no cluster here) and
deploy/swarm (deployed for real on a one-node swarm; marker ``docker``,
``make e2e``).

The Kubernetes manifests are loaded with PyYAML when it is installed (it is
not a dependency: the check is skipped without it) and always checked as text
for what matters to a gobucket node: a headless Service that the peers' dns:
name points at, the secret from a Secret, readiness on /v1/status, and a
termination grace period longer than the node's stop grace.

The swarm test initialises a swarm only if this Docker Engine is in none (and
leaves it again), builds the image offline like the compose e2e test, deploys
deploy/swarm/stack.yml with 3 replicas, and checks that they find each other
through ``tasks.node`` and that an overflow through one of them runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from .test_docker_e2e import CLIENT, ROOT, SECRET, wait_for

K8S = ROOT / "deploy" / "k8s"
STACK_FILE = ROOT / "deploy" / "swarm" / "stack.yml"


def _env(deployment: str, name: str) -> str:
    found = re.search(rf"- name: {name}\n\s+value: \"?([^\"\n]+)\"?", deployment)
    assert found, f"{name} is not set in the Deployment"
    return found.group(1)


# -- Kubernetes: the manifests -----------------------------------------------------------------


def test_k8s_manifests_as_text() -> None:
    service = (K8S / "service.yaml").read_text()
    deployment = (K8S / "deployment.yaml").read_text()
    name = re.search(r"^  name: (\S+)$", service, re.M)
    assert name and "clusterIP: None" in service and "publishNotReadyAddresses: true" in service
    assert _env(deployment, "GOBUCKET_PEERS") == f"dns:{name.group(1)}:6666"
    assert re.search(r"name: GOBUCKET_SECRET\n\s+valueFrom:\n\s+secretKeyRef:", deployment)
    assert re.search(r"readinessProbe:\n\s+httpGet:\n\s+path: /v1/status", deployment)
    assert "livenessProbe" not in deployment
    grace = re.search(r"terminationGracePeriodSeconds: (\d+)", deployment)
    assert grace and int(grace.group(1)) > float(_env(deployment, "GOBUCKET_STOP_GRACE")) + 10
    assert _env(deployment, "GOBUCKET_ADVERTISE") == "$(POD_IP):6666"


def test_k8s_manifests_load_with_pyyaml() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the manifests were "
                               "checked as text only")
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc.get("kind", path.name)] = doc
    service, deployment = docs["Service"], docs["Deployment"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == service["spec"]["selector"]
    node = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in node["env"]}
    assert env["GOBUCKET_PEERS"]["value"] == f"dns:{service['metadata']['name']}:6666"
    assert env["GOBUCKET_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "secret"
    assert node["readinessProbe"]["httpGet"]["path"] == "/v1/status"
    assert node["ports"][0]["containerPort"] == service["spec"]["ports"][0]["port"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(
        env["GOBUCKET_STOP_GRACE"]["value"]) + 10
    assert set(docs["kustomization.yaml"]["resources"]) == {"service.yaml", "deployment.yaml"}


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
