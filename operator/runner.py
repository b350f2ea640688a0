"""`alpaca operator`: run the kopf operator (all namespaces or a list), one active replica via peering.

    alpaca operator --settings /etc/alpaca-operator/settings.yaml
    alpaca operator --namespace team-a --namespace team-b --log-format json
    alpaca operator --standalone --kubeconfig ~/.kube/config      # development, no peering

The same wiring runs in-process for the tests and benchmarks (`OperatorThread`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf

from .controller import Controller
from .handlers import prime, register
from .kube import Cluster
from .metrics import Metrics
from .settings import OperatorSettings, SettingsError, load_settings

DEFAULT_PEERING = "alpaca-operator"
DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"
PREFIX = "alpaca.dev"


@dataclass
class Wiring:
    """Everything one operator instance is made of."""

    settings: OperatorSettings
    cluster: Cluster
    controller: Controller
    registry: kopf.OperatorRegistry
    kopf_settings: kopf.OperatorSettings
    metrics: Metrics | None = None
    namespaces: list[str] = field(default_factory=list)


def kopf_settings(settings: OperatorSettings, *, peering_name: str | None, standalone: bool, priority: int, clusterwide: bool) -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    # Idle watches can silently stop delivering events behind some load balancers: restart them.
    s.watching.inactivity_timeout = settings.watch_inactivity_timeout_seconds
    s.networking.request_timeout = settings.request_timeout_seconds
    # kopf's own bookkeeping goes to annotations: the status schema is strict and would prune it.
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration")
    s.posting.level = logging.WARNING
    s.execution.max_workers = settings.workers
    s.peering.standalone = standalone
    s.peering.priority = priority
    s.peering.clusterwide = clusterwide
    if peering_name and not standalone:
        s.peering.name = peering_name
        # Without the peering CRD two replicas would both act: refuse to run instead.
        s.peering.mandatory = True
    return s


def wire(
    settings: OperatorSettings,
    *,
    kubeconfig: str | None = None,
    namespaces: list[str] | None = None,
    standalone: bool = False,
    peering_name: str | None = DEFAULT_PEERING,
    priority: int = 0,
    metrics: Metrics | None = None,
) -> Wiring:
    cluster = Cluster.from_kubeconfig(kubeconfig, timeout=settings.request_timeout_seconds, pool_size=settings.workers * 2)
    controller = Controller(settings, cluster, metrics)
    registry = kopf.OperatorRegistry()
    register(registry, controller)
    chosen = list(namespaces if namespaces is not None else settings.namespaces)

    @kopf.on.startup(registry=registry)
    def start_workers(**_: Any) -> None:
        if peering_name and not standalone:
            ensure_peering(cluster, peering_name, chosen)
        prime(controller, chosen)
        controller.start()

    @kopf.on.cleanup(registry=registry)
    def stop_workers(**_: Any) -> None:
        controller.stop()

    if kubeconfig:
        configuration = cluster.api_client.configuration

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            # The same credentials as the operator's own client, from the given kubeconfig.
            keys = configuration.api_key or {}
            token = keys.get("BearerToken") or keys.get("authorization") or ""
            return kopf.ConnectionInfo(
                server=configuration.host,
                ca_path=configuration.ssl_ca_cert,
                insecure=not configuration.verify_ssl,
                scheme="Bearer" if token else None,
                token=token.removeprefix("Bearer ").strip() or None,
                certificate_path=configuration.cert_file,
                private_key_path=configuration.key_file,
            )

    return Wiring(
        settings=settings,
        cluster=cluster,
        controller=controller,
        registry=registry,
        kopf_settings=kopf_settings(settings, peering_name=peering_name, standalone=standalone, priority=priority, clusterwide=not chosen),
        metrics=metrics,
        namespaces=chosen,
    )


def ensure_peering(cluster: Cluster, name: str, namespaces: list[str]) -> None:
    """The peering object(s) the replicas meet in: cluster-wide, or one per watched namespace."""
    if not namespaces:
        cluster.create({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}})
    for namespace in namespaces:
        cluster.create({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name, "namespace": namespace}})


def operator_kwargs(wiring: Wiring, *, liveness: str | None) -> dict[str, Any]:
    return {
        "registry": wiring.registry,
        "settings": wiring.kopf_settings,
        "standalone": wiring.kopf_settings.peering.standalone,
        "priority": wiring.kopf_settings.peering.priority,
        "peering_name": None if wiring.kopf_settings.peering.standalone else wiring.kopf_settings.peering.name,
        "clusterwide": not wiring.namespaces,
        "namespaces": wiring.namespaces,
        "liveness_endpoint": liveness,
    }


class OperatorThread:
    """The operator in a thread of this process, for tests and benchmarks."""

    def __init__(self, wiring: Wiring, *, liveness: str | None = None) -> None:
        self.wiring = wiring
        self._liveness = liveness
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alpaca-operator", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(kopf.operator(**operator_kwargs(self.wiring, liveness=self._liveness), stop_flag=self._stop, ready_flag=self._ready))
        except BaseException as exc:  # noqa: BLE001 - surfaced to the caller through .error
            self.error = exc
            self._ready.set()

    def start(self, timeout: float = 60.0) -> OperatorThread:
        self._thread.start()
        if not self._ready.wait(timeout) or self.error is not None:
            raise RuntimeError(f"operator did not start: {self.error!r}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.wiring.controller.stop()
        self.wiring.cluster.close()

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", metavar="FILE", help="operator settings (YAML or JSON); defaults apply without it")
    parser.add_argument("--namespace", "-n", action="append", dest="namespaces", metavar="NS",
                        help="watch this namespace (repeatable); default: the settings' list, else all namespaces")
    parser.add_argument("--kubeconfig", help="kubeconfig to use; default: in-cluster, then $KUBECONFIG")
    parser.add_argument("--standalone", action="store_true", help="no peering: only for a single replica")
    parser.add_argument("--peering", default=DEFAULT_PEERING, help="peering object name (one active replica among those sharing it)")
    parser.add_argument("--priority", type=int, default=0, help="peering priority: the highest active replica works")
    parser.add_argument("--liveness", default=DEFAULT_LIVENESS, help="liveness endpoint URL, or 'none'")
    parser.add_argument("--log-format", choices=["text", "json"], help="overrides the settings' log format")
    parser.add_argument("--verbose", action="store_true", help="debug logs")


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.settings)
    except SettingsError as exc:
        print(exc)
        return 2
    log_format = args.log_format or settings.log_format
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL)
    metrics = Metrics() if settings.metrics_port else None
    if metrics is not None:
        metrics.serve(settings.metrics_port)
    wiring = wire(
        settings, kubeconfig=args.kubeconfig, namespaces=args.namespaces, standalone=args.standalone,
        peering_name=args.peering, priority=args.priority, metrics=metrics,
    )
    liveness = None if args.liveness == "none" else args.liveness
    kopf.run(**operator_kwargs(wiring, liveness=liveness))
    return 0
