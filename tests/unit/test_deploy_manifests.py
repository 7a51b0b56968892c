"""deploy/ checked offline: Kubernetes overlays, Dockerfiles, the compose file, the systemd unit.

Overlays are assembled by a small Kustomize subset below (resources, namespace, labels, images,
JSON 6902 patches) and every object is validated against the Kubernetes schemas in strict mode
(unknown fields are errors). Where ``kubectl`` is installed, its built-in Kustomize must render
the same objects. Every ``edgefabric`` command a manifest runs is parsed by the real CLI parser,
and every ``EDGEFABRIC_GATEWAY_*``/``EDGEFABRIC_AGENT_*`` variable loads into the real settings.
"""

from __future__ import annotations

import configparser
import copy
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from edge_agent.settings import AgentSettings
from edgefabric.cli import build_parser
from edgefabric.kserve.server import INFERENCE_SERVICE
from edgefabric.mqtt import BrokerAddress
from gateway.settings import GatewaySettings
from model_store.enroll import BrokerFiles, acl_text, broker_config_text
from model_store.pki import Identity, Role
from model_store.serve import StoreServerOptions

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.31"
EDGEFABRIC_IMAGES = ("edgefabric-gateway", "edgefabric-store", "edgefabric-agent")
# Variables the manifests set that are not pydantic settings, with where they are read.
OTHER_VARIABLES = {
    "EDGEFABRIC_HOME",  # model_store/home.py
    "EDGEFABRIC_EXPORT_MODELS",  # the store's export-models initContainer script
}
SHELL_PREFIXES = {"do", "then", "else", "exec", "!"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding"}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "labels", "resources", "images", "patches"}

Manifest = dict[str, Any]


# ------------------------------------------------------------------ a Kustomize subset


class KustomizeError(ValueError):
    """A kustomization this subset cannot render, with what to change."""


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"patch path {path!r}: expected a JSON pointer starting with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _apply_operation(document: Manifest, operation: dict[str, Any], where: str) -> None:
    op = operation.get("op")
    parts = _pointer(str(operation.get("path", "")))
    parent: Any = document
    for part in parts[:-1]:
        try:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        except (KeyError, IndexError, ValueError):
            raise KustomizeError(
                f"{where}: path {operation['path']!r} does not exist at {part!r}; "
                "check the base resource it patches"
            ) from None
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op in ("replace", "remove") and index < len(parent):
            if op == "replace":
                parent[index] = copy.deepcopy(operation["value"])
            else:
                del parent[index]
        else:
            raise KustomizeError(f"{where}: {op} at {operation['path']!r}: no such list item")
    elif op == "add" or (op == "replace" and last in parent):
        parent[last] = copy.deepcopy(operation["value"])
    elif op == "remove" and last in parent:
        del parent[last]
    else:
        raise KustomizeError(
            f"{where}: {op!r} at {operation['path']!r} cannot apply (supported: add, replace "
            "and remove of an existing member)"
        )


def _set_images(pod_spec: dict[str, Any], images: list[dict[str, str]]) -> None:
    for container in [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]:
        name, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"


def pod_spec(manifest: Manifest) -> dict[str, Any] | None:
    """The pod spec of a workload, None for other kinds."""
    if manifest["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
        return spec
    return None


def _apply_patch(objects: list[Manifest], patch: dict[str, Any], where: str) -> None:
    target = patch.get("target", {})
    matches = [
        o
        for o in objects
        if o["kind"] == target.get("kind") and o["metadata"]["name"] == target.get("name")
    ]
    if len(matches) != 1:
        raise KustomizeError(
            f"{where}: target {target} matches {len(matches)} objects; expected exactly one"
        )
    for operation in yaml.safe_load(patch["patch"]):
        _apply_operation(matches[0], operation, where)


def render(folder: Path) -> list[Manifest]:
    """The objects ``kubectl kustomize folder`` would print, for the subset used in deploy/."""
    path = folder / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
    unsupported = set(kustomization) - KUSTOMIZATION_KEYS
    if unsupported:
        raise KustomizeError(
            f"{path}: unsupported keys {sorted(unsupported)}; this check renders only "
            f"{sorted(KUSTOMIZATION_KEYS)} (extend it, or keep the overlay simple)"
        )
    objects: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        target = folder / entry
        if target.is_dir():
            objects.extend(render(target))
        elif target.is_file():
            objects.extend(d for d in yaml.safe_load_all(target.read_text("utf-8")) if d)
        else:
            raise KustomizeError(f"{path}: resource {entry!r} is neither a file nor a folder")
    for number, patch in enumerate(kustomization.get("patches", [])):
        _apply_patch(objects, patch, f"{path} patch {number}")
    for manifest in objects:
        if "namespace" in kustomization and manifest["kind"] not in CLUSTER_SCOPED:
            manifest["metadata"]["namespace"] = kustomization["namespace"]
        for label_set in kustomization.get("labels", []):
            if set(label_set) != {"pairs"}:
                raise KustomizeError(f"{path}: labels entries take only 'pairs' here")
            manifest["metadata"].setdefault("labels", {}).update(label_set["pairs"])
        spec = pod_spec(manifest)
        if spec is not None:
            _set_images(spec, kustomization.get("images", []))
    return objects


def by_key(objects: list[Manifest]) -> dict[tuple[str, str], Manifest]:
    """Objects keyed by (kind, name); a duplicate is an error."""
    keyed: dict[tuple[str, str], Manifest] = {}
    for manifest in objects:
        key = (manifest["kind"], manifest["metadata"]["name"])
        assert key not in keyed, f"{key} is defined twice"
        keyed[key] = manifest
    return keyed


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, dict[tuple[str, str], Manifest]]:
    """(name, objects by (kind, name)) for each overlay."""
    name: str = request.param
    return name, by_key(render(KUSTOMIZE_ROOT / name))


KUSTOMIZE_ROOT = KUBERNETES / "overlays"


# ------------------------------------------------------------------ edgefabric commands


def edgefabric_invocations(argv: list[str]) -> Iterator[list[str]]:
    """Every ``edgefabric ...`` argument list in a command, including inside ``sh -c`` scripts;
    shell variables stand in as a placeholder word."""
    if argv[:1] == ["edgefabric"]:
        yield argv[1:]
        return
    if argv[:2] != ["sh", "-c"]:
        return
    lexer = shlex.shlex(argv[2], posix=True, punctuation_chars=";&|(){}")
    lexer.whitespace_split = True
    segment: list[str] = []
    for token in [*lexer, ";"]:
        if token and set(token) <= set(";&|(){}"):
            words = list(segment)
            while words[:1] and words[0] in SHELL_PREFIXES:
                del words[0]
            if words[:1] == ["edgefabric"]:
                yield [re.sub(r"\$\{?\w+\}?", "placeholder", w) for w in words[1:]]
            segment = []
        else:
            segment.append(token)


def check_command(arguments: list[str], where: str) -> str:
    """Parse ``edgefabric ARGUMENTS`` with the real parser; returns 'group action'."""
    try:
        namespace = build_parser().parse_args(arguments)
    except SystemExit:
        pytest.fail(f"{where}: `edgefabric {shlex.join(arguments)}` is not a valid command")
    return f"{namespace.command} {namespace.action}"


def workload_commands(objects: dict[tuple[str, str], Manifest]) -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every container of the edgefabric images."""
    for (kind, name), manifest in objects.items():
        spec = pod_spec(manifest)
        for role in ("initContainers", "containers"):
            for container in (spec or {}).get(role, []):
                if container["image"].split(":")[0] in EDGEFABRIC_IMAGES:
                    argv = [*container.get("command", []), *container.get("args", [])]
                    yield f"{kind}/{name} {role[:-1]} {container['name']}", argv


# ------------------------------------------------------------------ Kubernetes


def test_overlays_render_to_the_expected_objects(overlay) -> None:
    name, objects = overlay
    expected = {
        ("Namespace", "edgefabric"),
        ("Deployment", "edgefabric-gateway"),
        ("Service", "edgefabric-gateway"),
        ("Service", "edgefabric-gateway-pods"),
        ("HorizontalPodAutoscaler", "edgefabric-gateway"),
        ("PodDisruptionBudget", "edgefabric-gateway"),
        ("ConfigMap", "edgefabric-gateway"),
        ("StatefulSet", "edgefabric-store"),
        ("Service", "edgefabric-store"),
        ("ConfigMap", "edgefabric-store"),
        ("PersistentVolumeClaim", "edgefabric-model-repository"),
        ("StatefulSet", "edgefabric-mosquitto"),
        ("ConfigMap", "edgefabric-mosquitto"),
        ("Service", "edgefabric-mosquitto"),
        ("Service", "edgefabric-mosquitto-devices"),
        ("NetworkPolicy", "edgefabric-mosquitto"),
        ("Secret", "edgefabric-gateway-tls"),
        ("Secret", "edgefabric-broker-tls"),
        ("Secret", "edgefabric-tokens"),
    }
    if name == "gpu":
        expected |= {("Deployment", "edgefabric-triton"), ("Service", "edgefabric-triton")}
    assert set(objects) == expected
    for (kind, _), manifest in objects.items():
        if kind != "Namespace":
            assert manifest["metadata"]["namespace"] == "edgefabric"
        assert manifest["metadata"]["labels"]["app.kubernetes.io/part-of"] == "edgefabric"


def test_every_object_is_valid_kubernetes_in_strict_mode(overlay) -> None:
    _, objects = overlay
    for key, manifest in objects.items():
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key}: {exc.message} at {list(exc.path)}")


def test_strict_validation_refuses_an_unknown_field(overlay) -> None:
    _, objects = overlay
    broken = copy.deepcopy(objects["Deployment", "edgefabric-gateway"])
    broken["spec"]["template"]["spec"]["containers"][0]["grpcPort"] = 8001
    with pytest.raises(kubernetes_validate.ValidationError, match="grpcPort"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_kubectl_kustomize_renders_the_same_objects(name: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the Python rendering is checked on its own")
    printed = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE_ROOT / name)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert by_key([d for d in yaml.safe_load_all(printed) if d]) == by_key(
        render(KUSTOMIZE_ROOT / name)
    )


def test_every_edgefabric_command_in_the_manifests_parses(overlay) -> None:
    _, objects = overlay
    seen: set[str] = set()
    for where, argv in workload_commands(objects):
        invocations = list(edgefabric_invocations(argv))
        assert invocations or "initContainer" in where, f"{where}: runs {argv}, no edgefabric"
        seen.update(check_command(arguments, where) for arguments in invocations)
    assert seen == {"gateway serve", "store serve", "keys init", "model export"}


def test_a_command_with_an_unknown_flag_is_reported() -> None:
    argv = ["sh", "-c", 'for m in $MODELS; do edgefabric model export "$m" --to /m --tag x; done']
    (arguments,) = edgefabric_invocations(argv)
    assert arguments == ["model", "export", "placeholder", "--to", "/m", "--tag", "x"]
    with pytest.raises(pytest.fail.Exception, match="--tag x` is not a valid command"):
        check_command(arguments, "test")


def _environment(
    objects: dict[tuple[str, str], Manifest], workload: tuple[str, str]
) -> dict[str, str]:
    spec = pod_spec(objects[workload])
    assert spec is not None
    values: dict[str, str] = {}
    for container in spec["containers"]:
        for source in container.get("envFrom", []):
            values.update(objects["ConfigMap", source["configMapRef"]["name"]]["data"])
        values.update({item["name"]: item["value"] for item in container.get("env", [])})
    return values


def test_gateway_configuration_loads_into_the_real_settings(
    overlay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, objects = overlay
    environment = _environment(objects, ("Deployment", "edgefabric-gateway"))
    unknown = {
        key
        for key in environment
        if key.removeprefix("EDGEFABRIC_GATEWAY_").lower() not in GatewaySettings.model_fields
    }
    assert not unknown, f"not gateway settings: {sorted(unknown)}"
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    spec = pod_spec(objects["Deployment", "edgefabric-gateway"])
    assert spec is not None
    settings = gateway_settings(spec["containers"][0]["command"], tmp_path)
    assert settings.auth == "required"
    assert settings.metrics_address == "0.0.0.0"
    expected_pools = ("triton=grpc://edgefabric-triton:8001",) if name == "gpu" else ()
    assert settings.pools == expected_pools
    if name == "gpu":
        service = objects["Service", "edgefabric-triton"]
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == 8001


def gateway_settings(argv: list[str], tmp_path: Path) -> GatewaySettings:
    """What ``edgefabric gateway serve`` would build from ``argv`` (and the environment), its
    folders moved under ``tmp_path``; the exposure checks (TLS/--insecure, auth) run as at start."""
    arguments = argv[1:] if argv[:1] == ["edgefabric"] else argv
    namespace = build_parser().parse_args(arguments)
    values = {
        key: value
        for key, value in vars(namespace).items()
        if key in GatewaySettings.model_fields and value is not None
    }
    for key in ("model_repository", "home"):
        if key in values:
            values[key] = tmp_path
    return GatewaySettings(**values)


def test_store_variables_are_known(overlay) -> None:
    _, objects = overlay
    assert set(_environment(objects, ("StatefulSet", "edgefabric-store"))) <= OTHER_VARIABLES


def test_gateway_probes_use_the_grpc_health_service(overlay) -> None:
    _, objects = overlay
    spec = pod_spec(objects["Deployment", "edgefabric-gateway"])
    assert spec is not None
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8001, "metrics": 8002}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"]
    assert container["readinessProbe"]["grpc"]["service"] == INFERENCE_SERVICE
    args = container["command"]
    assert args[args.index("--grpc-port") + 1] == "8001"
    assert args[args.index("--metrics-port") + 1] == "8002"
    assert (
        spec["terminationGracePeriodSeconds"]
        > float(
            objects["ConfigMap", "edgefabric-gateway"]["data"]["EDGEFABRIC_GATEWAY_DRAIN_GRACE_S"]
        )
        + container["lifecycle"]["preStop"]["sleep"]["seconds"]
    )


def test_selectors_and_references_resolve(overlay) -> None:
    _, objects = overlay
    templates = {
        key: manifest["spec"]["template"]
        for key, manifest in objects.items()
        if pod_spec(manifest) is not None
    }
    for (kind, name), manifest in objects.items():
        if kind == "Service":
            selector = manifest["spec"]["selector"].items()
            pods = [t for t in templates.values() if selector <= t["metadata"]["labels"].items()]
            assert pods, f"Service {name} selects no pod template"
            named = {
                p["name"] for t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])
            }
            for port in manifest["spec"].get("ports", []):
                assert port["targetPort"] in named, f"Service {name}: no port {port['targetPort']}"
        if kind in ("PodDisruptionBudget",):
            assert manifest["spec"]["selector"]["matchLabels"].items() <= (
                templates["Deployment", name]["metadata"]["labels"].items()
            )
        if kind == "HorizontalPodAutoscaler":
            target = manifest["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) in templates
    names = {name for _, name in objects}
    for key, template in templates.items():
        for volume in template["spec"].get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            secret = volume.get("secret", {}).get("secretName")
            config = volume.get("configMap", {}).get("name")
            for ref in (claim, secret, config):
                assert ref is None or ref in names, f"{key}: volume refers to missing {ref}"


def _listeners(conf: str) -> dict[str, dict[str, str]]:
    """A mosquitto.conf as {listener port: {directive: value}}; "" holds the global ones."""
    sections: dict[str, dict[str, str]] = {"": {}}
    current = sections[""]
    for line in conf.splitlines():
        words = line.split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "listener":
            current = sections.setdefault(words[1].split()[0], {})
            continue
        current[words[0]] = words[1] if len(words) > 1 else ""
    return sections


def _mounted(
    objects: dict[tuple[str, str], Manifest], container: dict[str, Any], spec: dict[str, Any]
) -> dict[str, str]:
    """Every file a container sees from its ConfigMap and Secret volumes: {path: source}."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    files: dict[str, str] = {}
    for mount in container["volumeMounts"]:
        volume = volumes.get(mount["name"], {})  # absent: a volumeClaimTemplate
        if "configMap" in volume:
            source = objects["ConfigMap", volume["configMap"]["name"]]
            keys = source["data"]
        elif "secret" in volume:
            source = objects["Secret", volume["secret"]["secretName"]]
            keys = source.get("stringData", source.get("data", {}))
        else:
            continue
        for key in keys:
            files[f"{mount['mountPath']}/{key}"] = f"{source['kind']}/{source['metadata']['name']}"
    return files


def test_the_device_listener_uses_the_fleet_acl_and_crl_from_broker_config(overlay) -> None:
    """The broker's ConfigMap carries the ACL `edgefabric fleet broker-config` writes for the
    fabric's service identities, and its device listener has every directive of the generated
    configuration, with each file it names mounted into the container."""
    _, objects = overlay
    config_map = objects["ConfigMap", "edgefabric-mosquitto"]
    at = datetime(2025, 1, 1, tzinfo=UTC)
    services = [
        ("edgefabric-store", Role.CONTROLLER),
        ("edgefabric-controller", Role.CONTROLLER),
        ("edgefabric-gateway", Role.GATEWAY),
    ]
    identities = [Identity(n, r, i, at, at) for i, (n, r) in enumerate(services, start=1)]
    assert config_map["data"]["acl"] == acl_text(identities), (
        "the broker's ACL differs from what `edgefabric fleet broker-config` writes: paste "
        "deploy/mosquitto/acl into the ConfigMap edgefabric-mosquitto (key acl)"
    )
    assert config_map["data"]["acl"] == (DEPLOY / "mosquitto" / "acl").read_text()
    sections = _listeners(config_map["data"]["mosquitto.conf"])
    assert sections[""]["per_listener_settings"] == "true"
    devices, in_cluster = sections["8883"], sections["1883"]
    assert "acl_file" not in in_cluster  # the fabric's own pods, behind the NetworkPolicy
    where = Path("/x")
    files = BrokerFiles(where / "ca", where / "cert", where / "key", where / "crl", where / "acl")
    generated = _listeners(broker_config_text(files, port=8883, bind="0.0.0.0"))
    expected = {**generated[""], **generated["8883"]}
    expected.pop("per_listener_settings")
    assert set(expected) <= set(devices), f"missing on 8883: {set(expected) - set(devices)}"
    for directive, value in expected.items():
        if not value.startswith("/x/"):
            assert devices[directive] == value, directive
    spec = pod_spec(objects["StatefulSet", "edgefabric-mosquitto"])
    assert spec is not None
    (container,) = spec["containers"]
    mounted = _mounted(objects, container, spec)
    assert mounted[devices["acl_file"]] == "ConfigMap/edgefabric-mosquitto"
    for directive in ("cafile", "certfile", "keyfile", "crlfile"):
        assert mounted[devices[directive]] == "Secret/edgefabric-broker-tls", directive
    config = container["command"][container["command"].index("-c") + 1]
    assert mounted[config] == "ConfigMap/edgefabric-mosquitto"


def test_every_pod_is_locked_down(overlay) -> None:
    _, objects = overlay
    for key, manifest in objects.items():
        spec = pod_spec(manifest)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True, key
        assert spec["securityContext"]["runAsUser"] != 0, key
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", key
        assert spec["automountServiceAccountToken"] is False, key
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            where = f"{key} container {container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert container["resources"]["requests"], where
            assert container["resources"]["limits"]["memory"], where


def test_gpu_overlay_puts_triton_on_gpus_with_the_exported_repository(overlay) -> None:
    name, objects = overlay
    claim = objects["PersistentVolumeClaim", "edgefabric-model-repository"]
    gateway = pod_spec(objects["Deployment", "edgefabric-gateway"])
    assert gateway is not None
    models = next(v for v in gateway["volumes"] if v["name"] == "models")
    if name == "cpu":
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert models["persistentVolumeClaim"]["claimName"] == "edgefabric-model-repository"
        return
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert models == {"name": "models", "emptyDir": {}}
    triton = pod_spec(objects["Deployment", "edgefabric-triton"])
    assert triton is not None
    (container,) = triton["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--model-repository=/models" in container["command"]
    (volume,) = [v for v in triton["volumes"] if v["name"] == "models"]
    assert volume["persistentVolumeClaim"]["claimName"] == "edgefabric-model-repository"
    store = pod_spec(objects["StatefulSet", "edgefabric-store"])
    assert store is not None
    (export,) = [c for c in store["initContainers"] if c["name"] == "export-models"]
    assert {"name": "model-repository", "mountPath": "/models"} in export["volumeMounts"]


def test_secrets_hold_placeholders_only() -> None:
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".conf", ".service", ".example", ""}:
            text = path.read_text(encoding="utf-8", errors="replace")
            assert "PRIVATE KEY-----" not in text, f"{path} holds a private key"
    for manifest in yaml.safe_load_all((KUBERNETES / "base" / "secrets.yaml").read_text()):
        for key, value in manifest["stringData"].items():
            assert value.startswith("REPLACE"), f"Secret {manifest['metadata']['name']}: {key}"


def test_the_renderer_explains_what_it_cannot_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml]\nhelmCharts: []\n")
    with pytest.raises(KustomizeError, match=r"unsupported keys \['helmCharts'\]"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [a.yaml]\npatches:\n  - target: {kind: ConfigMap, name: a}\n"
        "    patch: '[{op: replace, path: /data/missing/x, value: 1}]'\n"
    )
    (tmp_path / "a.yaml").write_text("kind: ConfigMap\nmetadata: {name: a}\ndata: {}\n")
    with pytest.raises(KustomizeError, match="path '/data/missing/x' does not exist"):
        render(tmp_path)


# ------------------------------------------------------------------ Docker, compose, systemd


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


@pytest.mark.parametrize("component", ["gateway", "store", "agent"])
def test_dockerfile_runs_a_real_command_as_a_non_root_user(component: str) -> None:
    instructions = dockerfile_instructions(DEPLOY / "docker" / f"{component}.Dockerfile")
    values = dict(instructions)
    assert re.fullmatch(r"python:3\.1\d-slim(-\w+)?", values["FROM"]), values["FROM"]
    assert "ORT_EXTRA=cpu" in [a for k, a in instructions if k == "ARG"]
    assert any(k == "RUN" and 'pip install ".[${ORT_EXTRA}]"' in a for k, a in instructions)
    (user,) = [a for k, a in instructions if k == "USER"]
    assert user.split(":")[0] not in ("root", "0"), user
    assert [k for k, _ in instructions].index("USER") > max(
        i for i, (k, _) in enumerate(instructions) if k in ("RUN", "COPY")
    ), "USER must come after every RUN and COPY"
    entrypoint = yaml.safe_load(values["ENTRYPOINT"])
    command = yaml.safe_load(values["CMD"])
    assert entrypoint == ["edgefabric"]
    assert (
        check_command(command, f"{component}.Dockerfile")
        == {
            "gateway": "gateway serve",
            "store": "store serve",
            "agent": "agent run",
        }[component]
    )
    healthcheck = values.get("HEALTHCHECK")
    if component == "store":
        assert healthcheck is None  # it listens on no port
        return
    assert healthcheck is not None
    probe = yaml.safe_load(healthcheck[healthcheck.index("CMD") + 3 :])
    assert probe[:2] == ["python", "-c"]
    compile(probe[2], "HEALTHCHECK", "exec")
    port = "8001" if component == "gateway" else "8101"
    assert f"127.0.0.1:{port}" in probe[2]
    assert port in values.get("EXPOSE", "")


def test_compose_runs_the_fabric_with_real_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"mosquitto", "store-init", "store", "gateway", "agent-1", "agent-2"}
    seen = []
    for name, service in services.items():
        if name == "mosquitto":
            continue
        entrypoint = service.get("entrypoint", ["edgefabric"])
        argv = [*entrypoint, *service["command"]]
        for arguments in edgefabric_invocations(argv):
            seen.append(check_command(arguments, f"compose service {name}"))
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith("./") or source in compose["volumes"], f"{name}: {volume}"
        build = service.get("build")
        if build is not None:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    assert sorted(seen) == sorted(
        ["keys init", "store serve", "gateway serve", "agent run", "agent run"]
    )
    # The agents' settings load (files they name are created here), and they never see keys/.
    trust = tmp_path / "root.json"
    trust.write_text("{}")
    for name in ("agent-1", "agent-2"):
        environment = services[name]["environment"]
        for key, value in environment.items():
            field = key.removeprefix("EDGEFABRIC_AGENT_").lower()
            assert field in AgentSettings.model_fields, f"{name}: {key} is not an agent setting"
            monkeypatch.setenv(key, str(value))
        monkeypatch.setenv("EDGEFABRIC_AGENT_TRUST_ROOT", str(trust))
        overrides: dict[str, Any] = {"device_id": name}
        settings = AgentSettings(**overrides)
        assert settings.broker == "mqtt://mosquitto:1883"
        assert not any(v.startswith("store-home") for v in services[name]["volumes"])
    assert services["gateway"]["ports"] == ["127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    for key, value in services["gateway"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    gateway = gateway_settings(services["gateway"]["command"], tmp_path)
    assert (gateway.grpc_address, gateway.grpc_port) == ("0.0.0.0", 8001)
    # the agents are reached by relay over the same broker they use
    assert gateway.pools == ("edge=mqtt://mosquitto:1883",)
    # The dashboard: published on the host's loopback, admin tokens required, options valid.
    store = build_parser().parse_args(services["store"]["command"])
    options = StoreServerOptions(
        broker=BrokerAddress.parse(store.broker),
        http_port=store.http_port,
        http_address=store.http_address,
        http_auth=store.auth,
        http_insecure=store.insecure,
    )
    assert (options.http_port, options.http_auth) == (8080, "required")
    assert services["store"]["ports"] == [f"127.0.0.1:{options.http_port}:{options.http_port}"]


def test_systemd_unit_is_hardened_and_runs_the_agent(tmp_path: Path) -> None:
    path = DEPLOY / "systemd" / "edgefabric-agent.service"
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(path, encoding="utf-8")
    service = unit["Service"]
    assert service["DynamicUser"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "edgefabric-agent"
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["EnvironmentFile"].lstrip("-") == "/etc/edgefabric/agent.env"
    program, *arguments = shlex.split(service["ExecStart"])
    assert Path(program).name == "edgefabric"
    assert check_command(arguments, str(path)) == "agent run"
    assert arguments[arguments.index("--data-dir") + 1] == "/var/lib/edgefabric-agent"
    example = DEPLOY / "systemd" / "agent.env.example"
    for line in example.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            key = line.partition("=")[0]
            assert key.removeprefix("EDGEFABRIC_AGENT_").lower() in AgentSettings.model_fields, key
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the unit was checked as INI only")
    # verify checks that ExecStart is executable: point it at this environment's edgefabric.
    local = shutil.which("edgefabric") or str(
        Path(__import__("sys").executable).with_name("edgefabric")
    )
    copy_path = tmp_path / path.name
    copy_path.write_text(path.read_text(encoding="utf-8").replace(program, local))
    result = subprocess.run(
        [analyze, "verify", str(copy_path)], check=False, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
