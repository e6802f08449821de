"""docs/examples/kubernetes/*.yaml: the Deployment passes the "restricted" Pod Security Standard, probes the admin
app's own paths, drains within its grace period, and the Service, HPA, PDB and spread constraints fit together."""
import copy
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from werkzeug.test import Client

from gatekeeper.cli.main import build_parser
from gatekeeper.config.reload import ConfigLoader
from gatekeeper.ops.admin import make_admin_app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples" / "kubernetes"


def manifests() -> Dict[tuple, Dict[str, Any]]:
    found = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


OBJECTS = manifests()
DEPLOYMENT = OBJECTS[("Deployment", "gatekeeper")]
POD = DEPLOYMENT["spec"]["template"]["spec"]
(CONTAINER,) = POD["containers"]
ARGS = build_parser().parse_args(CONTAINER["args"])


# --- the "restricted" Pod Security Standard, written from its text -----------------------------------------
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ : the Baseline controls, then Restricted's.

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def all_containers(pod: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [*pod.get("containers", []), *pod.get("initContainers", []), *pod.get("ephemeralContainers", [])]


def baseline_violations(pod: Dict[str, Any]) -> List[str]:
    found = []
    pod_context = pod.get("securityContext") or {}
    for name in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(name):
            found.append(f"host namespaces: {name}")
    found += [f"hostPath volume {v['name']}" for v in pod.get("volumes", []) if "hostPath" in v]
    found += [f"unsafe sysctl {s['name']}" for s in pod_context.get("sysctls", []) if s["name"] not in SAFE_SYSCTLS]
    contexts = [("pod", pod_context)] + [(c["name"], c.get("securityContext") or {}) for c in all_containers(pod)]
    for owner, context in contexts:
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{owner}: hostProcess")
        if context.get("privileged"):
            found.append(f"{owner}: privileged")
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"{owner}: seccomp Unconfined")
        if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
            found.append(f"{owner}: AppArmor Unconfined")
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            found.append(f"{owner}: seLinuxOptions")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{owner}: procMount")
    for container in all_containers(pod):
        added = set(((container.get("securityContext") or {}).get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            found.append(f"{container['name']}: capabilities added {sorted(added - BASELINE_CAPABILITIES)}")
        found += [f"{container['name']}: hostPort" for p in container.get("ports", []) if p.get("hostPort")]
    return found


def restricted_violations(pod: Dict[str, Any]) -> List[str]:
    found = baseline_violations(pod)
    found += [f"volume type of {v['name']}" for v in pod.get("volumes", [])
              if not set(v) - {"name"} <= RESTRICTED_VOLUMES]
    pod_context = pod.get("securityContext") or {}
    if pod_context.get("runAsUser") == 0:
        found.append("pod: runAsUser 0")
    for container in all_containers(pod):
        name, context = container["name"], container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot must be true")
        if context.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: only NET_BIND_SERVICE may be added")
    return found


def test_the_deployment_passes_the_restricted_profile():
    assert restricted_violations(POD) == []
    namespace = OBJECTS[("Namespace", "gatekeeper")]["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


def edited(path: str, value: Any) -> Dict[str, Any]:
    """The Deployment's pod with one field set (``a.b.0.c``; value None removes it)."""
    pod = copy.deepcopy(POD)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = pod
    for part in parents:
        target = target[part] if isinstance(part, int) else target.setdefault(part, {})
    if value is None:
        target.pop(last, None)
    else:
        target[last] = value
    return pod


@pytest.mark.parametrize("path, value, violation", [
    ("containers.0.securityContext.allowPrivilegeEscalation", None, "allowPrivilegeEscalation must be false"),
    ("containers.0.securityContext.runAsNonRoot", False, "runAsNonRoot must be true"),
    ("containers.0.securityContext.capabilities.drop", ["NET_RAW"], "capabilities must drop ALL"),
    ("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"], "only NET_BIND_SERVICE may be added"),
    ("containers.0.securityContext.seccompProfile.type", "Unconfined", "seccomp"),
    ("containers.0.securityContext.privileged", True, "privileged"),
    ("containers.0.securityContext.runAsUser", 0, "runAsUser 0"),
    ("hostNetwork", True, "host namespaces"),
    ("volumes.1", {"name": "tmp", "hostPath": {"path": "/tmp"}}, "hostPath volume tmp"),
    ("containers.0.ports.0.hostPort", 8080, "hostPort"),
], ids=["privilege-escalation", "run-as-root", "capabilities-kept", "capability-added", "seccomp", "privileged",
        "uid-0", "host-network", "host-path", "host-port"])
def test_the_checker_catches_each_rule(path, value, violation):
    """The checks above are not vacuous: the Deployment with one rule broken fails that rule."""
    found = restricted_violations(edited(path, value))
    assert any(violation in v for v in found), found


# --- the container ---------------------------------------------------------------------------------------

def named_port(name: str) -> int:
    (port,) = [p["containerPort"] for p in CONTAINER["ports"] if p["name"] == name]
    return port


def example_conf_d(tmp_path: Path) -> Path:
    """The Deployment's projected conf.d (ConfigMap + Secret files), as the kubelet lays it out."""
    root = tmp_path / "conf.d"
    root.mkdir()
    for source in (OBJECTS[("ConfigMap", "gatekeeper-conf")]["data"],
                   OBJECTS[("Secret", "gatekeeper-secrets")]["stringData"]):
        for name, text in source.items():
            (root / name).write_text(text)
    return root


@pytest.mark.parametrize("probe, path", [("startupProbe", "/readyz"), ("readinessProbe", "/readyz"),
                                         ("livenessProbe", "/healthz")])
def test_probes_ask_the_admin_listener_paths_that_answer_200(tmp_path, probe, path):
    """Each probe, sent as the kubelet sends it (Host: the pod's IP and the admin port), to the admin app over
    the example's own conf.d: 200, so the pod becomes ready and stays alive."""
    get = CONTAINER[probe]["httpGet"]
    assert (get["path"], named_port(get["port"])) == (path, ARGS.admin[1])
    loader = ConfigLoader(example_conf_d(tmp_path))
    loader.load()
    admin = Client(make_admin_app(loader, lambda: (b"", "text/plain")))
    answer = admin.get(get["path"], headers={"Host": f"10.244.1.7:{ARGS.admin[1]}"})
    assert answer.status_code == 200, answer.get_data(as_text=True)


def test_args_parse_and_the_ports_are_the_listeners():
    assert "command" not in CONTAINER or CONTAINER["command"] == ["gatekeeper"]   # the image's ENTRYPOINT
    assert (ARGS.command, ARGS.conf_d) == ("serve", "/etc/gatekeeper/conf.d")
    assert named_port("http") == ARGS.listen[1] and ARGS.admin[1] != ARGS.listen[1]
    (conf_d,) = [m for m in CONTAINER["volumeMounts"] if m["mountPath"] == ARGS.conf_d]
    assert conf_d["readOnly"] is True and "subPath" not in conf_d       # subPath mounts are never refreshed
    assert not CONTAINER["image"].endswith(":latest")
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = {int(p) for line in dockerfile.splitlines() if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert {p["containerPort"] for p in CONTAINER["ports"]} <= exposed


def test_the_grace_period_covers_pre_stop_and_the_drain():
    sleep = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert POD["terminationGracePeriodSeconds"] > ARGS.grace + float(sleep[1])


def test_the_read_only_root_has_a_writable_tmp_and_resources_are_bounded():
    assert CONTAINER["securityContext"]["readOnlyRootFilesystem"] is True
    (tmp,) = [m for m in CONTAINER["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in POD["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume and volume["emptyDir"].get("sizeLimit")
    for kind in ("requests", "limits"):
        assert set(CONTAINER["resources"][kind]) == {"cpu", "memory"}
    assert POD["securityContext"]["runAsUser"] == int(
        next(line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.startswith("USER ")).split(":")[0])


# --- the objects around it -------------------------------------------------------------------------------

def selects_the_pods(selector: Dict[str, Any]) -> bool:
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


def test_service_spread_hpa_and_pdb_fit_the_deployment():
    service = OBJECTS[("Service", "gatekeeper")]["spec"]
    assert service["selector"].items() <= DEPLOYMENT["spec"]["template"]["metadata"]["labels"].items()
    assert all(named_port(p["targetPort"]) for p in service["ports"])
    assert "admin" not in {p["targetPort"] for p in service["ports"]}     # the admin port stays off the Service
    keys = {c["topologyKey"] for c in POD["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(selects_the_pods(c["labelSelector"]) for c in POD["topologySpreadConstraints"])
    hpa = OBJECTS[("HorizontalPodAutoscaler", "gatekeeper")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gatekeeper"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in CONTAINER["resources"]["requests"]      # utilization is measured against the request
    low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    assert 2 <= low <= DEPLOYMENT["spec"]["replicas"] <= high
    pdb = OBJECTS[("PodDisruptionBudget", "gatekeeper")]
    assert pdb["apiVersion"] == "policy/v1" and selects_the_pods(pdb["spec"]["selector"])
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"]["minAvailable"] < low   # drains can proceed


def test_every_example_parses_and_names_its_namespace():
    for key, doc in OBJECTS.items():
        if key[0] not in ("Namespace", "EndpointSlice", "Endpoints"):
            assert doc["metadata"].get("namespace"), key
    assert json.dumps(OBJECTS[("Deployment", "gatekeeper")])     # plain data, no YAML-only types
