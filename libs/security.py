"""CurveZMQ on every bus socket, with a ZAP allow-list of client public keys.

Keys live in one directory (``communication.keys_dir``; ``ccaa keys init`` makes it):

    hub.key / hub.key_secret        the hub's keypair (peers need hub.key, the public half)
    <name>.key / <name>.key_secret  a peer's keypair (``communication.client_key`` names it)
    authorized/<name>.key           public keys the hub accepts

With ``communication.curve`` off (the default, fine for loopback-only setups) nothing here
applies. A process calls ``configure(comm)`` once at start; afterwards every client socket
made by ``libs.zmqio.socket`` (DEALER, PUB, SUB) speaks CURVE to the hub.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

HUB_KEY = "hub"
AUTHORIZED = "authorized"
CLIENT_KINDS = (zmq.DEALER, zmq.PUB, zmq.SUB)


class KeyError_(Exception):
    """Keys missing or unreadable; the message says which file and what to run."""


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server: bytes


_client: ClientKeys | None = None


def keys_path(keys_dir: str) -> Path:
    return Path(keys_dir).expanduser()


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        kind = "keypair" if secret else "public key"
        raise KeyError_(f"cannot read the {kind} {path}: {exc} (run `ccaa keys init`)") from None


def configure(curve: bool, keys_dir: str, client_key: str) -> ClientKeys | None:
    """Load this process's client keys (when CURVE is on); later client sockets use them."""
    global _client
    if not curve:
        _client = None
        return None
    root = keys_path(keys_dir)
    server, _ = _load(root / f"{HUB_KEY}.key", secret=False)
    public, secret = _load(root / f"{client_key}.key_secret", secret=True)
    if secret is None:
        raise KeyError_(f"{root / (client_key + '.key_secret')} has no secret key")
    _client = ClientKeys(public, secret, server)
    return _client


def apply_client(sock: zmq.Socket) -> None:
    if _client is not None and sock.type in CLIENT_KINDS:
        sock.curve_publickey = _client.public
        sock.curve_secretkey = _client.secret
        sock.curve_serverkey = _client.server


def apply_server(sock: zmq.Socket, keys_dir: str) -> None:
    public, secret = _load(keys_path(keys_dir) / f"{HUB_KEY}.key_secret", secret=True)
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def start_authenticator(ctx: zmq.Context, keys_dir: str) -> ThreadAuthenticator:
    """ZAP: only clients whose public key is in ``authorized/`` may connect."""
    allowed = keys_path(keys_dir) / AUTHORIZED
    if not allowed.is_dir():
        raise KeyError_(f"{allowed} does not exist (run `ccaa keys init`)")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(allowed))
    return auth


# ---- `ccaa keys` ----------------------------------------------------------------------


def init(keys_dir: str, client: str = "client") -> list[str]:
    """Make the hub's keypair, one client keypair, and the allow-list (hub and client)."""
    root = keys_path(keys_dir)
    if (root / f"{HUB_KEY}.key_secret").exists():
        raise KeyError_(f"{root} already has hub keys; add clients with `ccaa keys add NAME`")
    (root / AUTHORIZED).mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    zmq.auth.create_certificates(str(root), HUB_KEY)
    shutil.copy(root / f"{HUB_KEY}.key", root / AUTHORIZED / f"{HUB_KEY}.key")
    return [str(root / f"{HUB_KEY}.key_secret"), *add(keys_dir, client)]


def add(keys_dir: str, name: str) -> list[str]:
    """A new client keypair, added to the hub's allow-list (send the hub SIGHUP, or
    restart it, to pick it up)."""
    root = keys_path(keys_dir)
    if not (root / AUTHORIZED).is_dir():
        raise KeyError_(f"{root} has no keys yet (run `ccaa keys init`)")
    if (root / f"{name}.key").exists():
        raise KeyError_(f"a key named {name!r} already exists in {root}")
    public, secret = zmq.auth.create_certificates(str(root), name)
    shutil.copy(public, root / AUTHORIZED / f"{name}.key")
    return [secret]
