"""`alpaca operator`: run the operator (all namespaces or a list); one active replica via a Lease.

    alpaca operator --settings /etc/alpaca-operator/settings.yaml --lease-namespace alpaca-system
    alpaca operator --namespace team-a --namespace team-b --log-format json
    alpaca operator --standalone --kubeconfig ~/.kube/config      # development: one replica, no lease

kopf only watches (it runs standalone, posts no Events and keeps no state on objects): every write
comes from the controller, through the cluster client's gate, which opens only while this replica
holds the coordination.k8s.io Lease (operator/leader.py). The same wiring runs in-process for the
tests and benchmarks (`OperatorThread`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from .controller import Controller
from .handlers import prime, register
from .kube import Cluster
from .leader import LeaderElector, LeaseClient, Timings
from .metrics import Metrics
from .settings import OperatorSettings, SettingsError, load_settings

DEFAULT_LEASE = "alpaca-operator"
DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"
PREFIX = "alpaca.dev"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


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
    elector: LeaderElector | None = None


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    # Idle watches can silently stop delivering events behind some load balancers: restart them.
    s.watching.inactivity_timeout = settings.watch_inactivity_timeout_seconds
    s.networking.request_timeout = settings.request_timeout_seconds
    # Event handlers keep no progress, but should kopf ever store some, it goes to annotations:
    # the status schema is strict and would prune it.
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration")
    # kopf would post its own log lines as Events from every replica: the followers too.
    s.posting.enabled = False
    s.execution.max_workers = settings.workers
    # One writer is chosen by the Lease, not by kopf's peering: kopf's watchers never write.
    s.peering.standalone = True
    return s


def default_identity() -> str:
    """The pod's name when the Deployment passes it, else host name plus a random suffix (as client-go)."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def default_lease_namespace() -> str | None:
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def wire(
    settings: OperatorSettings,
    *,
    kubeconfig: str | None = None,
    namespaces: list[str] | None = None,
    standalone: bool = False,
    lease_name: str = DEFAULT_LEASE,
    lease_namespace: str | None = None,
    identity: str | None = None,
    metrics: Metrics | None = None,
) -> Wiring:
    """`standalone`: no election, this replica always writes (one replica only, or a test)."""
    cluster = Cluster.from_kubeconfig(kubeconfig, timeout=settings.request_timeout_seconds, pool_size=settings.workers * 2)
    controller = Controller(settings, cluster, metrics)
    registry = kopf.OperatorRegistry()
    register(registry, controller)
    chosen = list(namespaces if namespaces is not None else settings.namespaces)
    elector = None
    if not standalone:
        where = lease_namespace or default_lease_namespace()
        if not where:
            raise SettingsError("leader election needs the Lease's namespace: --lease-namespace or POD_NAMESPACE (or --standalone)")
        election = settings.leader_election
        timings = Timings(election.lease_duration_seconds, election.renew_deadline_seconds, election.retry_period_seconds)
        elector = LeaderElector(
            LeaseClient(cluster, where, lease_name), identity or default_identity(), timings,
            on_started=controller.started_leading,
        )
        cluster.gate = elector.is_leader

    @kopf.on.startup(registry=registry)
    def start_workers(**_: Any) -> None:
        prime(controller, chosen)
        controller.start()
        if elector is not None:
            elector.start()

    @kopf.on.cleanup(registry=registry)
    def stop_workers(**_: Any) -> None:
        if elector is not None:
            elector.stop()
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
    else:
        # A registry of our own has no login handlers: in a pod, kopf reads the ServiceAccount's
        # credentials (in-cluster config, then $KUBECONFIG) the way the kubernetes client does.
        kopf.on.login(registry=registry)(kopf.login_via_client)

    return Wiring(
        settings=settings,
        cluster=cluster,
        controller=controller,
        registry=registry,
        kopf_settings=kopf_settings(settings),
        metrics=metrics,
        namespaces=chosen,
        elector=elector,
    )


def operator_kwargs(wiring: Wiring, *, liveness: str | None) -> dict[str, Any]:
    return {
        "registry": wiring.registry,
        "settings": wiring.kopf_settings,
        "standalone": True,
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
        if self.wiring.elector is not None:
            self.wiring.elector.stop()
        self.wiring.controller.stop()
        self.wiring.cluster.close()

    def kill(self) -> None:
        """Stop as a crashed replica would: no more requests at all, the lease left to expire."""
        if self.wiring.elector is not None:
            self.wiring.elector.stop(release=False)
        self.wiring.cluster.gate = lambda: False
        self._stop.set()
        self._thread.join(30)
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
    parser.add_argument("--standalone", action="store_true", help="no leader election: only for a single replica")
    parser.add_argument("--lease", default=DEFAULT_LEASE, help="name of the coordination.k8s.io Lease the replicas elect the writer with")
    parser.add_argument("--lease-namespace", help="namespace of the Lease; default: $POD_NAMESPACE, else the pod's own namespace")
    parser.add_argument("--identity", help="this replica's name in the Lease; default: $POD_NAME, else host name and a random suffix")
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
    try:
        wiring = wire(
            settings, kubeconfig=args.kubeconfig, namespaces=args.namespaces, standalone=args.standalone,
            lease_name=args.lease, lease_namespace=args.lease_namespace, identity=args.identity, metrics=metrics,
        )
    except SettingsError as exc:
        print(exc)
        return 2
    liveness = None if args.liveness == "none" else args.liveness
    kopf.run(**operator_kwargs(wiring, liveness=liveness))
    return 0
