"""deploy/k8s: every manifest validates against Kubernetes' own schemas (kubernetes-validate,
strict, at the oldest and newest versions it ships that we support), and the objects refer to
each other correctly: Services select pods and name their ports, the HPA and the Secret exist,
the ServiceMonitor finds the Services, probes and grace periods fit the drain."""
import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy_files import DEPLOY, default_of, flag_value, k8s_docs

K8S = DEPLOY / "k8s"
VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
# Kinds Kubernetes itself does not define: the Prometheus Operator's, checked by hand below.
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def by_kind(kind):
    return {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == kind}


def containers():
    for name, dep in by_kind("Deployment").items():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            yield name, dep, c


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_pass_kubernetes_schemas(version):
    checked = 0
    for path, doc in k8s_docs():
        if (doc["apiVersion"], doc["kind"]) in CUSTOM:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} at {version}: {e.message} "
                        f"(at {'.'.join(map(str, e.path))})")
        checked += 1
    assert checked >= 8


def test_schema_check_catches_a_bad_manifest():
    (dep,) = [d for _, d in k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "sluice-worker"]
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(k["resources"]) == files
    images = {c["image"].split(":")[0] for _, _, c in containers()}
    assert images == {i["name"] for i in k["images"]}


def test_services_select_pods_and_name_their_ports():
    deployments = by_kind("Deployment")
    for name, svc in by_kind("Service").items():
        targets = [d for d in deployments.values()
                   if matches(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert len(targets) == 1, f"Service {name} selects {len(targets)} Deployments"
        ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"Service {name}: targetPort {p['targetPort']} not in {ports}"
    for name, d in deployments.items():
        assert matches(d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]), name


def test_programs_reach_each_other_through_the_services():
    services = by_kind("Service")
    for name, _, c in containers():
        address = flag_value(c["args"], "--controller-address")
        if c["args"][0] == "sluice-controller":
            assert address is None
            continue
        assert address == f"http://sluice-controller:{services['sluice-controller']['spec']['ports'][0]['port']}", name


def test_secrets_referenced_exist():
    secrets = by_kind("Secret")
    for name, dep, c in containers():
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets[ref["name"]]["stringData"], f"{name}: {ref}"
        for v in dep["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in v:
                for item in v["secret"]["items"]:
                    assert item["key"] in secrets[v["secret"]["secretName"]]["stringData"], f"{name}: {item}"


def test_every_program_has_the_internal_token():
    for name, _, c in containers():
        ref = {e["name"]: e for e in c["env"]}["SLUICE_INTERNAL_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "sluice", "key": "internal-token"}, name
        assert flag_value(c["args"], "--host") == "0.0.0.0", name


def test_probes_ask_health_and_the_grace_period_outlasts_the_drain():
    for name, dep, c in containers():
        spec = dep["spec"]["template"]["spec"]
        program = c["args"][0]
        for probe in ["readinessProbe", "livenessProbe"]:
            assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, f"{name} {probe}"
        if program == "sluice-controller":
            continue
        drain = float(flag_value(c["args"], "--drain-timeout") or default_of(program, "--drain-timeout"))
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        wait = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
        grace = spec["terminationGracePeriodSeconds"]
        assert grace > wait + drain, f"{name}: terminationGracePeriodSeconds {grace} within preStop + drain"
        # /health is 503 while draining: liveness must not restart a pod that drains.
        live = c["livenessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] > grace, f"{name}: liveness fails within a drain"


def test_gateway_waits_for_endpoints_before_draining():
    (c,) = by_kind("Deployment")["sluice-gateway"]["spec"]["template"]["spec"]["containers"]
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"


def test_worker_takes_one_gpu_and_registers_under_its_pod_address():
    dep = by_kind("Deployment")["sluice-worker"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert flag_value(c["args"], "--worker-address") == f"http://$(POD_IP):{flag_value(c['args'], '--port')}"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert flag_value(c["args"], "--device") == "cuda"


def test_gateway_autoscales_on_cpu_and_the_controllers_queue_length():
    hpa = by_kind("HorizontalPodAutoscaler")["sluice-gateway"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "sluice-gateway")
    assert "sluice-gateway" in by_kind("Deployment")
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    metric = kinds["External"]["external"]["metric"]
    assert metric["name"] == "sluice_controller_model_queue_length" and "model" in metric["selector"]["matchLabels"]


def test_service_monitor_scrapes_every_program():
    (sm,) = [d for _, d in k8s_docs() if d["kind"] == "ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [s for s in by_kind("Service").values() if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert {s["metadata"]["name"] for s in selected} == {"sluice-controller", "sluice-gateway", "sluice-worker"}
    for ep in sm["spec"]["endpoints"]:
        assert ep["path"] == "/metrics"
        for s in selected:
            assert ep["port"] in {p["name"] for p in s["spec"]["ports"]}, s["metadata"]["name"]


def test_kubectl_dry_run_where_a_cluster_is_configured():
    """`kubectl apply --dry-run=client` asks the API server for its schemas, so it runs only
    where a kubeconfig names a cluster."""
    kubectl = shutil.which("kubectl")
    config = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not kubectl or not all(Path(p).exists() for p in config.split(":")):
        pytest.skip("no kubectl with a cluster configured here: kubernetes-validate stands in for it")
    out = subprocess.run([kubectl, "apply", "--dry-run=client", "-k", str(K8S)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
