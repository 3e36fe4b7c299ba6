"""The Grafana dashboards, the Prometheus configuration and their compose services agree with the code.

- Every metric a dashboard's PromQL uses is declared in `services/` (a prometheus_client Counter, Gauge,
  Histogram or Summary, found by parsing the source: no service module is imported), and every label it
  selects on, groups by (`by (...)`, `on (...)`) or shows in a legend exists on that metric. Series names
  follow prometheus_client: a Counter is exposed as `<name>_total` (its declared name may carry the suffix),
  a Histogram as `_bucket` (plus `le`), `_sum` and `_count`. `job` and `instance` come from the scrape.
- Template variables query declared metrics and labels; every `$variable` an expression uses is defined.
- Dashboards and the provisioned data source use the same data source uid, and the data source is the
  compose Prometheus.
- docker-compose.yml mounts every file of deploy/grafana and deploy/prometheus read-only where the images
  read them, and publishes Prometheus and Grafana on loopback only.
- deploy/prometheus/prometheus.yml scrapes /metrics of every Flywheel service in compose on the port that
  serves it (the HTTP port, or a worker's web port bound to all interfaces), every replica of a replicated
  service through DNS service discovery.
"""

from __future__ import annotations

import ast
import functools
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

from services.cli.runners import SERVICES
from tests.unit.test_deploy_manifests import (
    ALL_INTERFACES,
    ROOT,
    Container,
    compose,
    compose_containers,
    compose_replicas,
    container_port,
    expected_port,
    image_repo,
    service_settings,
)

DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
MONITORING_DIRS = (ROOT / "deploy" / "grafana", ROOT / "deploy" / "prometheus")

TARGET_LABELS = frozenset({"job", "instance"})  # attached by Prometheus to every scraped series
METRIC_KINDS = {"Counter", "Gauge", "Histogram", "Summary"}
AGGREGATIONS = {
    "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile",
}  # fmt: skip
FUNCTIONS = AGGREGATIONS | {
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "abs", "clamp_min",
    "clamp_max", "round", "vector", "scalar", "time", "timestamp", "label_replace", "max_over_time",
    "min_over_time", "avg_over_time", "sum_over_time", "last_over_time", "changes", "resets", "absent",
}  # fmt: skip
GROUPING = {"by", "without"}
MATCHING = {"on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"bool", "and", "or", "unless"}
TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      | (?P<range>\[[^\]]*\])
      | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      | (?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
      | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}])
      | (?P<space>\s+)""",
    re.X,
)
GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)|\[\[(\w+)\]\]")


# --- the metrics the code declares ------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One series name a declared metric exposes, with its labels and where the metric is declared."""

    name: str
    labels: frozenset[str]
    where: str


def exposed(kind: str, name: str, labels: frozenset[str], where: str) -> list[Series]:
    if kind == "Counter":
        return [Series(name.removesuffix("_total") + "_total", labels, where)]
    if kind == "Gauge":
        return [Series(name, labels, where)]
    bucket = ("_bucket", labels | {"le"}) if kind == "Histogram" else ("", labels | {"quantile"})
    return [Series(name + s, ls, where) for s, ls in (bucket, ("_sum", labels), ("_count", labels))]


def literal_strings(node: ast.expr | None, where: str) -> list[str]:
    assert isinstance(node, ast.List | ast.Tuple), f"{where}: labels must be a literal list"
    values = [elt.value for elt in node.elts if isinstance(elt, ast.Constant) and isinstance(elt.value, str)]
    assert len(values) == len(node.elts), f"{where}: labels must be string literals"
    return values


@functools.cache
def declared_series() -> dict[str, Series]:
    """Series name -> Series, for every prometheus_client metric declared under services/."""
    found: dict[str, Series] = {}
    for path in sorted((ROOT / "services").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        kinds = {
            alias.asname or alias.name: alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client"
            for alias in node.names
            if alias.name in METRIC_KINDS
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in kinds):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            keywords = {k.arg: k.value for k in node.keywords}
            name = node.args[0] if node.args else keywords.get("name")
            assert isinstance(name, ast.Constant) and isinstance(name.value, str), (
                f"{where}: name not literal"
            )
            label_node = node.args[2] if len(node.args) > 2 else keywords.get("labelnames")
            labels = frozenset(literal_strings(label_node, where) if label_node is not None else [])
            for series in exposed(kinds[node.func.id], name.value, labels, where):
                assert series.name not in found, (
                    f"{where}: {series.name} also declared at {found[series.name]}"
                )
                found[series.name] = series
    return found


# --- PromQL ------------------------------------------------------------------------------------------------


@dataclass
class Group:
    bracket: str  # "(" or "{"
    items: list[Any] = field(default_factory=list)


@dataclass
class Usage:
    """What one expression uses: metric selectors (name, matcher labels) and label lists with the metrics
    they apply to (a `by`'s aggregated argument; both operands of an `on`)."""

    selectors: list[tuple[str, set[str]]] = field(default_factory=list)
    label_lists: list[tuple[set[str], set[str]]] = field(default_factory=list)


def tokens(expr: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(expr):
        match = TOKEN.match(expr, pos)
        assert match is not None, f"cannot read PromQL at {expr[pos:]!r} in {expr!r}"
        pos = match.end()
        if match.lastgroup != "space":
            yield str(match.lastgroup), match.group()


def parse(expr: str) -> Group:
    """The expression as nested groups of tokens ((...) and {...}); strings and ranges stay tokens."""
    stack = [Group("(")]
    closing = {")": "(", "}": "{"}
    for kind, text in tokens(expr):
        if text in ("(", "{"):
            stack.append(Group(text))
        elif text in closing:
            group = stack.pop()
            assert group.bracket == closing[text] and stack, f"unbalanced {text!r} in {expr!r}"
            stack[-1].items.append(group)
        else:
            stack[-1].items.append((kind, text))
    assert len(stack) == 1, f"unclosed bracket in {expr!r}"
    return stack[0]


def label_names(group: Group) -> set[str]:
    return {text for kind, text in group.items if kind == "ident"}


def analyse(group: Group, usage: Usage) -> None:
    """Add the selectors and label lists of `group` (and what it nests) to `usage`."""
    items = group.items
    first_selector = len(usage.selectors)
    on_operands: list[set[str]] = []  # label lists of `on`/`ignoring`: they apply to this level's metrics
    skip: set[int] = set()
    for i, item in enumerate(items):
        following = items[i + 1] if i + 1 < len(items) else None
        if i in skip:
            continue
        if isinstance(item, Group):
            assert item.bracket == "(", "a label matcher without a metric name"
            analyse(item, usage)
            continue
        kind, text = item
        if kind != "ident" or text in KEYWORDS | FUNCTIONS:
            continue
        if text in GROUPING | MATCHING:
            if not isinstance(following, Group):
                continue  # group_left without labels
            skip.add(i + 1)
            if text in MATCHING:
                on_operands.append(label_names(following))
                continue
            # `sum (x) by (l)` aggregates the group before, `sum by (l) (x)` the one after the labels.
            before = items[i - 1] if i else None
            argument = before if isinstance(before, Group) else items[i + 2]
            scope = Usage()
            analyse(argument, scope)
            usage.label_lists.append((label_names(following), {name for name, _ in scope.selectors}))
        elif isinstance(following, Group) and following.bracket == "(":
            raise AssertionError(f"unknown PromQL function {text!r}")
        else:
            matchers = following.items if isinstance(following, Group) else []
            if matchers:
                skip.add(i + 1)
            labels = {
                name
                for (kind, name), after in itertools.pairwise(matchers)
                if kind == "ident" and after[1] in {"=", "!=", "=~", "!~"}
            }
            usage.selectors.append((text, labels))
    operands = {name for name, _ in usage.selectors[first_selector:]}
    usage.label_lists += [(labels, operands) for labels in on_operands]


def variables(expr: str) -> set[str]:
    """Grafana variables an expression uses, without Grafana's own ($__rate_interval, ...)."""
    names = {a or b for a, b in GRAFANA_VARIABLE.findall(expr)}
    return {name for name in names if not name.startswith("__")}


# --- the dashboards ---------------------------------------------------------------------------------------


def dashboards() -> list[tuple[Path, dict[str, Any]]]:
    paths = sorted(DASHBOARDS.glob("*.json"))
    assert paths, f"no dashboard under {DASHBOARDS}"
    return [(path, json.loads(path.read_text())) for path in paths]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, PromQL, legend) of every query of the dashboard."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield (
                f"panel {panel.get('title')!r} {target.get('refId')}",
                target["expr"],
                target.get("legendFormat", ""),
            )


def check_labels(where: str, metric: str, labels: set[str], series: dict[str, Series]) -> list[str]:
    if metric not in series:
        return [f"{where}: {metric} is not declared in services/"]
    unknown = labels - series[metric].labels - TARGET_LABELS
    return (
        [f"{where}: {metric} has no label(s) {sorted(unknown)} ({series[metric].where})"] if unknown else []
    )


def test_declarations_are_found() -> None:
    """The source scan sees the declarations, with prometheus_client's series names and labels."""
    series = declared_series()
    assert series["flywheel_consumer_lag_messages"].labels == {"worker", "topic", "partition"}
    assert series["flywheel_gateway_requests_total"].labels == {"model", "version", "variant", "status"}
    assert series["flywheel_gateway_request_seconds_bucket"].labels == {"model", "variant", "le"}
    assert len({s.where for s in series.values()}) >= 50


def test_dashboard_queries_use_declared_metrics_and_labels() -> None:
    """Every query reads declared metrics by labels they have, and shows labels its result keeps."""
    series = declared_series()
    errors: list[str] = []
    used: set[str] = set()
    for path, dashboard in dashboards():
        defined = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
        for where, expr, legend in expressions(dashboard):
            where = f"{path.name} {where}"
            usage = Usage()
            analyse(parse(expr), usage)
            if not usage.selectors:
                errors.append(f"{where}: no metric in {expr!r}")
            for metric, labels in usage.selectors:
                used.add(metric)
                errors += check_labels(where, metric, labels, series)
            for labels, metrics in usage.label_lists:
                errors += [e for m in metrics & series.keys() for e in check_labels(where, m, labels, series)]
            grouped = set().union(*(labels for labels, _ in usage.label_lists))
            shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
            available = grouped or set().union(*(series[m].labels for m, _ in usage.selectors if m in series))
            if shown - available - TARGET_LABELS:
                errors.append(f"{where}: legend {legend!r} shows labels the result does not have")
            undefined = variables(expr) - defined
            errors += [f"{where}: ${v} is not a template variable" for v in sorted(undefined)]
    assert used, "the dashboards query nothing"
    assert not errors, "\n".join(errors)


def test_template_variables_query_declared_labels() -> None:
    """Each template variable lists the values of a label of a declared metric."""
    series = declared_series()
    errors: list[str] = []
    for path, dashboard in dashboards():
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text.strip())
            if variable.get("type") != "query" or match is None:
                errors.append(f"{path.name} ${variable.get('name')}: expected label_values(metric, label)")
                continue
            metric, label = match.groups()
            errors += check_labels(f"{path.name} ${variable['name']}", metric, {label}, series)
    assert not errors, "\n".join(errors)


def test_the_lag_gauge_is_on_the_dashboard() -> None:
    exprs = [expr for _, dashboard in dashboards() for _, expr, _ in expressions(dashboard)]
    assert any("flywheel_consumer_lag_messages" in expr for expr in exprs)


def test_promql_reader_catches_mistakes() -> None:
    """The checks above are only as good as this reader: an unknown metric or label must be reported."""
    series = declared_series()
    usage = Usage()
    expr = (
        'sum by (replica, le) (rate(flywheel_gateway_request_seconds_bucket{model=~"$m"}[$__rate_interval]))'
    )
    analyse(parse(expr), usage)
    [(labels, metrics)] = usage.label_lists
    assert metrics == {"flywheel_gateway_request_seconds_bucket"} and variables(expr) == {"m"}
    assert check_labels("q", "flywheel_gateway_request_seconds_bucket", labels, series)  # no replica label
    usage = Usage()
    analyse(
        parse("sum(rate(flywheel_gateway_requests[5m])) / on (model) flywheel_canary_weight_percent"), usage
    )
    assert [m for m, _ in usage.selectors] == ["flywheel_gateway_requests", "flywheel_canary_weight_percent"]
    assert usage.label_lists == [({"model"}, {"flywheel_gateway_requests", "flywheel_canary_weight_percent"})]
    assert check_labels("q", "flywheel_gateway_requests", set(), series)  # the counter is ..._total


# --- provisioning, Prometheus and compose -------------------------------------------------------------------


def monitoring_service(repo: str) -> tuple[str, dict[str, Any]]:
    found = [(n, s) for n, s in compose()["services"].items() if image_repo(str(s.get("image", ""))) == repo]
    assert len(found) == 1, f"expected one compose service running the {repo} image, found {found}"
    return found[0]


def bind_mounts(svc: dict[str, Any]) -> list[tuple[Path, PurePosixPath, bool]]:
    """(host path, container path, read-only) of a compose service's bind mounts (named volumes left out)."""
    mounts = []
    for spec in svc.get("volumes", []):
        if isinstance(spec, dict):
            source, target, ro = spec.get("source", ""), spec["target"], bool(spec.get("read_only"))
        else:
            source, target, *mode = str(spec).split(":")
            ro = "ro" in ",".join(mode).split(",")
        if source.startswith((".", "/")):
            mounts.append(((ROOT / source).resolve(), PurePosixPath(target), ro))
    return mounts


def container_path(mounts: list[tuple[Path, PurePosixPath, bool]], host: Path) -> PurePosixPath | None:
    for source, target, _ in mounts:
        if host.resolve() == source or source in host.resolve().parents:
            return target / host.resolve().relative_to(source)
    return None


def provisioning(kind: str) -> list[dict[str, Any]]:
    docs = []
    for path in sorted((GRAFANA_PROVISIONING / kind).glob("*.y*ml")):
        doc = yaml.safe_load(path.read_text())
        docs += doc.get("datasources" if kind == "datasources" else "providers", [])
    assert docs, f"nothing provisioned under {GRAFANA_PROVISIONING / kind}"
    return docs


def test_compose_mounts_the_monitoring_files_read_only_where_the_images_read_them() -> None:
    """Prometheus and Grafana get every file of deploy/prometheus and deploy/grafana, read-only, where they
    read them; loopback-only ports; one data source uid for provisioning and dashboards."""
    prometheus_name, prometheus = monitoring_service("prometheus")
    _, grafana = monitoring_service("grafana")
    mounts = {"prometheus": bind_mounts(prometheus), "grafana": bind_mounts(grafana)}
    all_mounts = [m for ms in mounts.values() for m in ms]
    errors = [f"mount of {src}: the file is missing" for src, _, _ in all_mounts if not src.exists()]
    errors += [f"mount of {src} is writable (add :ro)" for src, _, ro in all_mounts if not ro]
    files = [p for d in MONITORING_DIRS for p in d.rglob("*") if p.is_file()]
    errors += [
        f"{p.relative_to(ROOT)} is not mounted" for p in files if container_path(all_mounts, p) is None
    ]
    if str(container_path(mounts["prometheus"], PROMETHEUS_CONFIG)) != "/etc/prometheus/prometheus.yml":
        errors.append("prometheus.yml is not at /etc/prometheus/prometheus.yml, where the image reads it")
    if str(container_path(mounts["grafana"], GRAFANA_PROVISIONING)) != "/etc/grafana/provisioning":
        errors.append("the provisioning directory is not at /etc/grafana/provisioning")
    for provider in provisioning("dashboards"):
        path = PurePosixPath(provider["options"]["path"])
        if container_path(mounts["grafana"], DASHBOARDS) != path:
            errors.append(
                f"dashboard provider {provider['name']!r} reads {path}, not deploy/grafana/dashboards"
            )
    home = (grafana.get("environment") or {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and home not in {str(container_path(mounts["grafana"], p)) for p in DASHBOARDS.glob("*.json")}:
        errors.append(f"home dashboard {home} is not a mounted dashboard")
    for name, svc in (("prometheus", prometheus), ("grafana", grafana)):
        for spec in svc.get("ports", []):
            if not str(spec).startswith("127.0.0.1:"):
                errors.append(f"{name}: port {spec!r} is not published on loopback only")
    uids = {source["uid"] for source in provisioning("datasources")}
    for source in provisioning("datasources"):
        url = urlsplit(source["url"])
        ports = {container_port(p) for p in prometheus.get("ports", [])}
        if source["type"] == "prometheus" and (url.hostname != prometheus_name or url.port not in ports):
            errors.append(f"data source {source['uid']!r} at {source['url']}: not the compose Prometheus")
    for path, dashboard in dashboards():
        refs = [p.get("datasource") for p in panels(dashboard)]
        refs += [t.get("datasource") for p in panels(dashboard) for t in p.get("targets", [])]
        refs += [v.get("datasource") for v in dashboard.get("templating", {}).get("list", [])]
        errors += [
            f"{path.name}: data source {ref} is not provisioned ({sorted(uids)})"
            for ref in refs
            if ref is not None and ref.get("uid") not in uids
        ]
    assert not errors, "\n".join(errors)


def scrape_targets() -> dict[tuple[str, int], str]:
    """(host or DNS name, port) -> how it is scraped ("static" or "dns"), from prometheus.yml."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets: dict[tuple[str, int], str] = {}
    for job in config["scrape_configs"]:
        where = f"prometheus.yml job {job['job_name']!r}"
        assert job.get("metrics_path", "/metrics") == "/metrics", f"{where}: metrics_path"
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = str(target).rpartition(":")
                targets[(host, int(port))] = "static"
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A" and dns.get("port"), (
                f"{where}: DNS discovery needs type A + port"
            )
            targets.update({(name, int(dns["port"])): "dns" for name in dns["names"]})
    return targets


def metrics_port(c: Container) -> tuple[int, list[str]]:
    """The port a compose Flywheel service serves /metrics on, and why Prometheus could not reach it."""
    settings = service_settings(c.run_target)
    if settings.port_field is not None:  # an HTTP service: /metrics is one of its ops routes
        port = expected_port(c)
        assert port is not None
        return port, []
    fields = settings.cls.model_fields
    [web] = [f for f in fields if f.endswith("_web_port")]  # a worker: /metrics on the Faust web port
    [host] = [f for f in fields if f.endswith("_metrics_host")]
    env = {k.upper(): v for k, v in c.env.items()}
    port = int(env.get(settings.env_of(web)) or fields[web].default)
    if env.get(settings.env_of(host)) not in ALL_INTERFACES:
        return port, [f"{c.where}: set {settings.env_of(host)}=0.0.0.0 so that Prometheus reaches /metrics"]
    return port, []


def test_prometheus_scrapes_every_flywheel_service_and_every_replica() -> None:
    """A target per compose Flywheel service on its /metrics port (DNS discovery when replicated), and
    no target that is not one."""
    targets = scrape_targets()
    errors: list[str] = []
    expected: set[tuple[str, int]] = set()
    for c in compose_containers():
        if not (c.flywheel and c.run_target in SERVICES):
            continue
        port, unreachable = metrics_port(c)
        errors += unreachable
        expected.add((c.name, port))
        how = targets.get((c.name, port))
        if how is None:
            errors.append(f"{c.where}: prometheus.yml does not scrape {c.name}:{port}")
        elif compose_replicas(compose()["services"][c.name]) > 1 and how != "dns":
            errors.append(f"{c.where}: replicated; scrape it with dns_sd_configs to reach every replica")
    errors += [
        f"prometheus.yml scrapes {h}:{p}, not a Flywheel service port" for h, p in set(targets) - expected
    ]
    assert len(expected) >= len(SERVICES)
    assert not errors, "\n".join(errors)
