"""Rendering the chart with Helm's own library, and checking objects against the
Kubernetes OpenAPI schemas (kubernetes-validate) or the vendored CRD schemas."""

from __future__ import annotations

import json
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).parents[2] / "deploy"
CHART = DEPLOY / "helm" / "resnet-triton"
KUBERNETES = "1.30.0"
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com.v1",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com.v1",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.serving.kserve.io.v1beta1",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime.serving.kserve.io.v1alpha1",
}
# What an install must give (values.yaml leaves them empty on purpose).
REQUIRED = {"adminKey": {"secretName": "resnet-triton-admin"},
            "apiKeys": {"secretName": "resnet-triton-api-keys"},
            "modelRepository": {"storeUri": "s3://models/store"}}  # fmt: skip


def render(values: dict) -> list[dict]:
    """`helm template` of the chart with `values` over values.yaml: its objects."""
    rendered = helm_python.Chart.load(str(CHART)).render(values, name="demo", namespace="serving")
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def gpu_values() -> dict:
    return yaml.safe_load((CHART / "values-gpu.yaml").read_text())


def unknown_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Keys the schema does not declare (jsonschema lets them pass: the CRDs never say
    additionalProperties false; the API server would prune or refuse them)."""
    if isinstance(obj, list) and "items" in schema:
        return [
            f
            for i, item in enumerate(obj)
            for f in unknown_fields(item, schema["items"], f"{path}[{i}]")
        ]
    if not isinstance(obj, dict) or "properties" not in schema:
        return []
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("additionalProperties"):
        return []
    found = []
    for key, value in obj.items():
        if key not in schema["properties"]:
            found.append(f"{path}.{key}")
        else:
            found += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
    return found


def validate(obj: dict) -> None:
    """Raise if `obj` is not a valid object of its kind (unknown fields included)."""
    key = (obj["apiVersion"], obj["kind"])
    if key not in CRDS:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        return
    schema = json.loads((DEPLOY / "schemas" / f"{CRDS[key]}.json").read_text())
    jsonschema.Draft7Validator(schema).validate(obj)
    unknown = unknown_fields({k: v for k, v in obj.items() if k != "metadata"}, schema)
    if unknown:
        raise jsonschema.ValidationError(f"{obj['kind']}: unknown fields {unknown}")
