"""A real Kubernetes API server (etcd + kube-apiserver, no kubelet) for integration tests.

It is what controller-runtime's envtest does for Go, in Python: the API server validates,
defaults, stores and authorizes exactly like a cluster's, so CRD schemas, status subresources,
RBAC rules and kopf handlers meet the real thing. There is no controller-manager, scheduler or
kubelet, so nothing acts on what is stored: Pods never run, Jobs never spawn Pods, ownerReference
garbage collection never happens, deleted namespaces stay Terminating, and no namespace gets a
``default`` ServiceAccount. Tests create what they need and use fresh namespace names.

Usage::

    with ControlPlane() as cp:
        core = kubernetes.client.CoreV1Api(cp.api_client())
        core.list_namespace()

The binaries come from ``KUBEBUILDER_ASSETS`` (a folder with ``etcd`` and ``kube-apiserver``)
or from ``hack/control-plane.sh``, which builds them once from pinned Go modules.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import kubernetes.client
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REQUIRED_BINARIES: tuple[str, ...] = ("etcd", "kube-apiserver")

# Where hack/control-plane.sh sits when this package is used from a checkout
# (operator/testing/controlplane.py -> repository root).
_REPO_ROOT = Path(__file__).resolve().parents[2]
_BUILD_SCRIPT = _REPO_ROOT / "hack" / "control-plane.sh"

# The in-cluster issuer name that real clusters use, so tokens look like production ones.
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

_ADMIN_USER = "alpaca-test-admin"


class ControlPlaneError(RuntimeError):
    """The control plane could not be found, built or started."""


def _free_port() -> int:
    # Asking the kernel for port 0 gives a port nobody holds right now; the small race until
    # the server binds it is acceptable for tests and far better than fixed ports, which
    # collide with parallel runs and leftovers.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _has_binaries(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in REQUIRED_BINARIES)


def find_assets(assets_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder holding etcd and kube-apiserver, building them when needed.

    An explicit folder wins, then ``KUBEBUILDER_ASSETS``, then ``hack/control-plane.sh``
    (whose progress goes to our stderr, as a cold build takes many minutes).
    """
    if assets_dir is not None:
        folder = Path(assets_dir)
        if not _has_binaries(folder):
            raise ControlPlaneError(f"{folder} does not hold {' and '.join(REQUIRED_BINARIES)}")
        return folder
    env_assets = os.environ.get("KUBEBUILDER_ASSETS")
    if env_assets and _has_binaries(Path(env_assets)):
        return Path(env_assets)
    if not _BUILD_SCRIPT.is_file():
        raise ControlPlaneError(
            "no control-plane binaries: set KUBEBUILDER_ASSETS to a folder with etcd and "
            f"kube-apiserver (hack/control-plane.sh is not at {_BUILD_SCRIPT})"
        )
    result = subprocess.run(
        ["bash", str(_BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise ControlPlaneError(f"{_BUILD_SCRIPT} failed with exit code {result.returncode}")
    folder = Path(lines[-1])
    if not _has_binaries(folder):
        raise ControlPlaneError(f"{_BUILD_SCRIPT} printed {folder}, which lacks the binaries")
    return folder


def _parent_death_signal_setter() -> Callable[[], None] | None:
    # If the test process dies without calling stop() (SIGKILL, a crashed interpreter), the
    # kernel then kills etcd and kube-apiserver, so they do not outlive it holding ports.
    # SIGKILL, not SIGTERM: both would get it at once, and a kube-apiserver shutting down
    # gracefully hangs for minutes retrying the etcd that just vanished; the data is
    # throw-away anyway. libc is loaded here, in the parent: the child between fork and exec
    # must not import anything. Caveat: Linux sends the signal when the *thread* that started
    # the child exits, so start a ControlPlane from a thread that lives as long as it does.
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_signal() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))

    return set_signal


_SET_PARENT_DEATH_SIGNAL = _parent_death_signal_setter()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        all_lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    # The fatal line is often followed by pages of shutdown noise: show klog's error and
    # fatal lines (E/F prefix) first, then the plain tail.
    errors = [line for line in all_lines if line[:1] in ("E", "F") and line[1:5].isdigit()]
    parts = []
    if errors:
        parts.append("errors:\n" + "\n".join(errors[-10:]))
    parts.append("tail:\n" + "\n".join(all_lines[-lines:]))
    return "\n".join(parts)


class ControlPlane:
    """etcd and kube-apiserver on 127.0.0.1, free ports, a throw-away temp dir.

    Authentication is a static admin bearer token (group ``system:masters``) plus
    ServiceAccount tokens; authorization is RBAC, so least-privilege rules can be tested.
    """

    def __init__(
        self,
        assets_dir: str | os.PathLike[str] | None = None,
        *,
        start_timeout: float = 120.0,
        extra_apiserver_args: list[str] | None = None,
    ) -> None:
        self._assets_arg = assets_dir
        self.start_timeout = start_timeout
        self.extra_apiserver_args = list(extra_apiserver_args or [])
        self.assets_dir: Path | None = None
        self.temp_dir: Path | None = None
        self.server: str = ""
        self.token: str = ""
        self.ca_file: str = ""
        self.kubeconfig: str = ""
        self.etcd_url: str = ""
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._apiserver is not None and self._apiserver.poll() is None

    def start(self) -> None:
        if self._apiserver is not None:
            raise ControlPlaneError("control plane already started")
        self.assets_dir = find_assets(self._assets_arg)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="alpaca-controlplane-"))
        try:
            self._start_etcd()
            self._start_apiserver()
            self._wait_ready()
            self.kubeconfig = str(
                self.kubeconfig_for_token(self.token, self.temp_dir / "kubeconfig")
            )
        except BaseException:
            # A half-started control plane must not leak processes or its temp dir.
            self.stop()
            raise

    def stop(self) -> None:
        # The API server first: stopped after etcd it would spend its grace period
        # retrying a vanished storage backend.
        for proc in (self._apiserver, self._etcd):
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        self._apiserver = None
        self._etcd = None
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    # -- processes ----------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        assert self.temp_dir is not None
        log = open(self.temp_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.temp_dir,
            preexec_fn=_SET_PARENT_DEATH_SIGNAL,  # noqa: PLW1509 - calls prctl only
        )

    def _start_etcd(self) -> None:
        assert self.temp_dir is not None and self.assets_dir is not None
        client_port, peer_port = _free_port(), _free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._etcd = self._spawn(
            "etcd",
            [
                str(self.assets_dir / "etcd"),
                f"--data-dir={self.temp_dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                # The default peer port 2380 would collide with a second control plane.
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                "--name=alpaca-test",
                f"--initial-cluster=alpaca-test={peer_url}",
                # Throw-away data: fsync only slows every test write down.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

    def _write_auth_files(self) -> tuple[Path, Path, Path]:
        assert self.temp_dir is not None
        self.token = secrets.token_urlsafe(32)
        tokens = self.temp_dir / "tokens.csv"
        # token,user,uid,"groups": system:masters bypasses RBAC, as cluster-admin does.
        tokens.write_text(f'{self.token},{_ADMIN_USER},{_ADMIN_USER},"system:masters"\n')
        tokens.chmod(0o600)

        # The key pair that signs and verifies ServiceAccount tokens (TokenRequest).
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signing_key = self.temp_dir / "sa.key"
        signing_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        signing_key.chmod(0o600)
        public_key = self.temp_dir / "sa.pub"
        public_key.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return tokens, signing_key, public_key

    def _start_apiserver(self) -> None:
        assert self.temp_dir is not None and self.assets_dir is not None
        tokens, signing_key, public_key = self._write_auth_files()
        cert_dir = self.temp_dir / "certs"
        port = _free_port()
        self.server = f"https://127.0.0.1:{port}"
        # With --cert-dir the API server makes a self-signed CA and a serving certificate
        # for 127.0.0.1/localhost; apiserver.crt holds both, so it serves as our CA bundle.
        self.ca_file = str(cert_dir / "apiserver.crt")
        self._apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.assets_dir / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={cert_dir}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                "--anonymous-auth=false",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={public_key}",
                f"--service-account-signing-key-file={signing_key}",
                # Required, and must not overlap anything real; nothing routes it here.
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                # Keeping the `kubernetes` Service's endpoints up to date is pointless without
                # pods, and since 1.37 the reconciler refuses a loopback --advertise-address.
                "--endpoint-reconciler-type=none",
                # Without a controller-manager no namespace gets a `default` ServiceAccount,
                # and this plugin would reject every Pod that names none (as envtest does).
                "--disable-admission-plugins=ServiceAccount",
                *self.extra_apiserver_args,
            ],
        )

    def _wait_ready(self) -> None:
        assert self.temp_dir is not None and self._apiserver is not None and self._etcd is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer yet"
        insecure = ssl.create_default_context()
        # The serving certificate appears only once the server starts; until then any
        # answer is only a liveness probe, so skip verification for the wait alone.
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        while time.monotonic() < deadline:
            for name, proc in (("etcd", self._etcd), ("kube-apiserver", self._apiserver)):
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with code {proc.returncode} during start-up; "
                        f"last lines of its log:\n{_tail(self.temp_dir / f'{name}.log')}"
                    )
            try:
                with urllib.request.urlopen(request, context=insecure, timeout=5) as response:
                    body = response.read().decode(errors="replace")
                    if response.status == 200 and body.strip() == "ok":
                        self._check_ca()
                        return
                    last_error = f"HTTP {response.status}: {body[:200]}"
            except urllib.error.HTTPError as err:
                # 500 with the list of failing checks while post-start hooks (RBAC bootstrap
                # roles, priority-and-fairness config) are still running.
                last_error = f"HTTP {err.code}: {err.read().decode(errors='replace')[-500:]}"
            except (urllib.error.URLError, OSError) as err:
                last_error = str(err)
            time.sleep(0.25)
        raise ControlPlaneError(
            f"kube-apiserver not ready at {self.server}/readyz after {self.start_timeout:.0f}s "
            f"({last_error}); last lines of its log:\n"
            f"{_tail(self.temp_dir / 'kube-apiserver.log')}\n"
            f"etcd log:\n{_tail(self.temp_dir / 'etcd.log', 10)}"
        )

    def _check_ca(self) -> None:
        # Prove the CA bundle really verifies the server, so clients never need to skip TLS.
        context = ssl.create_default_context(cafile=self.ca_file)
        request = urllib.request.Request(
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, context=context, timeout=5):
            pass

    # -- clients ------------------------------------------------------------------------

    def client_configuration(self, token: str | None = None) -> kubernetes.client.Configuration:
        """A client configuration for the admin (default) or for the given bearer token."""
        configuration = kubernetes.client.Configuration()
        configuration.host = self.server
        configuration.api_key = {"authorization": token or self.token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        configuration.ssl_ca_cert = self.ca_file
        configuration.verify_ssl = True
        return configuration

    def api_client(self, token: str | None = None) -> kubernetes.client.ApiClient:
        """An ApiClient acting as the admin (``system:masters``), or as ``token``'s owner."""
        return kubernetes.client.ApiClient(self.client_configuration(token))

    def token_for_service_account(
        self,
        namespace: str,
        name: str,
        *,
        expiration_seconds: int = 3600,
        audiences: list[str] | None = None,
    ) -> str:
        """Mint a token for an existing ServiceAccount through the TokenRequest API.

        The ServiceAccount must exist (nothing creates ``default`` here); the token's
        requests are authorized by RBAC like a pod's would be.
        """
        # An empty audience list means "the API server's own audience", which is what an
        # in-cluster client presents.
        request = kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(
                audiences=audiences or [], expiration_seconds=expiration_seconds
            )
        )
        with self.api_client() as client:
            response = kubernetes.client.CoreV1Api(client).create_namespaced_service_account_token(
                name, namespace, request
            )
        if response.status is None or not response.status.token:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{name} returned no token")
        return str(response.status.token)

    def kubeconfig_for_token(self, token: str, path: str | os.PathLike[str]) -> Path:
        """Write a kubeconfig that talks to this control plane with ``token``; return its path.

        The CA is embedded, so the file keeps working wherever it is copied (kopf, kubectl,
        a subprocess with another working directory).
        """
        ca_data = base64.b64encode(Path(self.ca_file).read_bytes()).decode()
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "alpaca-test",
                    "cluster": {"server": self.server, "certificate-authority-data": ca_data},
                }
            ],
            "users": [{"name": "alpaca-test-user", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "alpaca-test",
                    "context": {
                        "cluster": "alpaca-test",
                        "user": "alpaca-test-user",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "alpaca-test",
        }
        target = Path(path)
        # JSON is valid YAML, so kubectl and every client library read it as a kubeconfig.
        target.write_text(json.dumps(config, indent=2))
        target.chmod(0o600)
        return target
