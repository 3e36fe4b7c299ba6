"""The deployment manifests agree with the code they deploy.

docker-compose.yml, deploy/Dockerfile and every YAML document under deploy/k8s are parsed (PyYAML, no
Docker engine needed) and checked against the code: service names (services/cli/runners.py), environment
variables and ports (the pydantic-settings classes), probe paths (services/shared/http_ops.py) and the
MLflow server's webhook environment (services/cli/devstack/servers.py). Expectations are derived from
the code, so a new service (a name in runners.SERVICES plus a settings class in its package) is covered
without changing this file.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
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
