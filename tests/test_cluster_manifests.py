"""The Kubernetes manifests in ``cluster/`` against real schemas, so a typo fails here rather
than in a user's ``kubectl apply`` (issue 13).

- Core kinds (PersistentVolumeClaim, Deployment, Service, Ingress, NetworkPolicy) go through
  ``kubernetes-validate`` with its strict schemas (unknown fields are errors) for the newest
  Kubernetes it ships.
- The RayJob goes through ``jsonschema`` with the KubeRay schema vendored in
  ``tests/schemas/kuberay-rayjob-v1.schema.json`` (its header says where it comes from), whose
  pod templates, env vars, resources and services are ``$ref``s into the same strict core
  definitions.

Each kind also gets a deliberate typo that must fail, so a validator that accepts anything
cannot pass this file.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
MANIFESTS = (
    "mlflow-k8s.yaml",
    "kuberay-rayjob.yaml",
    "networkpolicies.yaml",
    "mlflow-ingress.yaml",
)
K8S = kubernetes_validate.latest_version()
RAYJOB_SCHEMA = Path(__file__).parent / "schemas" / "kuberay-rayjob-v1.schema.json"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def _all_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{n}:{d['kind']}/{d['metadata']['name']}", d) for n in MANIFESTS for d in _docs(n)]


def _rayjob_validator() -> jsonschema.protocols.Validator:
    """The vendored RayJob schema, resolving core refs in kubernetes-validate's definitions."""
    pkg = resources.files(kubernetes_validate) / "kubernetes-json-schema" / f"v{K8S}-local-strict"
    defs = json.loads((pkg / "_definitions.json").read_text())
    registry = Registry().with_resource("/api/_definitions.json", Resource.from_contents(defs))
    schema = json.loads(RAYJOB_SCHEMA.read_text())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(doc: dict[str, Any]) -> None:
    """Raise (jsonschema / kubernetes-validate ValidationError) if ``doc`` is not valid."""
    if doc["kind"] == "RayJob":
        _rayjob_validator().validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S, strict=True)


@pytest.mark.parametrize(("where", "doc"), _all_docs(), ids=[w for w, _ in _all_docs()])
def test_every_manifest_validates(where: str, doc: dict[str, Any]) -> None:
    validate(doc)


def _rayjob() -> dict[str, Any]:
    return copy.deepcopy(_docs("kuberay-rayjob.yaml")[0])


def _deployment() -> dict[str, Any]:
    return copy.deepcopy(next(d for d in _docs("mlflow-k8s.yaml") if d["kind"] == "Deployment"))


def _policy() -> dict[str, Any]:
    return copy.deepcopy(_docs("networkpolicies.yaml")[2])


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is _RENAME:
        node[last + "x"] = node.pop(last)
    else:
        node[last] = value
    return doc


_RENAME = object()  # rename the key (a typo in a field name)

TYPOS = [
    # RayJob: its own fields (the vendored KubeRay schema) ...
    ("rayjob spec field", _rayjob, "spec.submissionMode", _RENAME),
    ("rayjob enum", _rayjob, "spec.submissionMode", "K8sJob"),
    ("rayjob worker field", _rayjob, "spec.rayClusterSpec.workerGroupSpecs.0.maxReplicas", _RENAME),
    ("rayjob replicas type", _rayjob, "spec.rayClusterSpec.workerGroupSpecs.0.replicas", "one"),
    # ... and the core pod template inside it (kubernetes-validate's definitions)
    ("rayjob pod template", _rayjob, "spec.rayClusterSpec.headGroupSpec.template.spec.containers",
     _RENAME),
    ("rayjob env var", _rayjob, "spec.submitterPodTemplate.spec.containers.0.env.0.value", 1),
    ("deployment field", _deployment, "spec.template.spec.containers.0.readinessProbe", _RENAME),
    ("deployment port type", _deployment, "spec.template.spec.containers.0.ports.0.containerPort",
     "5000x"),
    ("networkpolicy field", _policy, "spec.ingress.0.ports", _RENAME),
]  # fmt: skip


@pytest.mark.parametrize(("what", "make", "path", "value"), TYPOS, ids=[t[0] for t in TYPOS])
def test_a_typo_fails(what: str, make: Any, path: str, value: Any) -> None:
    doc = _set(make(), path, value)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_network_policies_cover_the_ray_head_and_mlflow() -> None:
    """Default deny, then only named peers reach the job API (8265) and MLflow (5000)."""
    policies = {d["metadata"]["name"]: d["spec"] for d in _docs("networkpolicies.yaml")}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    ports = {
        name: [p["port"] for rule in spec.get("ingress", []) for p in rule.get("ports", [])]
        for name, spec in policies.items()
    }
    assert ports["ray-job-api"] == [8265] and ports["mlflow-from-ray-and-ingress"] == [5000]
    submitter = _rayjob()["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    allowed = policies["ray-job-api"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= submitter.items()  # the submitter pod carries the admitted label
    mlflow = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert policies["mlflow-from-ray-and-ingress"]["podSelector"]["matchLabels"].items() <= (
        mlflow.items()
    )
