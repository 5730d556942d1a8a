"""The Kubernetes manifests as kustomize renders them, and ways to look into them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
APP = "prompt-orchestrator"  # app.kubernetes.io/name of the orchestrator's own pods

Obj = dict[str, Any]


@cache
def render(overlay: str) -> tuple[Obj, ...]:
    """``kubectl kustomize`` of an overlay. Without kubectl: skipped here, failed
    under CI (where a skip would hide that nothing was checked)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing: CI must render the manifests")
        pytest.skip("kubectl is not installed (CI fails instead of skipping)")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def of_kind(objects: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    return next(o for o in of_kind(objects, kind) if o["metadata"]["name"] == name)


def pod_specs(objects: tuple[Obj, ...]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, pod spec) of every Deployment and Job."""
    for workload in objects:
        if workload["kind"] in ("Deployment", "Job"):
            yield workload, workload["spec"]["template"]["spec"]


def containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def is_ours(workload: Obj) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return bool(labels.get("app.kubernetes.io/name") == APP)


def config_toml(objects: tuple[Obj, ...]) -> dict[str, Any]:
    """The orchestrator.toml the pods get (the generated ConfigMap, hash suffix and all)."""
    config = next(
        o
        for o in of_kind(objects, "ConfigMap")
        if o["metadata"]["name"].startswith("orchestrator-config")
    )
    return tomllib.loads(config["data"]["orchestrator.toml"])


def pod_env(objects: tuple[Obj, ...]) -> dict[str, str]:
    env = next(
        o
        for o in of_kind(objects, "ConfigMap")
        if o["metadata"]["name"].startswith("orchestrator-env")
    )
    return dict(env["data"])
