"""Who may talk to a runtime process: a shared secret, and TLS.

With a secret (``RUNTIME_SECRET``, or the file named by ``RUNTIME_SECRET_FILE``), every
connection opens with a mutual challenge-response before any frame is read::

    server                                         client
      │── MAGIC + nonce_s (32 bytes) ───────────────►│
      │◄── nonce_c (32) + HMAC(secret, "client" + nonce_s + nonce_c) ──│
      │── HMAC(secret, "server" + nonce_c + nonce_s) ►│   (the client checks the server too)

The secret never crosses the wire, and a fresh nonce each time means a recorded answer
cannot be replayed.  A peer that answers wrongly, slowly (``HANDSHAKE_TIMEOUT``) or not
at all is refused and logged by the server; nothing it sent is acted on.

A client without a secret reads the challenge's first bytes as a frame header: the codec
recognises ``MAGIC`` there and raises ``SecretRequiredError`` naming the cluster.  A client
with a secret that gets no challenge says the server runs without one (``NO_CHALLENGE``).

TLS (``RUNTIME_TLS_CERT``, ``RUNTIME_TLS_KEY``, ``RUNTIME_TLS_CA``) wraps TCP connections;
with a CA both sides must present a certificate it signed.  Host names are not checked:
cluster hosts are usually addressed by IP, and the CA is the cluster's own.

Settings come from the environment so that every process a cluster starts (scheduler,
agents, workers) inherits them; ``runtime start`` sets them from its flags.  Listening on
anything but the loopback without a secret is refused (``check_listen``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from functools import cache

logger = logging.getLogger("runtime.auth")

MAGIC = b"RTAUTH1\n"
NONCE = 32
DIGEST = hashlib.sha256().digest_size
#: seconds a peer has to complete the handshake
HANDSHAKE_TIMEOUT = 10.0


class AuthenticationError(ConnectionError):
    """The peer does not know the cluster's secret (or does not speak the handshake)."""


#: why a server sent no challenge, when this process has a secret
NO_CHALLENGE = (
    "it runs without a shared secret and this process has one (unset RUNTIME_SECRET and RUNTIME_SECRET_FILE, "
    "or start the cluster with --secret-file), or it uses TLS and this process does not (set RUNTIME_TLS_CERT "
    "and RUNTIME_TLS_KEY), or it is no runtime; see docs/deployment.md"
)


@dataclass(frozen=True)
class Security:
    #: the shared secret, or None: no handshake
    secret: bytes | None = None
    #: TLS contexts for accepting and for opening TCP connections, or None: plain TCP
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None


def _env_secret() -> bytes | None:
    path = os.environ.get("RUNTIME_SECRET_FILE")
    if path:
        try:
            with open(path, "rb") as f:
                secret = f.read().strip()
        except OSError as e:
            raise ValueError(f"RUNTIME_SECRET_FILE={path!r} cannot be read: {e.strerror}") from None
        if not secret:
            raise ValueError(f"RUNTIME_SECRET_FILE={path!r} is empty")
        return secret
    secret_text = os.environ.get("RUNTIME_SECRET")
    return secret_text.encode() if secret_text else None


def _tls() -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    cert, key, ca = (os.environ.get(f"RUNTIME_TLS_{n}") or None for n in ("CERT", "KEY", "CA"))
    if not (cert or key or ca):
        return None, None
    if not (cert and key):
        raise ValueError("TLS needs both RUNTIME_TLS_CERT and RUNTIME_TLS_KEY (--tls-cert and --tls-key)")
    try:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        for ctx in (server, client):
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot load the TLS certificate {cert!r}, key {key!r} or CA {ca!r}: {e}") from None
    client.check_hostname = False
    if ca:
        server.verify_mode = ssl.CERT_REQUIRED
    else:
        client.verify_mode = ssl.CERT_NONE  # encrypted, but whoever holds the secret is trusted
    return server, client


@cache
def default_security() -> Security:
    """This process's settings, read once from the environment."""
    server_ssl, client_ssl = _tls()
    return Security(_env_secret(), server_ssl, client_ssl)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(scheme: str, host: str, security: Security) -> None:
    """Refuse to listen beyond the loopback without a shared secret."""
    if scheme == "tcp" and not is_loopback(host) and security.secret is None:
        raise ValueError(
            f"listening on {host!r}, beyond the loopback, needs a shared secret: "
            "set RUNTIME_SECRET or give --secret-file"
        )


def _mac(secret: bytes, label: bytes, a: bytes, b: bytes) -> bytes:
    return hmac.new(secret, label + a + b, hashlib.sha256).digest()


async def server_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes) -> None:
    """Challenge a new peer; raise ``AuthenticationError`` unless it proves it knows ``secret``."""
    nonce_s = os.urandom(NONCE)
    writer.write(MAGIC + nonce_s)
    try:
        answer = await asyncio.wait_for(reader.readexactly(NONCE + DIGEST), HANDSHAKE_TIMEOUT)
    except TimeoutError:
        raise AuthenticationError(f"no answer to the challenge within {HANDSHAKE_TIMEOUT:g}s") from None
    except asyncio.IncompleteReadError:
        raise AuthenticationError("it closed the connection instead of answering the challenge") from None
    nonce_c, mac = answer[:NONCE], answer[NONCE:]
    if not hmac.compare_digest(mac, _mac(secret, b"client", nonce_s, nonce_c)):
        raise AuthenticationError("wrong secret (or none)")
    writer.write(_mac(secret, b"server", nonce_c, nonce_s))


async def client_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes, timeout: float = HANDSHAKE_TIMEOUT
) -> None:
    """Answer the server's challenge and check that the server knows ``secret`` too."""
    try:
        challenge = await asyncio.wait_for(reader.readexactly(len(MAGIC) + NONCE), timeout)
    except TimeoutError:
        raise AuthenticationError(f"the server sent no challenge within {timeout:g}s: {NO_CHALLENGE}") from None
    except asyncio.IncompleteReadError:
        raise AuthenticationError(f"the server closed the connection without a challenge: {NO_CHALLENGE}") from None
    if not challenge.startswith(MAGIC):
        raise AuthenticationError(f"the server sent no challenge: {NO_CHALLENGE}")
    nonce_s, nonce_c = challenge[len(MAGIC) :], os.urandom(NONCE)
    writer.write(nonce_c + _mac(secret, b"client", nonce_s, nonce_c))
    try:
        proof = await asyncio.wait_for(reader.readexactly(DIGEST), timeout)
    except TimeoutError:
        raise AuthenticationError(f"the server did not answer our proof of the secret within {timeout:g}s") from None
    except asyncio.IncompleteReadError:
        raise AuthenticationError("the server refused our secret (it closed the connection)") from None
    if not hmac.compare_digest(proof, _mac(secret, b"server", nonce_c, nonce_s)):
        raise AuthenticationError("the server does not know the secret")


def client_handshake_sync(sock: socket.socket, secret: bytes) -> None:
    """``client_handshake`` over a blocking socket (its timeout bounds each step)."""
    try:
        challenge = recv_exactly(sock, len(MAGIC) + NONCE, "the server")
    except TimeoutError:
        raise AuthenticationError(
            f"the server sent no challenge within {sock.gettimeout():g}s: {NO_CHALLENGE}"
        ) from None
    except ConnectionResetError:
        raise AuthenticationError(f"the server closed the connection without a challenge: {NO_CHALLENGE}") from None
    if not challenge.startswith(MAGIC):
        raise AuthenticationError(f"the server sent no challenge: {NO_CHALLENGE}")
    nonce_s, nonce_c = challenge[len(MAGIC) :], os.urandom(NONCE)
    sock.sendall(nonce_c + _mac(secret, b"client", nonce_s, nonce_c))
    if not hmac.compare_digest(_recv_exactly(sock, DIGEST), _mac(secret, b"server", nonce_c, nonce_s)):
        raise AuthenticationError("the server does not know the secret")


def recv_exactly(sock: socket.socket, n: int, peer: str) -> bytes:
    """``n`` bytes from a blocking socket; ``ConnectionResetError`` if it closes first."""
    buf = bytearray(n)
    recv_into_all(sock, memoryview(buf), peer)
    return bytes(buf)


def recv_into_all(sock: socket.socket, view: memoryview, peer: str) -> None:
    """Fill ``view`` from a blocking socket, with no copy; ``ConnectionResetError`` if it closes first."""
    got = 0
    while got < view.nbytes:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionResetError(f"{peer} closed the connection {got} of {view.nbytes} bytes into a message")
        got += k


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    """For the handshake: a peer closing means it refused us."""
    try:
        return recv_exactly(sock, n, "the server")
    except ConnectionResetError:
        raise AuthenticationError("the server refused our secret (it closed the connection)") from None


def open_sync(address_scheme: str, host: str, port: int, timeout: float) -> socket.socket:
    """A blocking connection with this process's TLS and secret, each step bounded by ``timeout``."""
    security = default_security()
    if address_scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = host
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        target = (host, port)
    try:
        sock.settimeout(timeout)
        sock.connect(target)
        if address_scheme == "tcp" and security.client_ssl is not None:
            sock = security.client_ssl.wrap_socket(sock)
        if security.secret is not None:
            client_handshake_sync(sock, security.secret)
    except BaseException:
        sock.close()
        raise
    return sock


def accept_sync(conn: socket.socket, peer: str) -> socket.socket | None:
    """A blocking server's side of ``open_sync``: TLS, then the challenge.  None if refused (logged)."""
    security = default_security()
    try:
        conn.settimeout(HANDSHAKE_TIMEOUT)
        if security.server_ssl is not None and conn.family != socket.AF_UNIX:
            conn = security.server_ssl.wrap_socket(conn, server_side=True)
        if security.secret is not None:
            nonce_s = os.urandom(NONCE)
            conn.sendall(MAGIC + nonce_s)
            answer = _recv_exactly(conn, NONCE + DIGEST)
            nonce_c, mac = answer[:NONCE], answer[NONCE:]
            if not hmac.compare_digest(mac, _mac(security.secret, b"client", nonce_s, nonce_c)):
                raise AuthenticationError("wrong secret (or none)")
            conn.sendall(_mac(security.secret, b"server", nonce_c, nonce_s))
        conn.settimeout(None)
    except (OSError, AuthenticationError) as e:
        logger.warning("refused connection from %s: %s", peer, e)
        conn.close()
        return None
    return conn
