"""A real Kubernetes control plane without nodes, for tests: Debian's etcd and a
``kube-apiserver`` built from the Go module proxy (deploy/kubernetes/apiserver/build.sh, once
per machine, cached). RBAC is on; an admin token (group ``system:masters``) sets things up and
service-account tokens come from the server's own TokenRequest API. No kubelet, scheduler or
controller-manager runs: Deployments are stored and scaled, their pods are never created.

Both processes die with the thread that started them (``PR_SET_PDEATHSIG``), and
:meth:`KubeCluster.stop` (the fixture's teardown) terminates them and waits.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

# The broker launcher's own helpers: the same free ports and the same die-with-parent rule.
from fogverse.broker.launcher import _die_with_parent, _free_ports

__all__ = ["BUILD_SCRIPT", "KubeCluster", "build_apiserver"]

ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = ROOT / "deploy" / "kubernetes" / "apiserver" / "build.sh"
_HOST = "127.0.0.1"


def build_apiserver(timeout: float = 1800.0) -> Path:
    """The cached ``kube-apiserver``; builds it first if needed (minutes), or waits for a build
    another process (``make test``'s background step) is running."""
    done = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{BUILD_SCRIPT} failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
        )
    return Path(done.stdout.strip().splitlines()[-1])


class KubeCluster:
    """``with KubeCluster(binary) as cluster: cluster.api_client(token)``."""

    def __init__(self, apiserver: Path, etcd: str | None = None) -> None:
        self.apiserver = apiserver
        self.etcd = etcd or shutil.which("etcd") or "/usr/bin/etcd"
        self.admin_token = secrets.token_hex(16)
        self.dir = Path(tempfile.mkdtemp(prefix="fogverse-kube-"))
        self._procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self.port = 0

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> KubeCluster:
        deadline = time.monotonic() + timeout
        etcd_client, etcd_peer, self.port = _free_ports(3)
        self._spawn(
            "etcd",
            [
                self.etcd,
                "--name=fogverse-test",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls=http://{_HOST}:{etcd_client}",
                f"--advertise-client-urls=http://{_HOST}:{etcd_client}",
                f"--listen-peer-urls=http://{_HOST}:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://{_HOST}:{etcd_peer}",
                f"--initial-cluster=fogverse-test=http://{_HOST}:{etcd_peer}",
            ],
        )
        self._wait(deadline, f"http://{_HOST}:{etcd_client}/health", "etcd", token=None)
        key = self.dir / "service-account.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
        tokens = self.dir / "tokens.csv"
        tokens.write_text(f'{self.admin_token},fogverse-admin,uid-admin,"system:masters"\n')
        self._spawn(
            "kube-apiserver",
            [
                str(self.apiserver),
                f"--etcd-servers=http://{_HOST}:{etcd_client}",
                f"--bind-address={_HOST}",
                f"--advertise-address={_HOST}",
                f"--secure-port={self.port}",
                f"--cert-dir={self.dir / 'certs'}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={key}",
                f"--service-account-signing-key-file={key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--profiling=false",
            ],
        )
        self._wait(deadline, f"{self.url}/readyz", "kube-apiserver", token=self.admin_token)
        return self

    def stop(self) -> None:
        """SIGTERM both (the API server first), SIGKILL whatever is still up after 10 s."""
        for _, proc, log in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            log.close()
        self._procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> KubeCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        return [proc.pid for _, proc, _ in self._procs]

    # ---- clients -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://{_HOST}:{self.port}"

    @property
    def ca_cert(self) -> Path:
        """The API server's self-signed serving certificate (it names 127.0.0.1)."""
        return self.dir / "certs" / "apiserver.crt"

    def api_client(self, token: str | None = None) -> Any:
        """An official-client ``ApiClient`` authenticated by ``token`` (default: admin)."""
        from kubernetes import client

        conf = client.Configuration()
        conf.host = self.url
        conf.ssl_ca_cert = str(self.ca_cert)
        conf.api_key = {"authorization": f"Bearer {token or self.admin_token}"}
        return client.ApiClient(conf)

    def kubeconfig(self, token: str, path: Path) -> Path:
        """A kubeconfig file for ``token``: how a process outside the cluster signs in."""
        import yaml

        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_cert)},
                }
            ],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    # ---- internals -----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115  (closed in stop())
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent(),
        )
        self._procs.append((name, proc, log))

    def _wait(self, deadline: float, url: str, name: str, token: str | None) -> None:
        proc = self._procs[-1][1]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # readiness only; clients verify the certificate
        request = urllib.request.Request(url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self._tail(name)}")
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as reply:
                    if reply.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready in time ({last}):\n{self._tail(name)}")

    def _tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / f"{name}.log").read_text(errors="replace")[-4000:]
        return ""
