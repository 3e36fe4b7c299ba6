"""`flywheel demo`: a scripted end-to-end run on embedded defaults that prints what happened and the numbers.

Act 1, hot reload: two real sklearn versions of a wine classifier are registered; v1 is champion on two
gateway replicas; a client keeps sending held-out samples to both replicas while `champion` moves to v2
in MLflow. Printed: requests sent, failed (must be 0), when each replica began serving v2, and the live
accuracy each version achieved on the traffic it served. Exit status 0 only if all of that holds.

Act 2, canary: v2 passes its shadow step, is rolled out step by step and promoted; a broken v3 is
stopped in its shadow step (mirrored requests only: no user ever gets its answer);
a v4 that is sound in its canary is promoted, then degrades (drift), and the post-promotion watch moves
champion back. Act 3, the feedback loop: feedback becomes a dataset, a retraining, the next challenger.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from rich.console import Console
from rich.table import Table

from benchmarks.common import TopicFollower
from events import RETRAINING_FINISHED, RetrainingFinished
from services.cli.devstack.demo_reads import alias_becomes, alias_of, rollout_view
from services.cli.devstack.demo_traffic import TrafficClient, wait_until_serving
from services.cli.devstack.narrative import story_only
from services.cli.devstack.sample_models import register_broken_version, register_wine_version, wine_data
from services.cli.stack_runner import WORKER_PORT_VARS, RunningService, StackRunner

console = Console()
log = logging.getLogger(__name__)


def act_hot_reload(runner: StackRunner, tracking_uri: str, model: str) -> tuple[bool, dict[str, Any]]:
    client = MlflowClient(tracking_uri=tracking_uri)
    console.rule("[bold]Act 1: hot reload")
    v1, acc1 = register_wine_version(tracking_uri, model, "weak")
    v2, acc2 = register_wine_version(tracking_uri, model, "medium")
    console.print(f"registered {model} v{v1} (held-out accuracy {acc1:.3f}) and v{v2} ({acc2:.3f})")
    client.set_registered_model_alias(model, "champion", v1)
    replicas = runner.start_hot_reload(2, {"FLYWHEEL_MODELS": model})
    # Counting feedback from the start (retraining off until act 3), so the loop never has to catch up.
    start_loop_workers(
        runner,
        model,
        {"FLYWHEEL_FEEDBACK_MIN_CORRECTIONS": "1000000000", "FLYWHEEL_FEEDBACK_MIN_SAMPLE": "1000000000"},
    )
    console.print(f"registry watcher, cache invalidation and {len(replicas)} gateway replicas are up")

    # The watcher's first poll publishes the existing champion; every replica preloads it.
    if len(wait_until_serving(replicas, model, v1)) < len(replicas):
        console.print("[red]replicas did not start serving v1")
        return False, {}
    console.print(f"both replicas serve v{v1}; starting the client")
    traffic = TrafficClient(replicas, model)
    traffic.start()
    time.sleep(2.0)
    moved_at = time.time()
    client.set_registered_model_alias(model, "champion", v2)
    console.print(f"moved alias champion -> v{v2} in MLflow while the client was sending requests")
    since = wait_until_serving(replicas, model, v2, timeout_s=30)
    time.sleep(2.0)
    traffic.stop()

    rows, errors = traffic.traffic.rows, traffic.traffic.errors
    switch_ms = {name: round((at - moved_at) * 1000, 1) for name, at in since.items()}
    late_old = [r for r in rows if r[2] == v1 and r[1] in since and r[0] > since[r[1]] + 0.05]
    table = Table(title="hot reload")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("requests sent", str(len(rows)))
    table.add_row("failed", str(len(errors)))
    for replica in replicas:
        table.add_row(
            f"{replica.name}: alias write -> serving v{v2} (incl. download + load)",
            f"{switch_ms.get(replica.name, 'never')} ms",
        )
    for version in (v1, v2):
        served = [r for r in rows if r[2] == version]
        if served:
            accuracy = sum(1 for r in served if r[3]) / len(served)
            table.add_row(f"v{version}: requests served / live accuracy", f"{len(served)} / {accuracy:.3f}")
    table.add_row("v1 answers sent after a replica switched", str(len(late_old)))
    console.print(table)
    ok = not errors and len(since) == len(replicas) and not late_old
    for error in errors[:5]:
        console.print(f"[red]error: {error}")
    return ok, {
        "requests": len(rows),
        "failed": len(errors),
        "switch_ms": switch_ms,
        "accuracy": {v1: acc1, v2: acc2},
        "replicas": replicas,
    }


DEMO_CANARY_ENV = {
    "FLYWHEEL_CANARY_STEP_INTERVAL_S": "3",
    "FLYWHEEL_CANARY_CHECK_INTERVAL_S": "1",
    "FLYWHEEL_CANARY_MIN_SAMPLES": "40",
    "FLYWHEEL_CANARY_MIN_FEEDBACK": "20",
    "FLYWHEEL_CANARY_MAX_FAILED_CHECKS": "3",
    "FLYWHEEL_CANARY_TICK_S": "0.5",
    # Every process of the demo shares two cores, so latency moves with the machine's load, not with the
    # model; the demo judges latency loosely (production defaults: x1.25 and +5 ms).
    "FLYWHEEL_CANARY_MAX_P95_LATENCY_RATIO": "3",
    "FLYWHEEL_CANARY_MAX_P95_LATENCY_DELTA_MS": "100",
    # The sequential analysis asks for evidence in proportion to its margins: sized for the demo's traffic
    # (a few thousand requests a rollout, half of them rated), it decides on 600 effective inferences and
    # 200 ratings per variant, within 5 points. A horizon reached on a thin challenger sample spends the
    # tests' alpha early: too small a horizon means inconclusive rollbacks.
    "FLYWHEEL_CANARY_SEQUENTIAL_HORIZON": "600",
    "FLYWHEEL_CANARY_SEQUENTIAL_FEEDBACK_HORIZON": "200",
    "FLYWHEEL_CANARY_MAX_ERROR_RATE_DELTA": "0.05",
    "FLYWHEEL_CANARY_WATCH_S": "30",
    "FLYWHEEL_CANARY_SHADOW_SAMPLES": "40",
    "FLYWHEEL_CANARY_SHADOW_SHARE": "0.5",  # a short demo: half the champion requests mirrored (default 10 %)
}


def _run_rollout(
    client: MlflowClient,
    canary: RunningService,
    replicas: list[RunningService],
    model: str,
    challenger: str,
    timeout_s: float = 180,
) -> tuple[dict[str, Any] | None, TrafficClient]:
    """Set `challenger`, send honest user traffic until the rollout ended; the final rollout view."""
    traffic = TrafficClient(replicas, model, users=True, feedback=True)
    traffic.start()
    started = time.time()
    client.set_registered_model_alias(model, "challenger", challenger)
    console.print(f"alias challenger -> v{challenger}; simulated users send traffic and honest feedback")
    seen: set[int] = set()
    view = None
    try:
        while time.time() - started < timeout_s:
            view = rollout_view(canary, model)
            if view and view["challenger_version"] == challenger:
                for d in view.get("decisions", []):
                    if d["seq"] not in seen:
                        seen.add(d["seq"])
                        holds = sum(
                            1 for x in view["decisions"] if x["decision"] == "hold" and x["seq"] <= d["seq"]
                        )
                        if d["decision"] == "hold" and holds % 10 != 1:
                            continue  # one hold line in ten: the analysis runs every second
                        console.print(
                            f"  t+{time.time() - started:5.1f}s  {d['decision']:<8} step {d['step']} "
                            f"weight {d['weight']:>5.1f}%  {d['reason']}"
                        )
                if not view["active"]:
                    break
            time.sleep(0.5)
    finally:
        traffic.stop()
    return view, traffic


def act_canary(runner: StackRunner, tracking_uri: str, model: str, replicas: list[RunningService]) -> bool:
    console.rule("[bold]Act 2: canary rollouts decided by measured traffic")
    client = MlflowClient(tracking_uri=tracking_uri)
    client.set_registered_model_alias(model, "champion", "1")
    wait_until_serving(replicas, model, "1")
    console.print("champion back at v1 (hot reload); starting the canary rollout service")
    canary = runner.start_canary(DEMO_CANARY_ENV)
    console.print(f"watch it live in the operator console: {canary.url}/console#/models/{model}")
    view, traffic = _run_rollout(client, canary, replicas, model, "2")
    promoted = bool(view and view["status"] == "promoted" and alias_becomes(client, model, "champion", "2"))
    for (variant, version), results in sorted(traffic.variants.items()):
        console.print(
            f"  {variant} v{version}: {len(results)} answers, live accuracy {sum(results) / len(results):.3f}"
        )
    console.print(f"  feedback sent: {traffic.feedback_sent}; errors: {len(traffic.traffic.errors)}")
    console.print("[green]v2 promoted" if promoted else f"[red]v2 not promoted: {view and view['status']}")

    v3, _ = register_broken_version(tracking_uri, model)
    console.print(f"registered v{v3}: deliberately broken (raises on samples with alcohol > 13)")
    wait_until_serving(replicas, model, "2")
    view, traffic = _run_rollout(client, canary, replicas, model, v3)
    decisions = (view or {}).get("decisions", [])
    max_weight = max((d["weight"] for d in decisions if d["decision"] != "rollback"), default=0)
    rolled_back = bool(
        view and view["status"] == "rolled_back" and alias_becomes(client, model, "champion", "2")
    )
    failed_v3 = len(traffic.traffic.errors)
    console.print(
        f"  user requests that failed while v{v3} was challenger: {failed_v3}; "
        f"highest challenger weight {max_weight}%"
    )
    stopped = rolled_back and max_weight == 0 and failed_v3 == 0
    console.print(
        f"[green]v{v3} stopped in the shadow step: it never answered a user"
        if stopped
        else f"[red]v{v3} not stopped in the shadow step: {view and view['status']}"
    )
    ok = promoted and stopped
    return ok and act_watch(client, canary, replicas, tracking_uri, model, previous="2")


def act_watch(
    client: MlflowClient,
    canary: RunningService,
    replicas: list[RunningService],
    tracking_uri: str,
    model: str,
    previous: str,
) -> bool:
    """A version sound in its canary degrades after promotion; the post-promotion watch reverts it."""
    flag = Path(tempfile.mkdtemp(prefix="flywheel-demo-")) / "degrade-now"
    version, _ = register_broken_version(tracking_uri, model, degrade_flag=str(flag))
    console.print(f"registered v{version}: sound now, fails on alcohol > 13 once {flag.name} exists (drift)")
    view, _ = _run_rollout(client, canary, replicas, model, version)
    if not (view and view["status"] == "promoted" and alias_becomes(client, model, "champion", version)):
        console.print(f"[red]v{version} not promoted: {view and view['status']}")
        return False
    console.print(f"[green]v{version} promoted[/]; now its inputs drift. Watched against v{previous}:")
    traffic = TrafficClient(replicas, model, users=True)
    traffic.start()
    flag.touch()
    started, reverted = time.time(), None
    try:
        while reverted is None and time.time() - started < 90:
            decisions = (rollout_view(canary, model) or {}).get("decisions", [])
            reverted = next((d for d in decisions if d["decision"] == "reverted"), None)
            time.sleep(0.5)
    finally:
        traffic.stop()
    back = reverted is not None and alias_becomes(client, model, "champion", previous)
    if reverted is not None:
        console.print(f"  t+{time.time() - started:5.1f}s  reverted  {reverted['reason']}")
    console.print(
        f"[green]v{version} reverted by the watch: champion is v{previous} again"
        if back
        else f"[red]v{version} not reverted"
    )
    return back


def held_out_accuracy(tracking_uri: str, model: str, version: str) -> float:
    """Accuracy of a registered version on the held-out wine samples (the same for every version)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    data = wine_data()
    predictions = mlflow.pyfunc.load_model(f"models:/{model}/{version}").predict(data.test_x)
    return float((predictions == data.test_y.to_numpy()).mean())


def start_loop_workers(runner: StackRunner, model: str, env: dict[str, str]) -> None:
    """(Re)start the feedback aggregation and retrainer workers with `env`."""
    for name in WORKER_PORT_VARS:
        previous = runner.services.pop(name, None)
        if previous is not None:
            previous.process.stop()
        runner.start_worker(name, {"FLYWHEEL_MODELS": model, **env})


def _print_retraining(event: Any, elapsed_s: float) -> None:
    """One RetrainingFinished: the outcome and every gate with its measured value."""
    if not isinstance(event, RetrainingFinished):
        return

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g}"

    gates = ", ".join(
        f"{'[green]' if g.passed else '[red]'}{g.name} {num(g.value)}/{num(g.threshold)}[/]"
        for g in event.gates
    )
    version = f" v{event.version}" if event.version else ""
    console.print(f"  t+{elapsed_s:5.1f}s  retraining finished: {event.outcome}{version} ({gates})")


def act_feedback_loop(
    runner: StackRunner, tracking_uri: str, model: str, replicas: list[RunningService], timeout_s: float = 420
) -> bool:
    console.rule("[bold]Act 3: feedback -> dataset -> retraining -> canary, without a human")
    client = MlflowClient(tracking_uri=tracking_uri)
    champion = alias_of(client, model, "champion") or "2"
    loop_env = {
        "FLYWHEEL_MODELS": model,
        "FLYWHEEL_FEEDBACK_MIN_CORRECTIONS": "25",
        # A retraining whose gates fail ends in a RetrainingFinished; the next trigger (new corrections
        # keep arriving) retries once this cooldown has passed.
        "FLYWHEEL_FEEDBACK_COOLDOWN_S": "30",
        "FLYWHEEL_FEEDBACK_TICK_S": "1",
        "FLYWHEEL_RETRAINER_MIN_ACCURACY": "0.8",
    }
    assert runner.endpoints is not None
    finished = TopicFollower(runner.endpoints, RETRAINING_FINISHED)
    # The aggregation worker has counted every rating since act 1 (with retraining switched off); it now
    # restarts with the demo's trigger, so the corrections users gave so far can request a retraining.
    start_loop_workers(runner, model, loop_env)
    console.print("feedback aggregation restarted with a trigger of 25 corrections; retrainer is up")
    canary = runner.services["canary-rollout"]
    traffic = TrafficClient(replicas, model, users=True, feedback=True)
    traffic.start()
    started = time.time()
    new_version: str | None = None
    promoted = False
    try:
        while time.time() - started < timeout_s:
            while (end := finished.wait(lambda e: getattr(e, "model", None) == model, 0)) is not None:
                _print_retraining(end[1], time.time() - started)
            challenger = alias_of(client, model, "challenger")
            if new_version is None and challenger not in (None, champion) and int(challenger) > 3:
                new_version = challenger
                console.print(
                    f"  t+{time.time() - started:5.1f}s  retrainer registered v{new_version} and set it as "
                    f"challenger after {traffic.feedback_sent} ratings (gates passed)"
                )
            if new_version is not None and alias_of(client, model, "champion") == new_version:
                promoted = True
                console.print(
                    f"  t+{time.time() - started:5.1f}s  canary promoted v{new_version} to champion"
                )
                break
            time.sleep(1.0)
    finally:
        traffic.stop()
        finished.close()
    view = rollout_view(canary, model)
    if view:
        console.print(
            f"  rollout {view['rollout_id']}: {view['status']}, {len(view.get('decisions', []))} decisions"
        )
    table = Table(title="held-out accuracy (wine test split)")
    table.add_column("version")
    table.add_column("accuracy", justify="right")
    gains = {}
    for version in ["1", champion, *([new_version] if new_version else [])]:
        gains[version] = held_out_accuracy(tracking_uri, model, version)
        table.add_row(f"v{version}", f"{gains[version]:.3f}")
    console.print(table)
    gained = new_version is not None and gains[new_version] > gains[champion]
    if not promoted:
        console.print("[red]the retrained version was not promoted in time")
    return promoted and gained


def run_demo(workdir: Path) -> int:
    """The three acts; the terminal shows their story, everything else goes to `workdir`/logs."""
    logs = workdir / "logs"
    with story_only(console, logs / "demo.log", "demo"):
        try:
            ok = _run_acts(workdir)
        except Exception as exc:  # a service that does not start, a server that goes away
            log.exception("demo stopped")
            console.print(f"[red]demo stopped: {str(exc).splitlines()[0]}")
            ok = False
    console.rule("[bold green]demo passed" if ok else "[bold red]demo FAILED")
    console.print(
        f"logs: {logs} (demo.log: this process, with MLflow's and the libraries' output; one file per "
        f"service); embedded servers' logs under {workdir}"
    )
    return 0 if ok else 1


def _run_acts(workdir: Path) -> bool:
    model = f"wine_demo_{int(time.time())}"
    with StackRunner(workdir) as runner:
        endpoints = runner.start_infrastructure()
        console.print(
            f"MLflow {endpoints.mlflow_tracking_uri}  Kafka {endpoints.kafka_bootstrap_servers} "
            f"({endpoints.kafka_broker}: {endpoints.kafka_reason})  Redis {endpoints.redis_url}"
        )
        ok, facts = act_hot_reload(runner, endpoints.mlflow_tracking_uri, model)
        if ok:
            ok = act_canary(runner, endpoints.mlflow_tracking_uri, model, facts["replicas"])
        if ok:
            ok = act_feedback_loop(runner, endpoints.mlflow_tracking_uri, model, facts["replicas"])
    return ok
