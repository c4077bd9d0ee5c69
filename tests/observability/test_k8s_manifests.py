"""The Kubernetes example in docs/k8s/ is valid and fits the service.

Validator: kubernetes-validate (PyPI), which ships the Kubernetes OpenAPI JSON schemas and runs
offline; strict mode rejects unknown fields (kubeconform is a Go binary that neither PyPI nor
Debian packages). Beyond the schemas: probes hit the service's real health routes, the issuer
registry in the Secret is one the service accepts, the mounted file is the one
CDS_TRUSTED_ISSUERS_FILE names, labels, selectors and names line up, and the shutdown timing
fits in the grace period.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

from service.config import Settings
from service.security.issuers import IssuerRegistry

K8S = Path(__file__).resolve().parents[2] / "docs" / "k8s"
VERSIONS = ["1.30.0", "1.37.0"]  # an older supported release and the newest the package knows
GRACEFUL_SHUTDOWN_S = 8  # service/cli/serve.py: uvicorn timeout_graceful_shutdown


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    docs = documents()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_an_invalid_manifest_is_caught() -> None:
    deployment = one("Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_probes_use_the_service_health_routes(client: TestClient) -> None:
    container = one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in port_names
        assert client.get(get["path"]).status_code == 200, probe
    assert port_names["http"] == int(env_of(container)["CDS_PORT"])


def test_issuer_registry_secret_is_mounted_where_the_service_reads_it(tmp_path: Path) -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    issuers_file = Path(env_of(container)["CDS_TRUSTED_ISSUERS_FILE"])
    mount = next(
        m for m in container["volumeMounts"] if issuers_file.parent == Path(m["mountPath"])
    )
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    secret = one("Secret", volume["secret"]["secretName"])
    item = next(i for i in volume["secret"]["items"] if i["path"] == issuers_file.name)
    text = secret["stringData"][item["key"]]
    copy = tmp_path / issuers_file.name
    copy.write_text(text)
    registry = IssuerRegistry.load(copy)  # the service's own loader: it would start with this
    assert len(registry) >= 1


def test_settings_from_the_manifest_are_valid_and_authenticated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    container = one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    database = one("Secret", env["CDS_DATABASE_URL"]["secretKeyRef"]["name"])
    url = database["stringData"][env["CDS_DATABASE_URL"]["secretKeyRef"]["key"]]
    for name, value in env.items():
        monkeypatch.setenv(name, url if name == "CDS_DATABASE_URL" else str(value))
    settings = Settings()
    assert settings.database_url.startswith("postgresql")
    assert settings.host == "0.0.0.0"
    assert not settings.local_mode  # a registry file is set: authentication is on
    assert container["command"] == ["sleep-cds", "serve"]


def test_names_labels_and_selectors_line_up() -> None:
    deployment = one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert one("Service")["spec"]["selector"].items() <= pod_labels.items()
    assert (
        one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    )
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    service_port = one("Service")["spec"]["ports"][0]["targetPort"]
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert service_port in {p["name"] for p in ports}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert one("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2


def test_shutdown_fits_in_the_grace_period() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert int(pre_stop[1]) + GRACEFUL_SHUTDOWN_S < pod["terminationGracePeriodSeconds"]
    source = (Path(__file__).resolve().parents[2] / "service" / "cli" / "serve.py").read_text()
    assert f"timeout_graceful_shutdown={GRACEFUL_SHUTDOWN_S}" in source


def test_slow_clients_are_bounded_by_the_service_and_the_ingress() -> None:
    """A stalled or trickling client is cut off by the proxy no later than by the service, and
    the proxy buffers bodies, so no slow body ever reaches a pod (docs/operations.md §4a)."""
    container = one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    body_s, header_s = (
        float(env["CDS_BODY_READ_TIMEOUT_S"]),
        float(env["CDS_HEADER_READ_TIMEOUT_S"]),
    )
    assert 0 < body_s <= 10 and 0 < header_s <= 30
    assert container["command"] == ["sleep-cds", "serve"]  # the protocol with the header deadline
    ingress = one("Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "5m"
    assert int(notes["nginx.ingress.kubernetes.io/limit-connections"]) > 0
    controller = one("ConfigMap", "ingress-nginx-controller")["data"]
    assert float(controller["client-header-timeout"]) <= header_s
    assert float(controller["client-body-timeout"]) <= body_s
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = one("Service")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert Settings().max_body_bytes == 5 * 1024 * 1024  # = proxy-body-size 5m
