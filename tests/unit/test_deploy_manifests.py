"""The deployment manifests agree with the code they deploy.

docker-compose.yml, deploy/Dockerfile and every YAML document under deploy/k8s are parsed (PyYAML, no
Docker engine needed) and checked against the code: service names (services/cli/runners.py), environment
variables and ports (the pydantic-settings classes), probe paths (services/shared/http_ops.py) and the
MLflow server's webhook environment (services/cli/devstack/servers.py). Expectations are derived from
the code, so a new service (a name in runners.SERVICES plus a settings class in its package) is covered
without changing this file.

Scale-out and failover: compose runs a 3-node KRaft quorum (replication factor 3, min.insync.replicas 2)
and every service at least twice, replicated services without a fixed name or host port; under deploy/k8s
every service is a Deployment of at least 2 replicas with exactly one PodDisruptionBudget that keeps one
running; the `topics` jobs and every Kafka client agree on the topic shape (replication factor 3).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import math
import pkgutil
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import AliasChoices

import services
from services.cli.devstack.servers import mlflow_server_env
from services.cli.runners import SERVICES
from services.shared.http_ops import add_ops_routes
from services.shared.settings import FlywheelSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
K8S_DIR = ROOT / "deploy" / "k8s"

# Service name -> ("module:SettingsClass", port field or None), ONLY for a service whose settings cannot be
# derived. By default the settings class is the FlywheelSettings subclass defined in the package of the
# service's entrypoint (runners.SERVICES), and the port field is its only `*_port` field (none: no port).
SETTINGS_OVERRIDES: dict[str, tuple[str, str | None]] = {
    # Faust workers bind a port for Faust (never served) and may serve /metrics: neither is published.
    "cache-invalidation": ("services.cache_invalidation.settings:CacheInvalidationSettings", None),
    # The canary worker's served port is its control API; canary_web_port is Faust's (never served).
    "canary-rollout": ("services.canary_rollout.settings:CanarySettings", "canary_port"),
    "feedback-aggregation": ("services.feedback_aggregation.settings:FeedbackSettings", None),
    "retrainer": ("services.retrainer.settings:RetrainerSettings", None),
}

# MLflow webhook variables whose value in compose may differ from the embedded default (tuning only).
TUNABLE_MLFLOW_ENV = {"MLFLOW_WEBHOOK_CACHE_TTL"}

LOCAL_HOSTS = {"127.0.0.1", "localhost", "0.0.0.0", "::1"}
ALL_INTERFACES = {"0.0.0.0", "::", "[::]"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
URL_RE = re.compile(r"https?://[^\s'\"\],)]+")


# --- the code side -------------------------------------------------------------------------------------


@functools.cache
def settings_classes() -> tuple[type[FlywheelSettings], ...]:
    """FlywheelSettings and all its subclasses, after importing every `services.<pkg>.settings` module."""
    for mod in pkgutil.iter_modules(services.__path__):
        name = f"services.{mod.name}.settings"
        if mod.ispkg and importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    found: list[type[FlywheelSettings]] = []
    stack: list[type[FlywheelSettings]] = [FlywheelSettings]
    while stack:
        cls = stack.pop()
        if cls not in found:
            found.append(cls)
            stack.extend(cls.__subclasses__())
    return tuple(found)


def env_names(cls: type[FlywheelSettings]) -> dict[str, str]:
    """Environment variable (upper case) -> field name, as pydantic-settings reads them."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    names: dict[str, str] = {}
    for name, info in cls.model_fields.items():
        alias = info.validation_alias or info.alias
        if isinstance(alias, AliasChoices):
            choices = [c for c in alias.choices if isinstance(c, str)]
        elif isinstance(alias, str):
            choices = [alias]
        else:
            choices = [f"{prefix}{name}"]
        names.update({c.upper(): name for c in choices})
    return names


@functools.cache
def all_setting_env_names() -> frozenset[str]:
    return frozenset(n for cls in settings_classes() for n in env_names(cls))


@dataclass(frozen=True)
class ServiceSettings:
    cls: type[FlywheelSettings]
    port_field: str | None

    @property
    def env(self) -> dict[str, str]:
        return env_names(self.cls)

    def env_of(self, field_name: str) -> str:
        prefix = str(self.cls.model_config.get("env_prefix") or "").upper()
        return next(env for env, name in self.env.items() if name == field_name and env.startswith(prefix))

    def host_field(self) -> str | None:
        if self.port_field is None:
            return None
        candidate = self.port_field.removesuffix("_port") + "_host"
        return candidate if candidate in self.cls.model_fields else None


@functools.cache
def service_settings(service: str) -> ServiceSettings:
    if service in SETTINGS_OVERRIDES:
        target, port_field = SETTINGS_OVERRIDES[service]
        module, cls_name = target.split(":")
        return ServiceSettings(getattr(importlib.import_module(module), cls_name), port_field)
    package = SERVICES[service].split(":")[0].rsplit(".", 1)[0]

    def candidates() -> list[type[FlywheelSettings]]:
        return [c for c in settings_classes() if c.__module__.startswith(package + ".")]

    found = candidates()
    if not found:  # settings class not in a `settings` module: import the entrypoint module
        importlib.import_module(SERVICES[service].split(":")[0])
        settings_classes.cache_clear()
        found = candidates()
    assert len(found) == 1, (
        f"service {service!r}: expected one FlywheelSettings subclass in {package}, found {found}; "
        "add it to SETTINGS_OVERRIDES"
    )
    ports = [name for name in found[0].model_fields if name.endswith("_port")]
    assert len(ports) <= 1, f"service {service!r}: several port fields {ports}; add it to SETTINGS_OVERRIDES"
    return ServiceSettings(found[0], ports[0] if ports else None)


@functools.cache
def ops_paths() -> dict[str, str]:
    """Kind of operational endpoint ("liveness", "readiness", ...) -> path, from http_ops' docstrings."""
    app = FastAPI()
    add_ops_routes(app, dict)
    paths = {}
    for route in app.routes:
        if isinstance(route, APIRoute):
            kind = (route.endpoint.__doc__ or "").split(":")[0].strip().lower()
            paths[kind] = route.path
    assert {"liveness", "readiness"} <= set(paths), paths
    return paths


@functools.cache
def cli_script() -> str:
    """The console script that runs services.cli (pyproject [project.scripts])."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    names = [name for name, target in scripts.items() if target.startswith("services.cli.")]
    assert len(names) == 1, scripts
    return str(names[0])


# --- the Dockerfile ------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def dockerfile_exec(keyword: str) -> list[str]:
    values = [rest for kw, rest in dockerfile_instructions() if kw == keyword]
    assert values, f"{DOCKERFILE} has no {keyword}"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list), f"{keyword} must use the exec (JSON) form"
    return [str(x) for x in parsed]


# --- the manifests -------------------------------------------------------------------------------------


@dataclass
class Container:
    platform: str  # "compose" or "k8s"
    name: str  # compose service / k8s object name
    where: str
    argv: list[str]
    env: dict[str, str | None]  # value None: not known statically (a secret, a required variable)
    flywheel: bool
    ports: list[int] = field(default_factory=list)
    probes: list[tuple[str, int, str]] = field(default_factory=list)  # (kind, port, path)
    urls: list[str] = field(default_factory=list)  # URLs this container is configured to call

    @property
    def run_target(self) -> str | None:
        if len(self.argv) >= 3 and Path(self.argv[0]).name == cli_script() and self.argv[1] == "run":
            return self.argv[2]
        return None


def interpolate(value: str) -> str | None:
    """Compose interpolation: `${VAR:-default}` -> default; `${VAR}`, `${VAR:?err}` -> None (unknown)."""
    unknown = False

    def repl(match: re.Match[str]) -> str:
        nonlocal unknown
        inner = match.group(1)
        m = re.fullmatch(r"(\w+)(:?-)(.*)", inner, re.S)
        if m:
            return m.group(3)
        unknown = True
        return ""

    result = re.sub(r"\$\{([^}]*)\}", repl, value.replace("$$", "\0")).replace("\0", "$")
    return None if unknown else result


def as_argv(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    return [str(x) for x in value]


@functools.cache
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "compose file without services"
    return doc


def compose_builds_flywheel_image(svc: dict[str, Any]) -> bool:
    build = svc.get("build")
    if build is None:
        return False
    if isinstance(build, str):
        build = {"context": build}
    context = ROOT / build.get("context", ".")
    return (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE.resolve()


def image_repo(image: str) -> str:
    name = image.split("@")[0]
    head, _, tag = name.rpartition(":")
    return (head if head and "/" not in tag else name).rsplit("/", 1)[-1]


@functools.cache
def flywheel_image_repos() -> frozenset[str]:
    repos = frozenset(
        image_repo(interpolate(str(svc["image"])) or "")
        for svc in compose()["services"].values()
        if compose_builds_flywheel_image(svc) and "image" in svc
    )
    assert repos, "no compose service builds deploy/Dockerfile with an `image:` name"
    return repos


def container_port(spec: Any) -> int:
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).split("/")[0].rsplit(":", 1)[-1])


def compose_containers() -> Iterator[Container]:
    for name, svc in compose()["services"].items():
        image = image_repo(interpolate(str(svc.get("image", ""))) or "")
        flywheel = compose_builds_flywheel_image(svc) or image in flywheel_image_repos()
        entrypoint, command = as_argv(svc.get("entrypoint")), as_argv(svc.get("command"))
        if entrypoint is None:
            entrypoint = dockerfile_exec("ENTRYPOINT") if flywheel else []
            if command is None:
                command = dockerfile_exec("CMD") if flywheel else []
        raw_env = svc.get("environment") or {}
        if isinstance(raw_env, list):
            raw_env = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw_env)
        env = {k: None if v is None else interpolate(str(v)) for k, v in raw_env.items()}
        argv = [*entrypoint, *(command or [])]
        c = Container("compose", name, f"compose service {name!r}", argv, env, flywheel)
        c.ports = [container_port(p) for p in svc.get("ports", [])]
        c.ports += [container_port(p) for p in svc.get("expose", [])]
        health = svc.get("healthcheck") or {}
        test = health.get("test", [])
        for url in URL_RE.findall(test if isinstance(test, str) else " ".join(map(str, test))):
            parts = urlsplit(url)
            if parts.hostname in LOCAL_HOSTS and parts.port:
                c.probes.append(("healthcheck", parts.port, parts.path))
        c.urls = URL_RE.findall(" ".join([*c.argv, *(v or "" for v in env.values())]))
        yield c


@functools.cache
def k8s_docs() -> tuple[tuple[Path, dict[str, Any]], ...]:
    docs = []
    for path in sorted([*K8S_DIR.rglob("*.yaml"), *K8S_DIR.rglob("*.yml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert isinstance(doc, dict), f"{path}: a document is not a mapping"
                docs.append((path, doc))
    return tuple(docs)


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_docs() if doc.get("kind") == kind]


def pod_template(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "Pod":
        return doc
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"])
    return dict(doc["spec"]["template"])


def k8s_env(container: dict[str, Any], where: str) -> dict[str, str | None]:
    configmaps = {cm["metadata"]["name"]: cm.get("data") or {} for cm in k8s_objects("ConfigMap")}
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        assert "secretRef" not in source, (
            f"{where}: list secret variables one by one (env + secretKeyRef) so they can be checked"
        )
        ref = source["configMapRef"]["name"]
        assert ref in configmaps, f"{where}: envFrom ConfigMap {ref!r} is not defined under deploy/k8s"
        env.update({f"{prefix}{k}": str(v) for k, v in configmaps[ref].items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = configmaps.get(ref["name"], {}).get(ref["key"])
        else:
            env[item["name"]] = None
    return env


def k8s_expand(arg: str, env: dict[str, str | None]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1)) or m.group(0), arg)


def k8s_port(port: Any, container: dict[str, Any]) -> int:
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"named port {port!r} not declared by container {container['name']!r}"
    return int(named[port])


def k8s_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any], Container]]:
    """(owner object, pod template, container spec, Container) for every container under deploy/k8s."""
    for doc in k8s_docs():
        obj = doc[1]
        if obj.get("kind") not in POD_KINDS:
            continue
        pod = pod_template(obj)
        for spec in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
            where = f"k8s {obj['kind']}/{obj['metadata']['name']} container {spec['name']!r}"
            flywheel = image_repo(str(spec.get("image", ""))) in flywheel_image_repos()
            command, args = as_argv(spec.get("command")), as_argv(spec.get("args"))
            if command is None:
                command = dockerfile_exec("ENTRYPOINT") if flywheel else []
                if args is None:
                    args = dockerfile_exec("CMD") if flywheel else []
            env = k8s_env(spec, where)
            argv = [k8s_expand(a, env) for a in [*command, *(args or [])]]
            c = Container("k8s", obj["metadata"]["name"], where, argv, env, flywheel)
            c.ports = [int(p["containerPort"]) for p in spec.get("ports", [])]
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                http = (spec.get(kind) or {}).get("httpGet")
                if http:
                    c.probes.append((kind, k8s_port(http["port"], spec), http.get("path", "/")))
            c.urls = URL_RE.findall(" ".join([*argv, *(v or "" for v in env.values())]))
            yield obj, pod, spec, c


def all_containers() -> list[Container]:
    return [*compose_containers(), *(c for *_, c in k8s_containers())]


def expected_port(c: Container) -> int | None:
    """The port a `flywheel run` container listens on: its FLYWHEEL_*_PORT, else the field's default."""
    assert c.run_target is not None
    settings = service_settings(c.run_target)
    if settings.port_field is None:
        return None
    configured = {k.upper(): v for k, v in c.env.items()}.get(settings.env_of(settings.port_field))
    if configured is not None:
        return int(configured)
    default = settings.cls.model_fields[settings.port_field].default
    return int(default)


# --- the tests -----------------------------------------------------------------------------------------


def test_dockerfile_runs_the_cli_as_non_root() -> None:
    """(e) One image for all services: ENTRYPOINT is the CLI, the default CMD runs a known service."""
    assert DOCKERFILE.is_file()
    assert dockerfile_exec("ENTRYPOINT") == [cli_script()]
    cmd = dockerfile_exec("CMD")
    assert cmd[:1] == ["run"] and len(cmd) == 2 and cmd[1] in SERVICES, cmd
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    python = re.search(r">=\s*(\d+\.\d+)", requires)
    assert python is not None
    bases = [rest.split()[0] for kw, rest in dockerfile_instructions() if kw == "FROM"]
    assert bases and all(b.startswith(f"python:{python.group(1)}") for b in bases), bases
    users = [rest for kw, rest in dockerfile_instructions() if kw == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, users
    runs = [rest for kw, rest in dockerfile_instructions() if kw == "RUN"]
    assert any(re.search(r"pip install \.(\s|$)", rest) for rest in runs), runs


def test_manifests_parse_and_kustomization_lists_every_file() -> None:
    assert compose()["services"]
    kinds = [doc.get("kind") for _, doc in k8s_docs()]
    assert all(doc.get("apiVersion") and doc.get("kind") for _, doc in k8s_docs())
    assert kinds.count("Kustomization") == 1
    kustomization = next(path for path, doc in k8s_docs() if doc["kind"] == "Kustomization")
    listed = {(kustomization.parent / r).resolve() for r in kustomization_doc().get("resources", [])}
    on_disk = {p.resolve() for p, _ in k8s_docs()} - {kustomization.resolve()}
    assert listed == on_disk, f"kustomization resources {sorted(listed)} != files {sorted(on_disk)}"
    images = {i["name"] for i in kustomization_doc().get("images", [])}
    for _, _, spec, c in k8s_containers():
        if c.flywheel:
            assert spec["image"] in images, f"{c.where}: image {spec['image']!r} not in kustomization images"


def kustomization_doc() -> dict[str, Any]:
    return next(doc for _, doc in k8s_docs() if doc["kind"] == "Kustomization")


def test_every_flywheel_run_names_a_service_and_compose_runs_them_all() -> None:
    """(a) `flywheel run NAME` only for names in runners.SERVICES; compose runs every one of them."""
    runs = [(c.where, c.run_target) for c in all_containers() if c.flywheel and c.run_target]
    unknown = [f"{where}: {name!r}" for where, name in runs if name not in SERVICES]
    assert not unknown, f"unknown services (known: {sorted(SERVICES)}): {unknown}"
    in_compose = {c.run_target for c in compose_containers() if c.flywheel and c.run_target}
    assert set(SERVICES) <= in_compose, f"not in docker-compose.yml: {sorted(set(SERVICES) - in_compose)}"
    assert any(c.run_target for *_, c in k8s_containers()), "no `flywheel run` container under deploy/k8s"


def test_flywheel_containers_only_set_real_settings() -> None:
    """(b) Every variable given to a Flywheel container is read by a settings class.

    A `flywheel run NAME` container may only use variables of NAME's settings class; other Flywheel
    containers (jobs) those of any settings class.
    """
    union = all_setting_env_names()
    assert {"MLFLOW_TRACKING_URI", "KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"} <= union
    errors = []
    checked = 0
    for c in all_containers():
        if not c.flywheel:
            continue
        allowed = set(service_settings(c.run_target).env) if c.run_target in SERVICES else union
        for name in c.env:
            checked += 1
            if name.upper() not in allowed:
                errors.append(f"{c.where}: {name} is not a setting (known: {sorted(allowed)})")
    assert checked
    assert not errors, "\n".join(errors)


def test_ports_and_probes_match_settings() -> None:
    """(c) Container ports, healthchecks and probes use the service's FLYWHEEL_*_PORT (or its default)."""
    errors = []
    checked = 0
    # (platform, compose service or k8s Service name) -> port our service is reachable on there
    service_ports: dict[tuple[str, str], set[int]] = {}
    for c in compose_containers():
        if c.flywheel and c.run_target in SERVICES and (port := expected_port(c)) is not None:
            service_ports[("compose", c.name)] = {port}
    for c in all_containers():
        if not (c.flywheel and c.run_target in SERVICES):
            continue
        expected = expected_port(c)
        declared = [*c.ports, *(p for _, p, _ in c.probes)]
        if expected is None:
            if declared:
                errors.append(f"{c.where}: ports {declared} but {c.run_target} has no port setting")
            continue
        checked += len(declared)
        errors += [f"{c.where}: port {p} != configured {expected}" for p in declared if p != expected]
        settings = service_settings(c.run_target)
        host_field = settings.host_field()
        if declared and host_field:
            host = {k.upper(): v for k, v in c.env.items()}.get(settings.env_of(host_field))
            if host not in ALL_INTERFACES:
                errors.append(f"{c.where}: {settings.env_of(host_field)}={host!r}: unreachable from outside")
        for kind, _, path in c.probes:
            want = {"readinessProbe": {ops_paths()["readiness"]}, "livenessProbe": {ops_paths()["liveness"]}}
            allowed = want.get(kind, set(ops_paths().values()))
            if path not in allowed:
                errors.append(f"{c.where}: {kind} path {path!r} not in {sorted(allowed)}")
    for obj, pod, spec, c in k8s_containers():
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet"} and c.ports:
            kinds = {kind for kind, _, _ in c.probes}
            if not {"readinessProbe", "livenessProbe"} <= kinds:
                errors.append(f"{c.where}: serves ports {c.ports} without readiness and liveness probes")
        labels = pod.get("metadata", {}).get("labels", {})
        for svc in k8s_objects("Service"):
            selector = svc["spec"].get("selector") or {}
            if not selector or not selector.items() <= labels.items():
                continue
            for p in svc["spec"]["ports"]:
                target = k8s_port(p.get("targetPort", p["port"]), spec)
                if c.flywheel and c.run_target in SERVICES and target != expected_port(c):
                    errors.append(f"k8s Service/{svc['metadata']['name']}: targetPort {target} != {c.where}")
                service_ports.setdefault(("k8s", svc["metadata"]["name"]), set()).add(int(p["port"]))
    for c in all_containers():  # URLs pointing at our services use their ports
        for url in c.urls:
            parts = urlsplit(url)
            key = (c.platform, (parts.hostname or "").split(".")[0])  # k8s: name.namespace.svc...
            if key in service_ports and parts.port is not None:
                checked += 1
                if parts.port not in service_ports[key]:
                    errors.append(f"{c.where}: {url} but {key[1]} listens on {sorted(service_ports[key])}")
    assert checked, "no port was checked"
    assert not errors, "\n".join(errors)


def test_mlflow_server_has_the_embedded_webhook_environment() -> None:
    """(d) The compose MLflow server gets the variables mlflow_server_env sets for the embedded one."""
    servers = [
        c
        for c in compose_containers()
        if any(Path(a).name == "mlflow" and b == "server" for a, b in zip(c.argv, c.argv[1:], strict=False))
    ]
    assert servers, "no `mlflow server` in docker-compose.yml"
    probe = {"MLFLOW_TRACKING_URI": "x", "MLFLOW_REGISTRY_URI": "x"}
    expected = mlflow_server_env({})
    removed = set(probe) - set(mlflow_server_env(probe))
    assert expected
    for c in servers:
        missing = set(expected) - set(c.env)
        assert not missing, f"{c.where}: missing {sorted(missing)}"
        differ = {
            k: (c.env[k], v) for k, v in expected.items() if k not in TUNABLE_MLFLOW_ENV and c.env[k] != v
        }
        assert not differ, f"{c.where}: (compose, embedded) differ: {differ}"
        assert not removed & set(c.env), f"{c.where}: must not set {sorted(removed & set(c.env))}"


def test_webhook_registration_targets_the_watcher_route() -> None:
    """`flywheel webhook register --url URL`: URL's path is the watcher's webhook route."""
    from services.registry_watcher.bootstrap import create_app
    from services.registry_watcher.settings import WatcherSettings

    app = create_app(WatcherSettings(), background=False)
    post_paths = {path for path, ops in app.openapi()["paths"].items() if "post" in ops}
    registrations = [c for c in all_containers() if c.flywheel and c.argv[1:3] == ["webhook", "register"]]
    assert {c.platform for c in registrations} == {"compose", "k8s"}
    for c in registrations:
        url = c.argv[c.argv.index("--url") + 1]
        assert urlsplit(url).path in post_paths, f"{c.where}: {url} is not a POST route of the watcher"


# --- scale-out and failover ----------------------------------------------------------------------------

# Kafka settings of every compose node: each partition (and the internal topics) on all three nodes, a write
# acknowledged by two, so one node may be down without losing writes, committed offsets or transactions.
KAFKA_REPLICATION = 3
KAFKA_MIN_ISR = 2
KAFKA_NODE_SETTINGS = {
    "KAFKA_DEFAULT_REPLICATION_FACTOR": KAFKA_REPLICATION,
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": KAFKA_REPLICATION,
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": KAFKA_REPLICATION,
    "KAFKA_MIN_INSYNC_REPLICAS": KAFKA_MIN_ISR,
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": KAFKA_MIN_ISR,
}
MIN_REPLICAS = 2


def consumer_group_services() -> set[str]:
    """Services that consume Kafka in a consumer group (a `*_group_id` setting): replicas share partitions."""
    found = {
        name
        for name in SERVICES
        if any(f.endswith("_group_id") for f in service_settings(name).cls.model_fields)
    }
    assert found, "no service has a consumer group setting (*_group_id)"
    return found


def compose_replicas(svc: dict[str, Any]) -> int:
    deploy = svc.get("deploy") or {}
    if deploy.get("replicas") is not None:
        return int(deploy["replicas"])
    return int(svc.get("scale", 1))


def compose_host_port(spec: Any) -> str | None:
    """The fixed host port of a compose `ports` entry; None when Docker picks one (`127.0.0.1::8090`)."""
    if isinstance(spec, dict):
        published = spec.get("published")
        return None if published in (None, "") else str(published)
    parts = str(spec).split("/")[0].rsplit(":", 2)  # [IP:][HOST:]CONTAINER
    if len(parts) < 2:
        return None
    return parts[-2] or None


def listener_addresses(value: str | None) -> dict[str, tuple[str, int]]:
    """`PLAINTEXT://kafka-1:9092,CONTROLLER://:9093` -> {"PLAINTEXT": ("kafka-1", 9092), ...}."""
    result = {}
    for item in (value or "").split(","):
        name, sep, address = item.strip().partition("://")
        if sep:
            host, _, port = address.rpartition(":")
            result[name] = (host, int(port))
    return result


def host_ports(value: str | None) -> set[tuple[str, int]]:
    """`h1:9092,h2:9092` -> {("h1", 9092), ("h2", 9092)}."""
    result = set()
    for item in (value or "").split(","):
        if item.strip():
            host, _, port = item.strip().rpartition(":")
            result.add((host, int(port)))
    return result


def compose_kafka_nodes() -> list[Container]:
    return [
        c for c in compose_containers() if "broker" in (c.env.get("KAFKA_PROCESS_ROLES") or "").split(",")
    ]


def compose_names(c: Container) -> set[str]:
    """Names a compose container is reachable by on the compose network: service name and hostname."""
    hostname = compose()["services"][c.name].get("hostname")
    return {c.name, *([str(hostname)] if hostname else [])}


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels + matchExpressions) against pod labels; empty selects everything."""
    if any(labels.get(k) != str(v) for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], [str(v) for v in expr.get("values") or []]
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def pdb_min_available(pdb: dict[str, Any], replicas: int) -> int:
    """Pods a PodDisruptionBudget keeps running out of `replicas` healthy ones (percentages round up)."""
    spec = pdb["spec"]
    assert ("minAvailable" in spec) != ("maxUnavailable" in spec), (
        f"PodDisruptionBudget/{pdb['metadata']['name']}: set exactly one of minAvailable, maxUnavailable"
    )

    def count(value: Any) -> int:
        text = str(value)
        return math.ceil(replicas * int(text[:-1]) / 100) if text.endswith("%") else int(text)

    if "minAvailable" in spec:
        return count(spec["minAvailable"])
    return replicas - count(spec["maxUnavailable"])


def test_compose_runs_one_three_node_kraft_quorum() -> None:
    """Three Kafka nodes, each broker + controller, form one KRaft quorum (same voters and cluster id)."""
    nodes = compose_kafka_nodes()
    assert len(nodes) == 3, f"expected 3 Kafka brokers in compose, found {[c.name for c in nodes]}"
    errors = []
    ids: dict[int, Container] = {}
    for c in nodes:
        roles = set((c.env.get("KAFKA_PROCESS_ROLES") or "").split(","))
        if roles != {"broker", "controller"}:
            errors.append(f"{c.where}: KAFKA_PROCESS_ROLES={sorted(roles)}, expected broker,controller")
        node_id = int(c.env.get("KAFKA_NODE_ID") or -1)
        if node_id in ids:
            errors.append(f"{c.where}: KAFKA_NODE_ID {node_id} also used by {ids[node_id].where}")
        ids[node_id] = c
        if compose_replicas(compose()["services"][c.name]) != 1:
            errors.append(f"{c.where}: a Kafka node is one container (its node id and data are its own)")
    for key in ("CLUSTER_ID", "KAFKA_CONTROLLER_QUORUM_VOTERS"):
        values = {c.env.get(key) for c in nodes}
        if len(values) != 1 or None in values or "" in values:
            errors.append(f"{key} must be set and the same on every Kafka node: {values}")
    voters: dict[int, tuple[str, int]] = {}
    for item in (nodes[0].env.get("KAFKA_CONTROLLER_QUORUM_VOTERS") or "").split(","):
        voter_id, _, address = item.partition("@")
        voter_host, _, voter_port = address.rpartition(":")
        voters[int(voter_id)] = (voter_host, int(voter_port))
    if set(voters) != set(ids):
        errors.append(f"voters {sorted(voters)} != node ids {sorted(ids)}")
    for node_id, (host, port) in voters.items():
        if node_id not in ids:
            continue
        c = ids[node_id]
        controller = (c.env.get("KAFKA_CONTROLLER_LISTENER_NAMES") or "").split(",")[0]
        listening = listener_addresses(c.env.get("KAFKA_LISTENERS")).get(controller)
        if host not in compose_names(c) or listening is None or listening[1] != port:
            errors.append(
                f"voter {node_id}@{host}:{port} is not {c.where}'s {controller} listener {listening}"
            )
    data_volumes = {}
    for c in nodes:
        inter_broker = c.env.get("KAFKA_INTER_BROKER_LISTENER_NAME") or "PLAINTEXT"
        advertised = listener_addresses(c.env.get("KAFKA_ADVERTISED_LISTENERS")).get(inter_broker)
        if advertised is None or advertised[0] not in compose_names(c):
            errors.append(f"{c.where}: {inter_broker} advertised as {advertised}, not by its own name")
        log_dirs = c.env.get("KAFKA_LOG_DIRS") or ""
        mounts = [str(v).split(":")[:2] for v in compose()["services"][c.name].get("volumes", [])]
        sources = [src for src, target in mounts if target == log_dirs]
        if len(sources) != 1:
            errors.append(f"{c.where}: KAFKA_LOG_DIRS {log_dirs!r} is not on a volume of its own")
        else:
            data_volumes[c.name] = sources[0]
    if len(set(data_volumes.values())) != len(data_volumes):
        errors.append(f"Kafka nodes share a data volume: {data_volumes}")
    assert not errors, "\n".join(errors)


def test_compose_kafka_replication_survives_one_broker() -> None:
    """Replication factor 3 and min.insync.replicas 2 (topics and internal topics) on every node."""
    nodes = compose_kafka_nodes()
    assert nodes
    errors = [
        f"{c.where}: {key}={c.env.get(key)!r}, expected {want}"
        for c in nodes
        for key, want in KAFKA_NODE_SETTINGS.items()
        if c.env.get(key) != str(want)
    ]
    assert KAFKA_MIN_ISR < KAFKA_REPLICATION <= len(nodes), f"{len(nodes)} Kafka nodes for replication 3"
    assert not errors, "\n".join(errors)


def test_kafka_clients_and_topics_jobs_agree_on_the_topic_shape() -> None:
    """The `topics ensure` job creates topics with replication factor 3; every Flywheel container using
    Kafka has the same shape (services check it at start), and in compose bootstraps from all 3 nodes."""
    nodes = compose_kafka_nodes()
    advertised = {
        c.name: set(listener_addresses(c.env.get("KAFKA_ADVERTISED_LISTENERS")).values()) for c in nodes
    }
    errors = []
    for platform in ("compose", "k8s"):
        clients = [
            c
            for c in all_containers()
            if c.platform == platform and c.flywheel and c.env.get("KAFKA_BOOTSTRAP_SERVERS") is not None
        ]
        jobs = [c for c in clients if c.argv[1:3] == ["topics", "ensure"]]
        if len(jobs) != 1:
            errors.append(f"{platform}: expected one `topics ensure` job, found {[c.where for c in jobs]}")
        shapes = {
            c.where: (c.env.get("FLYWHEEL_KAFKA_PARTITIONS"), c.env.get("FLYWHEEL_KAFKA_REPLICATION_FACTOR"))
            for c in clients
        }
        if len(set(shapes.values())) != 1:
            errors.append(f"{platform}: (partitions, replication factor) differ: {shapes}")
        errors += [
            f"{where}: FLYWHEEL_KAFKA_REPLICATION_FACTOR={rf!r}, expected {KAFKA_REPLICATION}"
            for where, (_, rf) in shapes.items()
            if rf != str(KAFKA_REPLICATION)
        ]
        if platform != "compose":
            continue
        for c in clients:
            servers = host_ports(c.env.get("KAFKA_BOOTSTRAP_SERVERS"))
            missing = [name for name, addresses in advertised.items() if not servers & addresses]
            unknown = servers - set().union(*advertised.values())
            if missing or unknown:
                errors.append(
                    f"{c.where}: KAFKA_BOOTSTRAP_SERVERS misses {missing}, unknown {sorted(unknown)}"
                )
    assert not errors, "\n".join(errors)


def test_compose_runs_every_service_at_least_twice() -> None:
    """Each `flywheel run` service has at least 2 instances; a consumer-group worker as one replicated
    service (its replicas share the group, one takes over a failed one's partitions)."""
    instances = dict.fromkeys(SERVICES, 0)
    errors = []
    for c in compose_containers():
        if not (c.flywheel and c.run_target in SERVICES):
            continue
        replicas = compose_replicas(compose()["services"][c.name])
        instances[c.run_target] += replicas
        if c.run_target in consumer_group_services() and replicas < MIN_REPLICAS:
            errors.append(f"{c.where}: {replicas} replica(s) of a consumer-group worker, need {MIN_REPLICAS}")
    errors += [f"{name}: {n} instance(s) in compose" for name, n in instances.items() if n < MIN_REPLICAS]
    assert not errors, "\n".join(errors)


def test_replicated_compose_services_have_no_fixed_name_or_host_port() -> None:
    """Two replicas cannot share a container name, a hostname or a host port."""
    errors = []
    checked = 0
    for c in compose_containers():
        svc = compose()["services"][c.name]
        if compose_replicas(svc) < 2 and c.run_target not in consumer_group_services():
            continue
        checked += 1
        errors += [
            f"{c.where}: fixed {key} {svc[key]!r}" for key in ("container_name", "hostname") if key in svc
        ]
        errors += [
            f"{c.where}: fixed host port in {spec!r}"
            for spec in svc.get("ports", [])
            if compose_host_port(spec) is not None
        ]
    assert checked >= len(consumer_group_services())
    assert not errors, "\n".join(errors)


def test_k8s_deployments_have_replicas_and_one_disruption_budget() -> None:
    """Every service is a Deployment of >= 2 replicas with exactly one PodDisruptionBudget (policy/v1)
    selecting its pods, which lets a drain evict a pod while keeping at least one running."""
    deployments = k8s_objects("Deployment")
    pdbs = k8s_objects("PodDisruptionBudget")
    errors = []
    run_targets = {c.run_target for obj, *_, c in k8s_containers() if obj["kind"] == "Deployment"}
    if run_targets != set(SERVICES):
        errors.append(f"k8s Deployments run {sorted(run_targets, key=str)}, services are {sorted(SERVICES)}")
    used: dict[str, int] = {pdb["metadata"]["name"]: 0 for pdb in pdbs}
    for dep in deployments:
        name = dep["metadata"]["name"]
        replicas = int(dep["spec"].get("replicas", 1))
        labels = pod_template(dep).get("metadata", {}).get("labels", {})
        if replicas < MIN_REPLICAS:
            errors.append(f"Deployment/{name}: replicas {replicas} < {MIN_REPLICAS}")
        if not selector_matches(dep["spec"]["selector"], labels):
            errors.append(f"Deployment/{name}: selector does not match its pod template labels")
        matching = [pdb for pdb in pdbs if selector_matches(pdb["spec"].get("selector") or {}, labels)]
        if len(matching) != 1:
            names = [pdb["metadata"]["name"] for pdb in matching]
            errors.append(f"Deployment/{name}: {len(matching)} PodDisruptionBudgets select its pods {names}")
        for pdb in matching:
            used[pdb["metadata"]["name"]] += 1
            if pdb.get("apiVersion") != "policy/v1":
                errors.append(f"PodDisruptionBudget/{pdb['metadata']['name']}: apiVersion must be policy/v1")
            keep = pdb_min_available(pdb, replicas)
            if not 1 <= keep < replicas:
                errors.append(
                    f"PodDisruptionBudget/{pdb['metadata']['name']}: keeps {keep} of {replicas} pods of "
                    f"Deployment/{name} (need at least 1 and an evictable one)"
                )
    errors += [
        f"PodDisruptionBudget/{name} selects {n} Deployments, not 1" for name, n in used.items() if n != 1
    ]
    assert deployments and pdbs
    assert not errors, "\n".join(errors)
