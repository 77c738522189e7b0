"""Offline, strict checks of the Kubernetes deployment (k8s/), the container images (docker/) and their docs.

- Every rendered manifest validates strictly: core kinds with `kubernetes_validate` (Kubernetes 1.33 schemas,
  unknown fields rejected), RayCluster/RayJob against the KubeRay CRD schemas in ../shared/k8s-schemas made
  strict by `additionalProperties: false` (a misspelled field fails; negative tests prove it).
- Policy: requests/limits, non-root, no privilege escalation, credentials only from Secrets, nothing exposed
  outside the cluster, GPUs requested properly, the names that tie the pieces together agree.
- Real servers where the machine has them: MLflow's Host-header allowlist (the manifest's own flags), and the
  PostgreSQL init script (the ConfigMap's own script) on a throwaway PostgreSQL.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import secrets
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.server.security_utils import is_allowed_host_header
from packaging.requirements import Requirement

from alphasweep.config import parse_config
from local_services import mlflow_server as mlflow_server_at, postgres

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
SCHEMAS = Path(__file__).resolve().parents[1].parent / "shared" / "k8s-schemas"
KUSTOMIZATIONS = {"platform": K8S, "sweep-job": K8S / "sweep-job"}
SECRETS_EXAMPLE = K8S / "secrets.example.yaml"
K8S_VERSION = "1.33.0"
NAMESPACE = "alphasweep"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_all(path: Path) -> list[dict]:
    return [d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d]


# --------------------------------------------------------------------------------------------- rendering
# A minimal kustomize for the features these kustomizations use (resources, namespace, images). It is the
# renderer where no kustomize/kubectl binary exists, and it is checked against the real one where one does.
_FALLBACK_KEYS = {"apiVersion", "kind", "namespace", "resources", "images"}
_CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                   "CustomResourceDefinition", "PriorityClass", "IngressClass"}


def _split_image(image: str) -> tuple[str, str]:
    """'repo/name:tag' -> ('repo/name', ':tag'); digests and tags stay in the second part."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _set_images(node: Any, images: list[dict]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        name, suffix = _split_image(c["image"])
                        for rule in images:
                            if rule["name"] == name:
                                if "digest" in rule:
                                    suffix = "@" + rule["digest"]
                                elif "newTag" in rule:
                                    suffix = ":" + str(rule["newTag"])
                                c["image"] = rule.get("newName", name) + suffix
                                break
            _set_images(value, images)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, images)


def render_fallback(directory: Path) -> list[dict]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - _FALLBACK_KEYS
    if unknown:
        raise NotImplementedError(f"{directory}/kustomization.yaml uses {sorted(unknown)}, which the test's "
                                  "fallback renderer does not implement; extend render_fallback")
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = directory / res
        docs += render_fallback(path) if path.is_dir() else _load_all(path)
    for doc in docs:
        if kust.get("namespace") and doc["kind"] not in _CLUSTER_SCOPED:
            doc.setdefault("metadata", {})["namespace"] = kust["namespace"]
        _set_images(doc, kust.get("images", []))
    return docs


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@cache
def _render_tool(directory: Path) -> tuple[dict, ...]:
    cmd = kustomize_command()
    assert cmd is not None
    out = subprocess.run([*cmd, str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{' '.join(cmd)} {directory} failed:\n{out.stderr}"
    return tuple(d for d in yaml.load_all(out.stdout, Loader=_Loader) if d)


@cache
def _render(directory: Path) -> tuple[dict, ...]:
    """The kustomize output where a binary exists, the fallback rendering otherwise."""
    if kustomize_command() is not None:
        return _render_tool(directory)
    return tuple(render_fallback(directory))


def rendered(name: str | None = None) -> list[dict]:
    dirs = [KUSTOMIZATIONS[name]] if name else list(KUSTOMIZATIONS.values())
    return [copy.deepcopy(d) for directory in dirs for d in _render(directory)]


def one(kind: str, name: str | None = None, docs: list[dict] | None = None) -> dict:
    found = [d for d in (docs or rendered()) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def doc_id(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _all_ids() -> list[str]:
    return [doc_id(d) for d in rendered()]


# ---------------------------------------------------------------------------------- walking the documents
def pod_specs(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every pod spec (a mapping with a `containers` list) anywhere in a document, with its path."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield path, node
        for key, value in node.items():
            yield from pod_specs(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from pod_specs(item, f"{path}[{i}]")


def containers() -> Iterator[tuple[str, dict, dict]]:
    """(where, container, pod spec) for every container and init container of every rendered document."""
    for doc in rendered():
        for path, pod in pod_specs(doc):
            for field in ("initContainers", "containers"):
                for c in pod.get(field, []) or []:
                    yield f"{doc_id(doc)} {path}.{field}[{c.get('name')}]", c, pod


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def ray_cluster() -> dict:
    return one("RayCluster", docs=rendered("platform"))


def ray_job() -> dict:
    return one("RayJob", docs=rendered("sweep-job"))


def head_container() -> dict:
    return ray_cluster()["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def mlflow_container() -> dict:
    deploy = one("Deployment", "mlflow")
    return next(c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "mlflow")


def mlflow_args() -> dict[str, str]:
    """The mlflow container's `--flag=value` / `--flag value` arguments as a mapping."""
    args, out, i = mlflow_container()["args"], {}, 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and "=" in a:
            k, v = a.split("=", 1)
            out[k] = v
        elif a.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[a] = args[i + 1]
            i += 1
        elif a.startswith("--"):
            out[a] = ""
        i += 1
    return out


def sweep_config() -> dict:
    cm = one("ConfigMap", "alphasweep-sweep", rendered("platform"))
    return yaml.safe_load(cm["data"]["sweep.yaml"])


# =========================================================================================== rendering tests
def test_kustomize_build_matches_fallback_renderer():
    """`kustomize build` (or `kubectl kustomize`) renders both kustomizations; the test's own renderer agrees."""
    cmd = kustomize_command()
    if cmd is None:
        pytest.skip("no kustomize or kubectl binary on PATH: the manifests are rendered by the test's fallback "
                    "renderer (resources + namespace + images) instead")

    def canon(docs) -> list[str]:
        return sorted(json.dumps(d, sort_keys=True) for d in docs)

    for name, directory in KUSTOMIZATIONS.items():
        assert canon(_render_tool(directory)) == canon(render_fallback(directory)), name


def test_every_manifest_file_is_in_a_kustomization_and_the_secrets_example_is_not():
    listed: set[Path] = set()
    for directory in KUSTOMIZATIONS.values():
        kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
        listed |= {(directory / r).resolve() for r in kust.get("resources", [])}
        assert kust.get("namespace") == NAMESPACE
    on_disk = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert SECRETS_EXAMPLE.resolve() not in listed, "secrets.example.yaml must never be applied by kustomize"
    assert on_disk - listed == {SECRETS_EXAMPLE.resolve()}, f"manifests in no kustomization: {on_disk - listed}"
    kinds = {d["kind"] for d in rendered()}
    assert "Secret" not in kinds, "credentials are created by the operator of the cluster, not shipped here"
    assert {"Namespace", "PersistentVolumeClaim", "ConfigMap", "Service", "StatefulSet", "Deployment",
            "NetworkPolicy", "RayCluster", "RayJob"} <= kinds


# ============================================================================ strict schema validation tests
def _core_docs() -> list[dict]:
    return [d for d in rendered() if d["kind"] not in CRD_FILES] + _load_all(SECRETS_EXAMPLE)


def _kv_validate(doc: dict) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("doc", _core_docs(), ids=doc_id)
def test_core_manifest_validates_strictly(doc):
    _kv_validate(doc)


def _deployment_with_typo() -> dict:
    deploy = one("Deployment", "mlflow")
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    return deploy


def test_strict_validation_rejects_a_misspelled_container_field():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(_deployment_with_typo(), K8S_VERSION, strict=True)
    service = one("Service", "mlflow")
    service["spec"]["ports"][0]["port"] = "five thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    """additionalProperties: false on every object schema with properties, except under preserve-unknown."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return schema
    out = {k: (_strict(v) if k != "properties" else {n: _strict(s) for n, s in v.items()})
           for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(kind: str):
    if not SCHEMAS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {SCHEMAS} (they live in the shared folder beside the "
                    "repository); RayCluster/RayJob are not schema-checked here")
    jsonschema = pytest.importorskip("jsonschema")
    crd = yaml.load((SCHEMAS / CRD_FILES[kind]).read_text(), Loader=_Loader)
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strict(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict) -> list[str]:
    assert doc["apiVersion"] == "ray.io/v1", doc_id(doc)
    errors = crd_validator(doc["kind"]).iter_errors(doc)
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_kuberay_resource_validates_strictly_against_its_crd(kind):
    docs = [d for d in rendered() if d["kind"] == kind]
    assert docs, kind
    for doc in docs:
        assert crd_errors(doc) == [], doc_id(doc)


def test_strict_crd_validation_rejects_typos():
    job = ray_job()
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish" in e for e in crd_errors(job))

    cluster = ray_cluster()   # deep inside the embedded pod template
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["volumeMount"] = head.pop("volumeMounts")
    assert any("volumeMount" in e for e in crd_errors(cluster))

    cluster = ray_cluster()   # a wrong type, caught without the strict additions too
    cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "10"
    assert crd_errors(cluster)

    cluster = ray_cluster()
    cluster["spec"]["authOptions"]["mode"] = "tokens"   # enum
    assert crd_errors(cluster)


# ================================================================================================ policies
def _image_pinned(image: str) -> bool:
    name, suffix = _split_image(image)
    return suffix.startswith("@sha256:") or (suffix.startswith(":") and suffix != ":latest")


def test_every_container_has_requests_limits_and_a_locked_down_security_context():
    problems, seen = [], 0
    for where, c, pod in containers():
        seen += 1
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(part, {}):
                    problems.append(f"{where}: no resources.{part}.{r}")
        sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
            problems.append(f"{where}: capabilities must drop ALL and add none")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) in (0, None):
            problems.append(f"{where}: no numeric non-root runAsUser (images name their user, kubelet needs a uid)")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
        if not _image_pinned(c.get("image", "")):
            problems.append(f"{where}: image {c.get('image')!r} is not pinned to a tag or digest")
        if any("hostPort" in p for p in c.get("ports", [])):
            problems.append(f"{where}: hostPort")
    assert seen >= 5   # postgres, mlflow, ray head, gpu worker, RayJob submitter
    auto = ray_cluster()["spec"]["autoscalerOptions"]   # KubeRay builds this container from these options
    for part in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in auto.get("resources", {}).get(part, {}):
                problems.append(f"autoscaler: no resources.{part}.{r}")
    if auto.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
        problems.append("autoscaler: allowPrivilegeEscalation is not false")
    assert not problems, "\n".join(problems)


def test_nothing_is_privileged_or_uses_the_host():
    def walk(node, path: str, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                assert not (k == "privileged" and v is True), f"{where} {path}.{k}"
                assert not (k in ("hostNetwork", "hostPID", "hostIPC") and v is True), f"{where} {path}.{k}"
                assert k != "hostPath", f"{where} {path}: hostPath volume"
                walk(v, f"{path}.{k}", where)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]", where)

    for doc in rendered():
        walk(doc, "", doc_id(doc))


def test_nothing_is_exposed_outside_the_cluster():
    docs = rendered()
    assert not [d for d in docs if d["kind"] in ("Ingress", "Gateway", "HTTPRoute", "Route")]
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", doc_id(svc)
        assert not svc["spec"].get("externalIPs"), doc_id(svc)
        assert all("nodePort" not in p for p in svc["spec"]["ports"]), doc_id(svc)
    head = ray_cluster()["spec"]["headGroupSpec"]   # KubeRay creates the head Service from these
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head.get("enableIngress", False) is False
    assert "headService" not in head   # an override could change the Service type


def test_credentials_only_come_from_secrets():
    sensitive_name = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY", re.I)
    url_like_name = re.compile(r"(_URI|_URL|_DSN|_STORAGE)$", re.I)
    cred_url = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)
    problems = []
    for where, c, _ in containers():
        for e in c.get("env", []):
            name = e["name"]
            if sensitive_name.search(name) or url_like_name.search(name):
                if "value" in e and (sensitive_name.search(name) or cred_url.search(str(e["value"]))):
                    problems.append(f"{where}: env {name} has an inline value")
                if "valueFrom" in e and sensitive_name.search(name) and "secretKeyRef" not in e["valueFrom"]:
                    problems.append(f"{where}: env {name} is not from a Secret")
            if cred_url.search(str(e.get("value", ""))):
                problems.append(f"{where}: env {name} holds a URL with credentials")
        for arg in [*c.get("command", []), *c.get("args", [])]:
            if cred_url.search(arg) or re.search(r"password\s*[=:]\s*\S", arg, re.I):
                problems.append(f"{where}: credentials in command/args: {arg!r}")
    job = ray_job()["spec"]
    for text in (job["entrypoint"], job.get("runtimeEnvYAML", "")):
        if cred_url.search(text) or re.search(r"password|token", text, re.I):
            problems.append(f"RayJob: credentials in {text!r}")
    assert not problems, "\n".join(problems)
    # The database URLs reach the pods through secretKeyRef only.
    assert "secretKeyRef" in env_of(head_container())["ALPHASWEEP_OPTUNA_STORAGE"]["valueFrom"]
    assert "secretKeyRef" in env_of(mlflow_container())["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]


def test_secret_references_match_the_secrets_example():
    example = {d["metadata"]["name"]: d for d in _load_all(SECRETS_EXAMPLE)}
    for d in example.values():
        assert d["kind"] == "Secret" and d["metadata"]["namespace"] == NAMESPACE
        assert all("CHANGE_ME" in v for v in d["stringData"].values()), "placeholders only"
    refs = set()
    for _, c, _ in containers():
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
                assert ref["name"] in example, f"Secret {ref['name']} is not in secrets.example.yaml"
                assert ref["key"] in example[ref["name"]]["stringData"], f"{ref} not in secrets.example.yaml"
    documented = {(n, k) for n, d in example.items() for k in d["stringData"]}
    assert documented == refs, f"unused keys in secrets.example.yaml: {documented - refs}"
    db = example["alphasweep-db"]["stringData"]
    for key, database in (("mlflow-database-url", "mlflow"), ("optuna-database-url", "optuna")):
        # The driver is explicit: SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3, the images ship psycopg2.
        assert re.fullmatch(rf"postgresql\+psycopg2://{database}:CHANGE_ME_\w+@postgres\.{NAMESPACE}\.svc\.cluster\.local:5432/"
                            rf"{database}", db[key]), db[key]


def test_postgres_is_a_statefulset_with_a_headless_service_and_an_init_script():
    sts = one("StatefulSet", "postgres")
    svc = one("Service", "postgres")
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "postgres"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert _image_pinned(c["image"]) and c["image"].startswith("postgres:")
    init = next(v for v in pod["volumes"] if v["name"] == "init")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "init")
    assert mount["mountPath"] == "/docker-entrypoint-initdb.d"
    cm = one("ConfigMap", init["configMap"]["name"])
    assert [k for k in cm["data"] if k.endswith(".sh")], "the entrypoint only runs *.sh / *.sql files"
    env = env_of(c)
    assert {"MLFLOW_DATABASE_URL", "OPTUNA_DATABASE_URL", "POSTGRES_PASSWORD"} <= env.keys()


def test_mlflow_server_flags_and_in_cluster_names_agree():
    c = mlflow_container()
    args = mlflow_args()
    env = env_of(c)
    assert c["command"] == ["mlflow"] and c["args"][0] == "server"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert args["--host"] == "0.0.0.0" and args["--port"] == "5000"
    assert args["--artifacts-destination"] == next(
        m["mountPath"] for m in c["volumeMounts"] if m["name"] == "artifacts")
    allowed = args["--allowed-hosts"].split(",")
    assert "mlflow.alphasweep.svc.cluster.local:5000" in allowed and "mlflow:5000" in allowed
    assert "*" not in allowed
    svc = one("Service", "mlflow")
    assert svc["spec"]["ports"][0]["port"] == 5000
    # Every Ray pod reaches the server under a name the allowlist accepts (MLflow's own matcher).
    for where, rc, _ in containers():
        uri = env_of(rc).get("MLFLOW_TRACKING_URI", {}).get("value")
        if uri:
            assert uri == f"http://{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:5000", where
            assert is_allowed_host_header(allowed, uri.removeprefix("http://")), where
    for host in ("localhost:5000", "127.0.0.1:5000", "localhost:15000"):   # kubectl port-forward
        assert is_allowed_host_header(allowed, host)
    assert not is_allowed_host_header(allowed, "evil.example.com")
    artifacts = next(v for v in one("Deployment", "mlflow")["spec"]["template"]["spec"]["volumes"]
                     if v["name"] == "artifacts")
    one("PersistentVolumeClaim", artifacts["persistentVolumeClaim"]["claimName"])


def test_ray_cluster_head_gpu_workers_autoscaling_and_auth():
    spec = ray_cluster()["spec"]
    head = spec["headGroupSpec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    major, minor, *_ = (int(x) for x in spec["rayVersion"].split("."))
    assert (major, minor) >= (2, 52), "KubeRay token auth needs Ray >= 2.52"
    # The head takes no CPU or GPU work; trial drivers land there through the TRAIN_DRIVER resource.
    assert head["resources"]["CPU"] == "0" and int(head["resources"]["TRAIN_DRIVER"]) >= 1
    head_res = head["template"]["spec"]["containers"][0]["resources"]
    assert not any("gpu" in k for part in head_res.values() for k in part)
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert spec["workerGroupSpecs"]
    for group in [head, *spec["workerGroupSpecs"]]:
        # KubeRay rejects a group that sets both `resources` and the rayStartParams resource flags.
        if group.get("resources"):
            assert not {"num-cpus", "num-gpus", "memory", "resources"} & group.get("rayStartParams", {}).keys()
    for group in spec["workerGroupSpecs"]:
        res = group["template"]["spec"]["containers"][0]["resources"]
        gpus = res["requests"].get("nvidia.com/gpu")
        assert gpus is not None and gpus == res["limits"].get("nvidia.com/gpu"), group["groupName"]
        assert int(gpus) >= 1
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        # Per-group idleTimeoutSeconds is only valid with autoscaler v2 (KubeRay validation).
        if "idleTimeoutSeconds" in group:
            assert spec.get("autoscalerOptions", {}).get("version") == "v2"
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)


def test_shared_storage_is_mounted_everywhere_ray_runs():
    spec = ray_cluster()["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    claims = set()
    for group in groups:
        pod = group["template"]["spec"]
        c = pod["containers"][0]
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/mnt/alphasweep")
        vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        claims.add(vol["persistentVolumeClaim"]["claimName"])
        assert env_of(c)["ALPHASWEEP_STORAGE_PATH"]["value"] == "/mnt/alphasweep"
        assert env_of(c)["MLFLOW_TRACKING_URI"]["value"].startswith("http://")
        shm = next(m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm")
        assert next(v for v in pod["volumes"] if v["name"] == shm["name"])["emptyDir"]["medium"] == "Memory"
    assert len(claims) == 1
    pvc = one("PersistentVolumeClaim", claims.pop())
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # Only the head runs the sweep driver, so only it gets the Optuna database credentials.
    assert "ALPHASWEEP_OPTUNA_STORAGE" in env_of(spec["headGroupSpec"]["template"]["spec"]["containers"][0])
    for group in spec["workerGroupSpecs"]:
        assert "ALPHASWEEP_OPTUNA_STORAGE" not in env_of(group["template"]["spec"]["containers"][0])


def test_ray_job_runs_the_configmap_sweep_on_the_long_lived_cluster():
    job = ray_job()["spec"]
    assert job["entrypoint"] == "alphasweep sweep /config/sweep.yaml"
    assert job["submissionMode"] == "K8sJobMode"
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    assert job["clusterSelector"] == {"ray.io/cluster": ray_cluster()["metadata"]["name"]}
    assert "rayClusterSpec" not in job
    assert job.get("backoffLimit", 0) == 0, "KubeRay rejects backoffLimit > 0 with clusterSelector"
    # The driver must run on the head, the only node with /config and the database env.
    assert not {"entrypointNumCpus", "entrypointNumGpus", "entrypointResources"} & job.keys()
    assert job["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
    head_pod = ray_cluster()["spec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head_pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/config")
    cm_name = next(v for v in head_pod["volumes"] if v["name"] == mount["name"])["configMap"]["name"]
    cm = one("ConfigMap", cm_name, rendered("platform"))
    assert "sweep.yaml" in cm["data"] and mount.get("readOnly") is True
    assert ray_job()["metadata"]["namespace"] == ray_cluster()["metadata"]["namespace"] == NAMESPACE


def test_sweep_config_in_the_configmap_is_valid_and_fits_the_cluster():
    cfg = sweep_config()
    assert {"name", "output_dir", "models", "domains", "search", "budget", "scheduler", "train", "eval"} <= cfg.keys()
    assert "tracking" not in cfg and "storage" not in cfg, "on the cluster these come from the pods' env"
    assert cfg["output_dir"].startswith("/mnt/alphasweep/")
    assert cfg["models"][0]["path"] and cfg["domains"][0]["train"]["path"] and cfg["domains"][0]["benchmarks"]
    assert cfg["eval"]["backend"] == "vllm" and cfg["train"]["gpus_per_worker"] >= 1
    spec = ray_cluster()["spec"]
    # Concurrent trial drivers fit the head's TRAIN_DRIVER slots; their GPUs fit the worker group at full scale.
    assert cfg["budget"]["max_concurrent"] <= int(spec["headGroupSpec"]["resources"]["TRAIN_DRIVER"])
    gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) * g["maxReplicas"]
               for g in spec["workerGroupSpecs"])
    t = cfg["train"]
    needed = cfg["budget"]["max_concurrent"] * t["workers"] * t["gpus_per_worker"] + cfg["eval"].get("num_gpus", 0)
    assert needed <= gpus, f"{needed} GPUs needed at full concurrency, the worker group has {gpus}"
    parsed = parse_config(copy.deepcopy(cfg), "k8s/sweep-config.yaml")
    assert parsed.name == "cluster-demo"


def test_mlflow_and_postgres_accept_connections_from_their_clients_only():
    pg = one("NetworkPolicy", "postgres")
    sts = one("StatefulSet", "postgres")
    assert pg["spec"]["podSelector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    allowed = [p["podSelector"]["matchLabels"] for rule in pg["spec"]["ingress"] for p in rule["from"]]
    mlflow_labels = one("Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    assert any(sel.items() <= mlflow_labels.items() for sel in allowed)
    cluster = ray_cluster()["metadata"]["name"]   # KubeRay labels Ray pods ray.io/cluster, ray.io/node-type
    assert {"ray.io/cluster": cluster, "ray.io/node-type": "head"} in allowed


# ===================================================================================== real-server checks
def _get(port: int, path: str, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` from the venv with the manifest's own command, flags and env (sqlite instead of
    PostgreSQL, a temp artifact dir, loopback and a free port, one worker); yields its port."""
    tmp = tmp_path_factory.mktemp("mlflow")
    c = mlflow_container()
    overrides = {"--artifacts-destination": str(tmp / "artifacts"), "--workers": "1"}
    args = []
    for a in c["args"]:
        flag = a.split("=", 1)[0]
        if flag not in ("--host", "--port"):  # the helper binds loopback and a free port
            args.append(f"{flag}={overrides[flag]}" if flag in overrides and "=" in a else a)
    env = {**os.environ, **{e["name"]: e["value"] for e in c["env"] if "value" in e}}
    env.update(MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp / 'mlflow.db'}", HOME=str(tmp))
    env.pop("MLFLOW_SERVER_ALLOWED_HOSTS", None)
    with mlflow_server_at(args, tmp, env, timeout=60) as uri:
        yield int(uri.rsplit(":", 1)[1])


def test_real_mlflow_server_accepts_the_cluster_host_and_rejects_others(mlflow_server):
    api = "/api/2.0/mlflow/experiments/search?max_results=1"
    for host in ("mlflow.alphasweep.svc.cluster.local:5000", "mlflow:5000", "localhost:5000", "127.0.0.1:5000",
                 "localhost:15000"):
        assert _get(mlflow_server, api, host) == 200, host
    for host in ("evil.example.com", "evil.example.com:5000", "10.0.3.4:5000"):
        assert _get(mlflow_server, api, host) == 403, host
    # /health is exempt from the check in MLflow 3.17, which is why the kubelet's probes need no Host entry.
    assert _get(mlflow_server, "/health", "10.0.3.4:5000") == 200


def test_postgres_init_script_creates_the_databases_the_secrets_describe():
    """Runs the ConfigMap's init script as the postgres image's entrypoint would, on a throwaway server, with
    the example Secret's URLs (real passwords); Optuna and an MLflow-like client then work as those roles."""
    psycopg2 = pytest.importorskip("psycopg2")
    optuna = pytest.importorskip("optuna")
    with postgres("--auth-local=trust", "--auth-host=scram-sha-256") as (port, sock, bindir):
        example = {d["metadata"]["name"]: d for d in _load_all(SECRETS_EXAMPLE)}["alphasweep-db"]["stringData"]
        urls = {k: re.sub(r"CHANGE_ME_\w+", secrets.token_hex(12), example[k])
                for k in ("mlflow-database-url", "optuna-database-url")}
        script = next(v for k, v in one("ConfigMap", "postgres-init")["data"].items() if k.endswith(".sh"))
        env = {**os.environ, "POSTGRES_USER": "postgres", "PGHOST": str(sock), "PGPORT": str(port),
               "MLFLOW_DATABASE_URL": urls["mlflow-database-url"], "OPTUNA_DATABASE_URL": urls["optuna-database-url"],
               "PATH": f"{bindir}:{os.environ['PATH']}"}
        out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr

        def local(url: str) -> str:   # the in-cluster host -> this throwaway server
            return re.sub(r"@[^/]+/", f"@127.0.0.1:{port}/", url)

        def libpq(url: str) -> str:   # SQLAlchemy's dialect+driver scheme -> a libpq URI for psycopg2
            return local(url).replace("postgresql+psycopg2://", "postgresql://")

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name="k8s-test", storage=local(urls["optuna-database-url"]))
        study.optimize(lambda t: t.suggest_float("alpha", 0.05, 16, log=True), n_trials=2)
        assert len(study.trials) == 2
        with psycopg2.connect(libpq(urls["mlflow-database-url"])) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE alembic_probe (id int)")   # MLflow's migrations create tables
        # Each role reaches its own database only.
        cross = re.sub(r"/optuna$", "/mlflow", libpq(urls["optuna-database-url"]))
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(cross).close()
        # The script refuses a URL it cannot read instead of creating a role without a password.
        bad = {**env, "MLFLOW_DATABASE_URL": "postgresql://nopassword@host:5432/x"}
        assert subprocess.run(["bash", "-c", script], env=bad, capture_output=True, timeout=60).returncode != 0


# ================================================================================================= images
def _dockerfile(name: str) -> tuple[list[str], list[str], str]:
    """(FROM images, USER values, RUN text with ARG defaults substituted) of docker/NAME."""
    text = (DOCKER / name).read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    logical = re.sub(r"\\\n", " ", code)
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", logical, re.M))

    def subst(s: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), s)

    froms = [subst(m) for m in re.findall(r"^FROM\s+(?:--\S+\s+)?(\S+)", logical, re.M)]
    users = re.findall(r"^USER\s+(\S+)", logical, re.M)
    runs = "\n".join(subst(r) for r in re.findall(r"^RUN\s+(.*)$", logical, re.M))
    return froms, users, runs


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _ray_pin() -> str:
    dep = next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("ray["))
    return re.search(r"==\s*([\d.*]+)", dep)[1]


@pytest.mark.parametrize("name, base", [
    ("Dockerfile.gpu", "rayproject/ray:2.60.0-py311-gpu"),
    ("Dockerfile.cpu", "rayproject/ray:2.60.0-py311-cpu"),
    ("Dockerfile.mlflow", "ghcr.io/mlflow/mlflow:v3.17.2"),
])
def test_dockerfiles_pin_their_base_image_and_run_as_non_root(name, base):
    froms, users, runs = _dockerfile(name)
    assert froms == [base]
    assert all(_image_pinned(f) for f in froms)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root user"
    assert re.search(r"psycopg2-binary==[\d.]+", runs), "the PostgreSQL driver is pinned"
    for req in re.findall(r"\"([A-Za-z0-9_.\-\[\]]+[<>=!~][^\"]*)\"", runs):
        assert "==" in req, f"{name}: unpinned requirement {req!r}"


def test_ray_version_is_the_same_in_images_cluster_and_project():
    ray_version = ray_cluster()["spec"]["rayVersion"]
    for name in ("Dockerfile.gpu", "Dockerfile.cpu"):
        assert _dockerfile(name)[0][0].split(":")[1].startswith(f"{ray_version}-py311-")
    pin = _ray_pin()
    assert re.fullmatch(pin.replace(".", r"\.").replace("*", r"\d+"), ray_version), (pin, ray_version)
    mlflow_base = _dockerfile("Dockerfile.mlflow")[0][0]
    mlflow_dep = next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("mlflow"))
    assert Requirement(mlflow_dep).specifier.contains(mlflow_base.split(":v")[1]), (mlflow_dep, mlflow_base)


def test_cpu_image_pins_the_cpu_torch_build():
    _, _, runs = _dockerfile("Dockerfile.cpu")
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/cpu \"torch==2\.13\.0\"", runs)
    assert "vllm" not in runs


def test_gpu_image_installs_the_vllm_extra_with_the_torch_it_pins():
    _, _, runs = _dockerfile("Dockerfile.gpu")
    assert 'pip install ".[vllm]"' in runs
    vllm = re.search(r"\"vllm==([\d.]+)\"", runs)[1]
    torch = re.search(r"\"torch==([\d.]+)\"", runs)[1]
    assert (vllm, torch) == ("0.33.0", "2.14.0"), "vLLM 0.33 pins torch 2.14.0 (its package metadata)"
    extra = next(Requirement(r) for r in _pyproject()["project"]["optional-dependencies"]["vllm"]
                 if r.startswith("vllm"))
    assert extra.specifier.contains(vllm)


def test_dockerignore_is_an_allowlist():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "*", "exclude everything, then re-include what the image needs"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"alphasweep", "pyproject.toml", "README.md"} <= included
    assert not included & {".venv", ".git", "k8s", "runs", "tests"}


# =================================================================================================== docs
def test_docs_use_the_names_the_manifests_define():
    doc = (ROOT / "README.md").read_text()
    cluster = ray_cluster()["metadata"]["name"]
    services = {d["metadata"]["name"] for d in rendered() if d["kind"] == "Service"} | {f"{cluster}-head-svc"}
    for svc in re.findall(r"svc/([a-z0-9-]+)", doc):
        assert svc in services, f"README.md forwards to svc/{svc}, which the manifests do not create"
    assert f"svc/{cluster}-head-svc 8265:8265" in doc and "svc/mlflow 5000:5000" in doc
    assert "--version 1.7.0" in doc, "the KubeRay chart is pinned"
    assert "kubectl apply -k k8s/" in doc
    # `kubectl create secret` commands create exactly the Secrets and keys the manifests read.
    example = {d["metadata"]["name"]: set(d["stringData"]) for d in _load_all(SECRETS_EXAMPLE)}
    for name, rest in re.findall(r"kubectl -n alphasweep create secret generic ([a-z0-9-]+)((?:\\\n|[^\n])*)", doc):
        assert name in example, name
        assert set(re.findall(r"--from-literal=([a-z0-9-]+)=", rest)) == example[name], name
    # The token Secret KubeRay generates is named after the cluster, key auth_token.
    assert f"secret {cluster} -o jsonpath='{{.data.auth_token}}'" in doc
