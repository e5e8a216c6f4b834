"""The shared secret and TLS, on a cluster started by the ``runtime`` command."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time

import cloudpickle
import numpy as np
import pytest
from conftest import runtime_cmd

import runtime as rt
from runtime.api.context import current_runtime
from runtime.client.client import ClusterClient
from runtime.comm import auth, codec
from runtime.comm.serialize import dumps_function

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


@rt.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


@pytest.fixture
def security_env(monkeypatch):
    """Set this process's security settings for one test; they are read once, so reread them."""
    for var in ("SECRET", "SECRET_FILE", "TLS_CERT", "TLS_KEY", "TLS_CA"):
        monkeypatch.delenv(f"RUNTIME_{var}", raising=False)

    def use(**settings: str) -> None:
        for var, value in settings.items():
            monkeypatch.setenv(f"RUNTIME_{var.upper()}", value)
        auth.default_security.cache_clear()

    auth.default_security.cache_clear()
    yield use
    monkeypatch.undo()
    auth.default_security.cache_clear()


def _secret_file(tmp_path, text: str) -> str:
    path = tmp_path / f"secret-{text}"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def _start_head(run_dir: str, *flags: str) -> str:
    started = runtime_cmd("start", "--head", "--port", "0", "--num-workers", "1", *flags, run_dir=run_dir)
    assert started.returncode == 0, started.stderr
    with open(os.path.join(run_dir, "address")) as f:
        return f.read().strip()


def _log(run_dir: str) -> str:
    with open(os.path.join(run_dir, "logs", "scheduler.log")) as f:
        return f.read()


def test_listening_beyond_loopback_needs_a_secret(tmp_path, security_env):
    result = runtime_cmd("start", "--head", "--host", "0.0.0.0", "--port", "0", run_dir=str(tmp_path))
    assert result.returncode == 1 and not os.path.exists(tmp_path / "scheduler.pid")
    assert "beyond the loopback, needs a shared secret" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    missing = runtime_cmd("start", "--head", "--secret-file", str(tmp_path / "nope"), run_dir=str(tmp_path))
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_a_wrong_or_missing_secret_is_refused_and_nothing_it_sent_is_acted_on(tmp_path, security_env):
    run_dir = str(tmp_path / "head")
    right = _secret_file(tmp_path, "right")
    address = _start_head(run_dir, "--secret-file", right)
    try:
        # The right secret: tasks run, values move.
        security_env(secret_file=right)
        client = ClusterClient(address)
        try:
            client.wait_for_workers(1)
            assert client.submit(dumps_function(inc), "inc", (1,), {}).result(timeout=60) == 2
            assert float(client.get([client.put(np.ones(10))])[0].sum()) == 10.0
            clients_before = client.request("status")["clients"]
        finally:
            client.close()
        with rt.config.set({"client.attach-store": False}):  # as on a host with no node: the agents' servers
            client = ClusterClient(address)
            try:
                big = client.put(np.ones(200_000))  # 1.6 MB, sent to the node's agent
                assert float(client.get([big])[0].sum()) == 200_000.0 and client.node == ""
                made = client.submit(dumps_function(np.ones), "ones", (300_000,), {})
                assert float(made.result(timeout=60).sum()) == 300_000.0  # read from the agent
            finally:
                client.close()
        rt.init(address=address)  # actors: their call servers check the secret too
        try:
            counter = Counter.remote()
            assert rt.get([counter.incr.remote() for _ in range(3)], timeout=60) == [1, 2, 3]
        finally:
            rt.shutdown()
        # A wrong secret: refused before anything is read.
        security_env(secret_file=_secret_file(tmp_path, "wrong"))
        with pytest.raises(auth.AuthenticationError, match="refused our secret"):
            ClusterClient(address, timeout=5)
        # No secret at all: a client's registration and a graph go unread.
        host, port = address[len("tcp://") :].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"\x00" * 64)  # as much as an answer to the challenge, but no answer
            while sock.recv(4096):
                pass
        assert _log(run_dir).count("refused connection from") >= 2
        assert "wrong secret" in _log(run_dir)
        # The CLI needs the secret too, and says so in one line.
        security_env()
        os.environ.pop("RUNTIME_SECRET_FILE", None)
        refused = runtime_cmd("status", "--timeout", "5", run_dir=run_dir)
        assert refused.returncode == 1 and "requires a shared secret" in refused.stderr
        status = runtime_cmd("status", "--secret-file", right, run_dir=run_dir)
        assert status.returncode == 0 and "workers: 1" in status.stdout
        security_env(secret_file=right)
        client = ClusterClient(address)
        try:  # none of the refused peers became a client
            assert client.request("status")["clients"] == clients_before
        finally:
            client.close()
    finally:
        assert runtime_cmd("stop", "--secret-file", right, run_dir=run_dir).returncode == 0


def test_a_cluster_that_requires_a_secret_says_so_to_a_client_without_one(tmp_path, security_env):
    run_dir = str(tmp_path / "head")
    secret = _secret_file(tmp_path, "right")
    address = _start_head(run_dir, "--secret-file", secret)
    try:
        said = f"the cluster at {address} requires a shared secret; set RUNTIME_SECRET or RUNTIME_SECRET_FILE"
        with pytest.raises(codec.SecretRequiredError, match=re.escape(said)):
            rt.init(address=address)  # at once, not at the first get
        assert not rt.is_initialized()
        with pytest.raises(codec.SecretRequiredError, match=re.escape(said)):
            ClusterClient(address, timeout=5)
        status = runtime_cmd("status", "--timeout", "5", run_dir=run_dir)
        assert status.returncode == 1
        assert status.stderr.strip().splitlines() == [
            f"runtime status: the cluster at {address} requires a shared secret; give --secret-file FILE "
            "or set RUNTIME_SECRET or RUNTIME_SECRET_FILE (see docs/deployment.md)"
        ]
    finally:
        assert runtime_cmd("stop", "--secret-file", secret, run_dir=run_dir).returncode == 0


def test_a_client_with_a_secret_the_cluster_does_not_use_is_told_so(tmp_path, security_env):
    with rt.LocalCluster(n_workers=1) as cluster:  # no secret
        security_env(secret="unneeded")
        start = time.monotonic()
        with pytest.raises(auth.AuthenticationError, match="it runs without a shared secret and this process has one"):
            ClusterClient(cluster.scheduler_address, timeout=2)
        assert time.monotonic() - start < 10
        status = runtime_cmd("status", "--address", cluster.scheduler_address, "--timeout", "2", run_dir=str(tmp_path))
        assert status.returncode == 1 and len(status.stderr.strip().splitlines()) == 1
        assert "it runs without a shared secret and this process has one" in status.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
def test_tls_with_a_cluster_ca(tmp_path, security_env):
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ca_key, ca, key, csr, cert = (str(tmp_path / n) for n in ("ca.key", "ca.pem", "host.key", "host.csr", "host.pem"))
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1",
            "-subj", "/CN=runtime-test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "1")
    secret = _secret_file(tmp_path, "tls")
    run_dir = str(tmp_path / "head")
    flags = ("--secret-file", secret, "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca)
    address = _start_head(run_dir, *flags)
    try:
        # A second node joins; values cross between the two agents over TLS.
        joined = runtime_cmd("start", "--address", address, "--num-workers", "1", *flags, run_dir=run_dir + "-b")
        assert joined.returncode == 0, joined.stderr
        security_env(secret_file=secret, tls_cert=cert, tls_key=key, tls_ca=ca)
        client = ClusterClient(address)
        try:
            client.wait_for_workers(2)
            assert client.submit(dumps_function(inc), "inc", (41,), {}).result(timeout=60) == 42
            ref = client.put(np.ones(1_000_000))  # into one node's store
            sums = [
                client.submit(dumps_function(np.sum), "sum", (ref,), {}, restrictions={"workers": [w]})
                for w in client.request("identity")["workers"]
            ]
            assert client.get(sums, timeout=60) == [1_000_000.0, 1_000_000.0]
        finally:
            client.close()
        rt.init(address=address)  # actor calls read TLS frames (never polled: comm.busy-poll)
        try:
            counter = Counter.remote()
            assert [rt.get(counter.incr.remote(), timeout=60) for _ in range(3)] == [1, 2, 3]
        finally:
            rt.shutdown()
        # The secret alone, without TLS, gets nowhere.
        security_env(tls_cert="", tls_key="", tls_ca="")
        with pytest.raises(ConnectionError, match="uses TLS and this process does not"):
            ClusterClient(address, timeout=3)
    finally:
        assert runtime_cmd("stop", *flags, run_dir=run_dir).returncode == 0
        runtime_cmd("stop", *flags, run_dir=run_dir + "-b")


def _reachable_ip() -> str | None:
    """An address of this host other than loopback, as another host would reach it."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.254", 9))  # no packet leaves: this only picks the outgoing interface
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_actors_on_a_node_reached_from_elsewhere_are_called_on_its_interface(tmp_path, security_env):
    # A node joined from "another host" (through this host's outside address) serves its actors'
    # calls on the interface its agent advertises, not on its loopback: a caller elsewhere
    # could not reach 127.0.0.1 there.
    ip = _reachable_ip()
    if ip is None:
        pytest.skip("this host has no address besides loopback")
    secret = _secret_file(tmp_path, "shared")
    head = str(tmp_path / "head")
    address = _start_head(head, "--host", "0.0.0.0", "--secret-file", secret)
    port = address.rpartition(":")[2]
    joined = str(tmp_path / "joined")
    started = runtime_cmd(
        "start", "--address", f"tcp://{ip}:{port}", "--host", "0.0.0.0", "--num-workers", "1",
        "--resources", "far=1", "--secret-file", secret, run_dir=joined,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        security_env(secret_file=secret)
        rt.init(address=f"tcp://{ip}:{port}")
        try:
            counter = Counter.options(resources={"far": 1}).remote()
            assert rt.get([counter.incr.remote() for _ in range(3)], timeout=60) == [1, 2, 3]
            where = current_runtime().client.request("actor-location", actor=counter._actor_id)
            assert where["address"].startswith(f"tcp://{ip}:"), where
        finally:
            rt.shutdown()
    finally:
        runtime_cmd("stop", "--secret-file", secret, run_dir=joined)
        runtime_cmd("stop", "--secret-file", secret, run_dir=head)
