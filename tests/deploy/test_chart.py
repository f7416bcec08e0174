"""The Helm chart, the KServe manifests, the adapter rule and the dashboard: rendered by
Helm's own library and validated offline against Kubernetes' and the CRDs' schemas."""

import json
import re
import shlex
from pathlib import Path

import helm_python
import pytest
import yaml
from manifests import CHART, DEPLOY, REQUIRED, gpu_values, render, unknown_fields, validate

from resnet_triton.serving import capture
from resnet_triton.serving.fence import check_unfenced
from resnet_triton.spec import Names

ADAPTER = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
DASHBOARD = json.loads((DEPLOY / "grafana" / "resnet-triton.json").read_text())


def by_kind(objects: list[dict]) -> dict[str, dict]:
    kinds = {obj["kind"]: obj for obj in objects}
    assert len(kinds) == len(objects), "one object of each kind"
    return kinds


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_cpu_and_gpu_values_render_and_validate(target):
    values = REQUIRED if target == "cpu" else {
        **gpu_values(), "adminKey": {"secretName": "admin"}, "apiKeys": {"allowAnonymous": True},
        "modelRepository": {"source": "pvc", "pvc": {"claimName": "models"}},
    }  # fmt: skip
    objects = render(values)
    for obj in objects:
        validate(obj)
    kinds = by_kind(objects)
    assert set(kinds) == {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceMonitor", "NetworkPolicy", "PrometheusRule",
    }  # fmt: skip
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["env"][0]["valueFrom"]["secretKeyRef"]["name"] == values["adminKey"]["secretName"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    assert server["readinessProbe"]["exec"]["command"][1:3] == ["-m", "resnet_triton.serving.probe"]
    # /v2/health/ready needs a key behind the fence: startup is the probe, which sends the
    # container's own healthcheck key; liveness stays on the always-open /v2/health/live.
    startup = server["startupProbe"]
    assert "httpGet" not in startup
    assert startup["exec"]["command"][1:5] == [
        "-m", "resnet_triton.serving.probe", "--url", "localhost:8000"
    ]  # fmt: skip
    assert startup["timeoutSeconds"] > float(startup["exec"]["command"][-1])  # the probe's own
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["TRITON_BIND_ADDRESS"] == "0.0.0.0"  # a Service is reachable by the cluster
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts["/workspace/model_repository"]["readOnly"] is True
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    if target == "cpu":
        assert "command" not in server  # the CPU image's entrypoint: nginx and serve
        assert "nvidia.com/gpu" not in server["resources"]["limits"]
        (sync,) = pod["initContainers"]
        assert sync["command"][:3] == ["aws", "s3", "sync"]
        assert sync["command"][-2:] == ["s3://models/store/cpu", "/workspace/model_repository"]
        assert server["securityContext"]["readOnlyRootFilesystem"] is True
    else:
        assert server["command"][:3] == [
            "resnet-triton", "serve", "--tritonserver=/opt/tritonserver/bin/tritonserver"
        ]  # fmt: skip
        assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "initContainers" not in pod
        claim = next(v for v in pod["volumes"] if v["name"] == "model-repository")
        assert claim["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == ADAPTER["rules"]["custom"][0]["name"]["as"]
    assert metric["pods"]["target"]["averageValue"] == ("20000" if target == "cpu" else "5000")
    assert "replicas" not in kinds["Deployment"]["spec"]  # the autoscaler owns the count


def test_the_gcs_store_and_fixed_replicas():
    objects = by_kind(render({**REQUIRED, "modelRepository": {"storeUri": "gs://b/store/"},
                              "autoscaling": {"enabled": False}, "replicas": 3,
                              "serviceAccountName": "store-reader"}))  # fmt: skip
    assert "HorizontalPodAutoscaler" not in objects
    deployment = objects["Deployment"]["spec"]
    assert deployment["replicas"] == 3
    (sync,) = deployment["template"]["spec"]["initContainers"]
    assert sync["command"] == ["gsutil", "-m", "rsync", "-r", "gs://b/store/cpu",
                               "/workspace/model_repository"]  # fmt: skip
    assert sync["image"].startswith("gcr.io/google.com/cloudsdktool/")
    assert deployment["template"]["spec"]["serviceAccountName"] == "store-reader"  # its identity


OPEN = {"adminKey": REQUIRED["adminKey"], "modelRepository": REQUIRED["modelRepository"]}
KEYS_FILE = "/run/secrets/resnet-triton/api-keys"


def serving(values: dict) -> tuple[dict, dict, dict]:
    """The pod spec, its serving container and that container's env (name -> value)."""
    pod = by_kind(render(values))["Deployment"]["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    return pod, server, {e["name"]: e.get("value") for e in server["env"]}


def test_the_keys_secret_is_mounted_where_the_fence_reads_it():
    """apiKeys.secretName: the Secret's keys file, read-only, named by the env the CPU
    image's fence reads; the rate limit travels as its env too."""
    pod, server, env = serving(REQUIRED)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["api-keys"]["secret"] == {
        "secretName": REQUIRED["apiKeys"]["secretName"], "defaultMode": 0o440,
        "items": [{"key": "api-keys", "path": "api-keys"}], "optional": False,
    }  # fmt: skip
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["api-keys"] == {"name": "api-keys", "mountPath": "/run/secrets/resnet-triton",
                                  "readOnly": True}  # fmt: skip
    assert env["RESNET_TRITON_API_KEYS_FILE"] == KEYS_FILE
    assert "RESNET_TRITON_ALLOW_ANONYMOUS" not in env
    assert env["TRITON_BIND_ADDRESS"] == "0.0.0.0"
    assert (env["RESNET_TRITON_RATE_LIMIT"], env["RESNET_TRITON_RATE_BURST"]) == ("100", "200")
    other = {
        "apiKeys": {"secretKey": "keys.txt"},
        "rateLimit": {"requestsPerSecond": 0, "burst": 5},
    }
    pod, _, env = serving(merge(REQUIRED, other))
    assert (env["RESNET_TRITON_RATE_LIMIT"], env["RESNET_TRITON_RATE_BURST"]) == ("0", "5")
    (keys,) = [v for v in pod["volumes"] if v["name"] == "api-keys"]
    assert keys["secret"]["items"] == [{"key": "keys.txt", "path": "api-keys"}]


def test_capture_is_off_unless_asked_and_kept_in_its_own_volume():
    """capture.enabled: the env that switches the server's capture on (serving/capture.py
    reads it as the container will) and /captures, an emptyDir sized past the cap, or a
    claim; the gpu target, whose TensorRT classifier sees pixels only, is refused."""
    pod, server, env = serving(REQUIRED)
    assert "RESNET_TRITON_CAPTURE_DIR" not in env
    assert "captures" not in {v["name"] for v in pod["volumes"]}
    on = merge(REQUIRED, {"capture": {"enabled": True, "share": 0.05, "maxMB": 512}})
    pod, server, env = serving(on)
    settings = capture.from_environment(env, "pod-classifier_0_0")
    assert settings.directory == Path("/captures/pod-classifier_0_0")
    assert (settings.share, settings.cap_bytes) == (0.05, 512 * 2**20)
    assert settings.retention_s == 168 * 3600
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["captures"] == {"name": "captures", "emptyDir": {"sizeLimit": "576Mi"}}
    assert {"name": "captures", "mountPath": "/captures"} in server["volumeMounts"]
    pod, _, _ = serving(merge(on, {"capture": {"pvc": "captures-claim"}}))
    (claim,) = [v for v in pod["volumes"] if v["name"] == "captures"]
    assert claim["persistentVolumeClaim"] == {"claimName": "captures-claim"}
    gpu = {**gpu_values(), **OPEN, "apiKeys": {"allowAnonymous": True}}
    with pytest.raises(helm_python.HelmError, match="capture.enabled: the gpu target's TensorRT"):
        render(merge(gpu, {"capture": {"enabled": True}}))


def test_publishing_without_keys_needs_the_explicit_opt_out():
    with pytest.raises(helm_python.HelmError) as error:
        render(OPEN)
    assert "apiKeys.secretName" in str(error.value)
    assert "apiKeys.allowAnonymous=true" in str(error.value)
    pod, server, env = serving(merge(OPEN, {"apiKeys": {"allowAnonymous": True}}))
    assert env["RESNET_TRITON_ALLOW_ANONYMOUS"] == "1"
    assert env["TRITON_BIND_ADDRESS"] == "0.0.0.0"
    assert "RESNET_TRITON_API_KEYS_FILE" not in env
    assert "api-keys" not in {v["name"] for v in pod["volumes"]}
    with pytest.raises(helm_python.HelmError, match="and apiKeys.allowAnonymous=true contradict"):
        render(merge(REQUIRED, {"apiKeys": {"allowAnonymous": True}}))  # which one is meant?


def test_the_gpu_target_has_no_proxy_to_check_keys():
    """NVIDIA's image runs no nginx: keys there would be a promise nothing keeps, so the
    chart refuses them, and publishes the GPU pods only with the explicit opt-out."""
    gpu = {**gpu_values(), **OPEN}
    with pytest.raises(helm_python.HelmError) as error:
        render({**gpu, "apiKeys": REQUIRED["apiKeys"]})
    assert "target gpu" in str(error.value) and "apiKeys.secretName" in str(error.value)
    with pytest.raises(helm_python.HelmError, match="apiKeys.allowAnonymous=true"):
        render(gpu)
    _, server, env = serving({**gpu, "apiKeys": {"allowAnonymous": True}})
    assert env["TRITON_BIND_ADDRESS"] == "0.0.0.0"
    # serve, published with no proxy in front, starts only with the opt-out said to it
    # (fence.check_unfenced); no fence is there to read the rate limits.
    assert {n: v for n, v in env.items() if n.startswith("RESNET_TRITON_")} == {
        "RESNET_TRITON_ALLOW_ANONYMOUS": "1"}  # fmt: skip
    check_unfenced(env, "0.0.0.0")  # the pod's environment passes serve's check


def documented_upgrades() -> list[str]:
    """Every `helm upgrade` command deploy/README.md and values.yaml show, as written."""
    readme = [line for line in (DEPLOY / "README.md").read_text().splitlines()
              if line.startswith("helm upgrade ")]  # fmt: skip
    comments = re.findall(r"`(helm upgrade [^`]+)`", (CHART / "values.yaml").read_text())
    assert readme and comments, "the rollout command is documented in both"
    return readme + comments


def documented_installs() -> list[str]:
    """Every `helm install` of the chart in deploy/README.md, its continuation lines joined."""
    commands = re.findall(r"^helm install \S+ deploy/helm/resnet-triton(?:.*\\\n)*.*$",
                          (DEPLOY / "README.md").read_text(), flags=re.MULTILINE)  # fmt: skip
    assert len(commands) >= 2, "the CPU and the GPU install are documented"
    return [command.replace("\\\n", " ") for command in commands]


@pytest.mark.parametrize("command", documented_installs())
def test_the_documented_installs_render(command):
    """As written: its -f files and --set flags (Helm's own parser) over values.yaml."""
    values: dict = {}
    words = shlex.split(command)
    for flag, argument in zip(words, words[1:], strict=False):
        if flag in ("-f", "--values"):
            values = merge(values, yaml.safe_load((DEPLOY.parent / argument).read_text()))
    values = set_values(command, values)
    for obj in render(values):
        validate(obj)


def set_values(command: str, reused: dict) -> dict:
    """The values `command` gives the chart: `reused` (--reuse-values) with each `--set`
    parsed by Helm's own parser, which types `4` as a number."""
    values = reused
    words = shlex.split(command)
    for flag, expression in zip(words, words[1:], strict=False):
        if flag == "--set":
            values = merge(values, helm_python.parse_set_string(expression))
    return values


def merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = merge(base[key], value) if nested else value
    return merged


def pod(values: dict) -> dict:
    return by_kind(render(values))["Deployment"]["spec"]["template"]


@pytest.mark.parametrize("command", documented_upgrades())
def test_a_model_version_is_the_rollout(command):
    """The documented `helm upgrade --set model.version=N`, parsed as Helm parses it: the
    pods copy that store version and say so; changing it changes the pod template (the
    rollout), and the latest stays the default."""
    values = set_values(command, REQUIRED)
    version = values["model"]["version"]
    assert isinstance(version, int), "Helm's --set types a bare number as one"
    rolled, latest = pod(values), pod(REQUIRED)
    for obj in render(values):
        validate(obj)
    (sync,) = rolled["spec"]["initContainers"]
    assert sync["command"][-2] == f"s3://models/store/versions/cpu/{version}"
    assert rolled["metadata"]["annotations"] == {"resnet-triton/model-version": str(version)}
    assert latest["metadata"]["annotations"] == {"resnet-triton/model-version": "latest"}
    assert latest["spec"]["initContainers"][0]["command"][-2] == "s3://models/store/cpu"
    # --set-string (or a quoted "4"), a values file's 4 (a float to Helm) and large
    # numbers alike.
    for same in (str(version), float(version)):
        assert pod(merge(REQUIRED, {"model": {"version": same}})) == rolled
    for big in (set_values("--set model.version=12345678", REQUIRED),
                merge(REQUIRED, {"model": {"version": 12345678.0}})):  # fmt: skip
        copy = pod(big)["spec"]["initContainers"][0]["command"]
        assert copy[-2].endswith("/versions/cpu/12345678")  # not 1.2345678e+07
    with pytest.raises(helm_python.HelmError) as error:
        render(merge(values, {"modelRepository": {"source": "pvc", "pvc": {"claimName": "m"}}}))
    assert "model.version names a version of the model store; modelRepository.source pvc" in str(
        error.value
    )


@pytest.mark.parametrize(
    "values, message",
    [
        ({"modelRepository": REQUIRED["modelRepository"]}, "at '/adminKey/secretName': minLength"),
        ({**REQUIRED, "model": {"version": "latest"}},
         "at '/model/version': 'latest' does not match pattern"),
        ({**REQUIRED, "model": {"version": 0}}, "at '/model/version': minimum: got 0, want 1"),
        ({**REQUIRED, "model": {"version": 2.5}}, "at '/model/version': got number, want"),
        ({**REQUIRED, "replicas": 0}, "at '/replicas': minimum: got 0, want 1"),
        ({**REQUIRED, "target": "tpu"}, "at '/target': value must be one of 'cpu', 'gpu'"),
        ({**REQUIRED, "modelRepository": {"storeUri": "http://models/store"}},
         "at '/modelRepository/storeUri': 'http://models/store' does not match pattern"),
        ({**REQUIRED, "modelRepository": {"source": "pvc"}},
         "at '/modelRepository/pvc/claimName': minLength"),
        ({**REQUIRED, "autoscaling": {"minReplicas": 0}}, "at '/autoscaling/minReplicas': minimum"),
        ({**REQUIRED, "replica": 2}, "additional properties 'replica' not allowed"),
        ({**REQUIRED, "apiKeys": {"secretName": "k", "allowAnonymous": "yes"}},
         "at '/apiKeys/allowAnonymous': got string, want boolean"),
        ({**REQUIRED, "apiKeys": {"secretName": "k", "secretKey": ""}},
         "at '/apiKeys/secretKey': minLength"),
        ({**REQUIRED, "apiKeys": {"secretName": "k", "keys": "inline"}},
         "additional properties 'keys' not allowed"),
        ({**REQUIRED, "rateLimit": {"requestsPerSecond": -1}},
         "at '/rateLimit/requestsPerSecond': minimum: got -1, want 0"),
        ({**REQUIRED, "rateLimit": {"burst": 2.5}}, "at '/rateLimit/burst': got number, want"),
        ({**REQUIRED, "capture": {"enabled": True, "share": 2}}, "at '/capture/share': maximum"),
    ],
)  # fmt: skip
def test_bad_values_fail_with_the_value_named(values, message):
    with pytest.raises(helm_python.HelmValuesError) as error:
        render(values)
    assert message in str(error.value)


CANARY = {"enabled": True, "version": 4, "weight": 10, "gateway": {"name": "gw"}}


def documented_canary() -> str:
    """deploy/README.md's command that starts a canary, as written."""
    (command,) = re.findall(r"^ +(helm upgrade .*--set canary\.enabled=true.*)$",
                            (DEPLOY / "README.md").read_text(), flags=re.MULTILINE)  # fmt: skip
    return command


def test_a_canary_is_a_second_deployment_weighted_by_gateway_routes():
    """`canary`, as documented: its own Deployment (store version 5, one pod, no
    autoscaler) whose pods no stable selector picks, its Service and NetworkPolicy, and an
    HTTPRoute and a GRPCRoute sending 10% of the requests to it and 90% to the stable
    Service (version 3); with the Gateway's namespace where one is given."""
    objects = render(set_values(documented_canary(), merge(REQUIRED, {"model": {"version": 3}})))
    named = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for obj in objects:
        if not obj["kind"].endswith("Route"):  # Gateway API: no vendored CRD schema
            validate(obj)
    stable, canary = (
        named["Deployment", "demo-resnet-triton"],
        named["Deployment", "demo-resnet-triton-canary"],
    )
    versions = [d["spec"]["template"]["metadata"]["annotations"]["resnet-triton/model-version"]
                for d in (stable, canary)]  # fmt: skip
    assert versions == ["3", "5"]
    (sync,) = canary["spec"]["template"]["spec"]["initContainers"]
    assert sync["command"][-2] == "s3://models/store/versions/cpu/5"
    assert canary["spec"]["replicas"] == 1
    assert [o["spec"]["scaleTargetRef"]["name"] for o in objects
            if o["kind"] == "HorizontalPodAutoscaler"] == ["demo-resnet-triton"]  # fmt: skip
    pods = canary["spec"]["template"]["metadata"]["labels"]
    budget = named["PodDisruptionBudget", "demo-resnet-triton"]["spec"]["selector"]
    for selector in (named["Service", "demo-resnet-triton"]["spec"]["selector"],
                     stable["spec"]["selector"]["matchLabels"], budget["matchLabels"]):  # fmt: skip
        assert not selector.items() <= pods.items()  # no stable selector picks a canary pod
    service = named["Service", "demo-resnet-triton-canary"]
    assert service["spec"]["selector"].items() <= pods.items()
    assert named["NetworkPolicy", "demo-resnet-triton-canary"]["spec"]["podSelector"][
        "matchLabels"] == canary["spec"]["selector"]["matchLabels"]  # fmt: skip
    monitor = named["ServiceMonitor", "demo-resnet-triton"]["spec"]["selector"]["matchLabels"]
    assert monitor.items() <= service["metadata"]["labels"].items()  # scraped for the analysis
    for kind, port in (("HTTPRoute", 8000), ("GRPCRoute", 8001)):
        route = named[kind, "demo-resnet-triton"]
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert route["spec"]["parentRefs"] == [{"name": "edge"}]
        (rule,) = route["spec"]["rules"]
        assert rule["backendRefs"] == [
            {"name": "demo-resnet-triton", "port": port, "weight": 90},
            {"name": "demo-resnet-triton-canary", "port": port, "weight": 10},
        ]
    gateway = {"name": "gw", "namespace": "edge"}
    elsewhere = render(merge(REQUIRED, {"canary": {**CANARY, "gateway": gateway}}))
    routes = [o["spec"]["parentRefs"] for o in elsewhere if o["kind"].endswith("Route")]
    assert routes == [[gateway]] * 2


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        ({**CANARY, "version": ""}, "canary.enabled needs canary.version"),
        ({**CANARY, "gateway": {"name": ""}}, "canary.enabled needs canary.gateway.name"),
        ({**CANARY, "weight": 100}, "at '/canary/weight': maximum"),
    ],
)
def test_a_canary_without_its_version_or_gateway_is_refused(canary, message):
    with pytest.raises(helm_python.HelmError) as error:
        render({**REQUIRED, "canary": canary})
    assert message in str(error.value)


def test_the_chart_lints():
    report = helm_python.lint(str(CHART), REQUIRED, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # warnings, errors
    # values.yaml alone is not installable on purpose: the admin key Secret and the store.
    bare = helm_python.lint(str(CHART), kube_version="v1.30.0")
    assert "at '/adminKey/secretName': minLength" in bare["errors"][0]


def test_kserve_manifests_validate_and_agree():
    runtime = yaml.safe_load((DEPLOY / "kserve" / "servingruntime.yaml").read_text())
    service = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    validate(runtime)
    validate(service)
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [
        {"name": f["name"], "version": f["version"]}
        for f in runtime["spec"]["supportedModelFormats"]
    ]
    assert model["storageUri"].endswith("/cpu")  # a target's repository in the model store
    (container,) = runtime["spec"]["containers"]
    assert {"name": "MODEL_REPOSITORY", "value": "/mnt/models"} in container["env"]


def test_unknown_fields_in_custom_resources_are_caught():
    service = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    service["spec"]["predictor"]["model"]["storageURI"] = "s3://typo"
    with pytest.raises(Exception, match=r"unknown fields \['.spec.predictor.model.storageURI'\]"):
        validate(service)
    assert unknown_fields({"a": {"b": 1}}, {"properties": {"a": {"properties": {}}}}) == [".a.b"]


def adapter_query(group_by: str, matchers: str) -> str:
    query = ADAPTER["rules"]["custom"][0]["metricsQuery"]
    return query.replace("<<.GroupBy>>", group_by).replace("<<.LabelMatchers>>", matchers)


def test_the_dashboard_shows_the_autoscaling_metric_and_every_model_panel():
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in DASHBOARD["panels"]}
    (autoscaling,) = exprs["Autoscaling metric: queue µs per ensemble request, by pod"]
    assert " ".join(autoscaling.split()) == " ".join(
        adapter_query("pod", 'namespace="$namespace"').split()
    )
    names = {name for e in sum(exprs.values(), []) for name in re.findall(r"\bnv_\w+", e)}
    assert {
        "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
        "nv_inference_exec_count", "nv_inference_queue_duration_us",
        "nv_inference_request_summary_us",
    } <= names  # fmt: skip
    assert [v["name"] for v in DASHBOARD["templating"]["list"]] == [
        "datasource",
        "namespace",
        "model",
    ]


def test_deploy_files_name_the_models_of_the_spec():
    """YAML cannot import the spec: the model names written in deploy/ are its defaults."""
    names = Names()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["ensemble"] == names.ensemble
    query = ADAPTER["rules"]["custom"][0]["metricsQuery"]
    assert f'model=~"{names.ensemble}|{names.preprocess}|{names.classifier}"' in query
    assert f'model="{names.ensemble}"' in query
    runtime = yaml.safe_load((DEPLOY / "kserve" / "servingruntime.yaml").read_text())
    (container,) = runtime["spec"]["containers"]
    assert container["readinessProbe"]["exec"]["command"][-1] == names.ensemble
    replicas = yaml.safe_load((DEPLOY / "docker" / "replicas.yml").read_text())
    for service in replicas["services"].values():
        assert service["healthcheck"]["test"][-1] == names.ensemble
