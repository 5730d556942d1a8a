"""deploy/k8s, rendered by kustomize (no cluster here): valid Kubernetes 1.32
objects, safe rollouts by arithmetic, and cross-checks against the app itself."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml
from django.core.management import get_commands
from django.db import connection
from django.urls import resolve

from inference.models import InferenceRequest, Status
from pipeline.status_port import status_app
from tests.deploy.rendered import (
    K8S,
    OVERLAYS,
    ROOT,
    Obj,
    config_toml,
    containers,
    is_ours,
    named,
    of_kind,
    pod_env,
    pod_specs,
    render,
)

# Kinds from CRDs (KEDA, Gateway API, prometheus-operator): no schema offline;
# the invariants below check them.
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "HTTPRoute", "ServiceMonitor"}
SECRET = "orchestrator-secrets"


@pytest.fixture(params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> tuple[Obj, ...]:
    return render(request.param)


def test_every_core_object_is_valid_kubernetes_1_32(objects: tuple[Obj, ...]) -> None:
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, "1.32.0", strict=True)
    assert {"Deployment", "Service", "PodDisruptionBudget", "Job", "NetworkPolicy"} <= kinds


def test_every_container_is_sized_secured_and_pinned(objects: tuple[Obj, ...]) -> None:
    for workload, spec in pod_specs(objects):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] and pod["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for container in containers(spec):
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert {"requests", "limits"} <= set(container["resources"]), where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), f"{where}: {image}"


def test_every_long_running_container_has_probes(objects: tuple[Obj, ...]) -> None:
    for workload, spec in pod_specs(objects):
        if workload["kind"] == "Job":
            continue
        for container in spec["containers"]:
            assert {"livenessProbe", "readinessProbe"} & set(container), container["name"]
            if is_ours(workload):
                assert {"startupProbe", "livenessProbe"} <= set(container), container["name"]


def test_the_termination_grace_covers_the_shutdown(objects: tuple[Obj, ...]) -> None:
    """Web: preStop + the stream grace + margin; worker: its hand-back grace +
    margin, so neither is SIGKILLed mid-shutdown (a scale-in loses nothing)."""
    grace = config_toml(objects)["worker"]["shutdown_grace_seconds"]
    web = named(objects, "Deployment", "orchestrator-web")["spec"]["template"]["spec"]
    pre_stop = web["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert web["terminationGracePeriodSeconds"] >= pre_stop + grace + 5
    worker = named(objects, "Deployment", "orchestrator-worker")["spec"]["template"]["spec"]
    assert "lifecycle" not in worker["containers"][0]  # no traffic to drain
    assert worker["terminationGracePeriodSeconds"] >= grace + 10


def test_every_deployment_of_ours_waits_for_the_migrations(objects: tuple[Obj, ...]) -> None:
    deployments = [d for d in of_kind(objects, "Deployment") if is_ours(d)]
    assert len(deployments) == 2
    for deployment in deployments:
        init = deployment["spec"]["template"]["spec"]["initContainers"]
        assert [c["name"] for c in init] == ["wait-for-migrations"]
        assert "manage.py migrate --check" in init[0]["command"][-1]
    job = named(objects, "Job", "orchestrator-migrate")["spec"]
    assert job["template"]["spec"]["containers"][0]["args"] == ["migrate", "--noinput"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def pod_labels(objects: tuple[Obj, ...]) -> list[dict[str, str]]:
    return [d["spec"]["template"]["metadata"]["labels"] for d in of_kind(objects, "Deployment")]


def selects(selector: dict[str, str], objects: tuple[Obj, ...]) -> bool:
    return any(selector.items() <= labels.items() for labels in pod_labels(objects))


def test_every_selector_and_target_names_a_real_workload(objects: tuple[Obj, ...]) -> None:
    for service in of_kind(objects, "Service"):
        assert selects(service["spec"]["selector"], objects), service["metadata"]["name"]
    for budget in of_kind(objects, "PodDisruptionBudget"):
        assert selects(budget["spec"]["selector"]["matchLabels"], objects)
    deployments = {d["metadata"]["name"] for d in of_kind(objects, "Deployment")}
    for scaler in [*of_kind(objects, "HorizontalPodAutoscaler"), *of_kind(objects, "ScaledObject")]:
        assert scaler["spec"]["scaleTargetRef"]["name"] in deployments
    services = {s["metadata"]["name"] for s in of_kind(objects, "Service")}
    for route in of_kind(objects, "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            assert {ref["name"] for ref in rule["backendRefs"]} <= services
    for monitor in of_kind(objects, "ServiceMonitor"):
        labels = monitor["spec"]["selector"]["matchLabels"]
        assert any(
            labels.items() <= s["metadata"]["labels"].items() for s in of_kind(objects, "Service")
        )


def test_disruption_budgets_never_block_a_node_drain(objects: tuple[Obj, ...]) -> None:
    for budget in of_kind(objects, "PodDisruptionBudget"):
        assert "minAvailable" not in budget["spec"] and budget["spec"]["maxUnavailable"] >= 1


def test_the_namespace_enforces_the_restricted_pod_security(objects: tuple[Obj, ...]) -> None:
    (namespace,) = of_kind(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def referenced_secret_keys(objects: tuple[Obj, ...]) -> set[str]:
    """Keys of the operator's Secret the manifests read, however they read it."""
    keys = {
        value.rsplit("/", 1)[1]
        for name, value in pod_env(objects).items()
        if name.endswith("_FILE") and value.startswith("/run/secrets/orchestrator/")
    }
    for auth in of_kind(objects, "TriggerAuthentication"):
        keys |= {ref["key"] for ref in auth["spec"]["secretTargetRef"] if ref["name"] == SECRET}
    for monitor in of_kind(objects, "ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            credentials = endpoint.get("authorization", {}).get("credentials")
            if credentials:
                keys.add(credentials["key"])
    return keys


def test_every_secret_the_manifests_read_is_documented(objects: tuple[Obj, ...]) -> None:
    for _, spec in pod_specs(objects):
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] == SECRET
    readme = (ROOT / "README.md").read_text()
    deploy = readme[readme.index("## Deploy") :]
    keys = referenced_secret_keys(objects)
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"} <= keys
    for key in keys:
        assert f"`{key}`" in deploy, f"the README's Deploy section does not document {key}"


# --- cross-checks against the app ------------------------------------------------------


def test_probe_paths_exist_and_send_a_host_django_allows(objects: tuple[Obj, ...]) -> None:
    allowed = pod_env(objects)["ALLOWED_HOSTS"].split(",")
    web = named(objects, "Deployment", "orchestrator-web")["spec"]["template"]["spec"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = web["containers"][0][kind]["httpGet"]
        resolve(probe["path"])  # a Resolver404 fails the test
        assert {h["name"]: h["value"] for h in probe["httpHeaders"]}["Host"] in allowed
    assert web["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"
    # ...and Prometheus, scraping the pod by address, sends its IP: settings add it.
    (pod_ip,) = web["containers"][0]["env"]
    assert pod_ip == {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    assert web["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/health/live"


def test_the_worker_probe_is_what_its_status_port_serves(objects: tuple[Obj, ...]) -> None:
    worker = named(objects, "Deployment", "orchestrator-worker")["spec"]["template"]["spec"]
    container = worker["containers"][0]
    probe = container["livenessProbe"]["httpGet"]
    port = next(p for p in container["ports"] if p["name"] == probe["port"])
    args = container["args"]
    assert args[args.index("--metrics-port") + 1] == str(port["containerPort"])
    assert config_toml(objects)["worker"]["metrics_addr"] == "0.0.0.0"  # reachable by kubelet
    answered: list[str] = []
    body = status_app(lambda: True)({"PATH_INFO": probe["path"]}, lambda s, h: answered.append(s))
    assert answered == ["200 OK"] and list(body) == [b"ok\n"]


def test_commands_are_real_management_commands_on_the_right_ports(objects: tuple[Obj, ...]) -> None:
    commands = get_commands()
    for workload, spec in pod_specs(objects):
        if not is_ours(workload):
            continue
        for container in spec["containers"]:
            assert container["args"][0] in commands, container["args"]
    web = named(objects, "Deployment", "orchestrator-web")["spec"]["template"]["spec"]
    args = web["containers"][0]["args"]
    assert args[:1] == ["serve"] and args[args.index("--port") + 1] == "8000"
    assert web["containers"][0]["ports"] == [{"name": "http", "containerPort": 8000}]


@pytest.mark.django_db
def test_the_keda_query_counts_the_queue_in_worker_slots() -> None:
    (scaler,) = of_kind(render("prod"), "ScaledObject")
    query = scaler["spec"]["triggers"][0]["metadata"]["query"]
    per_worker = config_toml(render("prod"))["worker"]["concurrency"]
    assert f"+ {per_worker - 1}) / {per_worker}" in re.sub(r"\s+", " ", query)
    for status in [Status.PENDING] * 6 + [Status.PROCESSING] * 3 + [Status.COMPLETED] * 5:
        InferenceRequest.objects.create(prompt="p", session_id="s", backend="echo", status=status)
    with connection.cursor() as cursor:
        cursor.execute(query)
        (workers,) = cursor.fetchone()
    assert workers == 2  # 9 waiting or running, 8 slots a worker


def test_the_argocd_component_makes_the_migration_a_sync_hook(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No overlay here uses it: render it on top of the base."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        render("prod")  # skips (or fails under CI) the same way
    base, argocd = (os.path.relpath(K8S / p, tmp_path) for p in ("base", "components/argocd"))
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{base}]\ncomponents: [{argocd}]\n")
    out = subprocess.run(
        [str(kubectl), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    job = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Job")
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "Sync"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook-delete-policy"] == (
        "BeforeHookCreation"
    )
