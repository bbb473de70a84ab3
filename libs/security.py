"""CurveZMQ on every bus socket, with a ZAP allow-list of client public keys.

Keys live in one directory (``communication.keys_dir``; ``ccaa keys init`` makes it):

    hub.key / hub.key_secret        the hub's keypair (peers need hub.key, the public half)
    <name>.key / <name>.key_secret  a peer's keypair (``communication.client_key`` names it)
    authorized/<name>.key           public keys the hub accepts
    authorized/<name>.grant         what that key may register as (JSON, see ``Grant``);
                                    a key without one may register only as a client

``ccaa keys init`` makes the hub's keypair and one key per service (``orchestrator``, ...,
each allowed to register as that service only), ``agents`` (agents of any role) and
``client`` (the CLI). A service uses its own key, an agent ``communication.agent_key``, when
keys_dir holds it; anything else uses ``communication.client_key``.

With ``communication.curve`` off (the default, fine for loopback-only setups) nothing here
applies. A process calls ``configure(comm)`` once at start; afterwards every client socket
made by ``libs.zmqio.socket`` (DEALER, PUB, SUB) speaks CURVE to the hub.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

HUB_KEY = "hub"
AUTHORIZED = "authorized"
GRANT = ".grant"
#: the services ``ccaa keys init`` makes a key for (the hub has its own keypair)
SERVICE_KEYS = ("commands", "orchestrator", "distributor", "reporter", "controller")
AGENTS_KEY = "agents"
CLIENT_KEY = "client"
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
    kind = "keypair" if secret else "public key"
    try:
        if secret:
            _check_private(path)
        return zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read the {kind} {path}: {exc} (run `ccaa keys init`)") from None


def _check_private(path: Path) -> None:
    """A secret key others on the host can read is an identity they can take (as ssh does,
    refuse it rather than use it)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyError_(f"the secret key {path} is readable by others (mode {mode:04o}); "
                        f"run `chmod 600 {path}`")


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


def key_for(keys_dir: str, own: str, default: str) -> str:
    """The keypair a process uses: its own (a service's name, an agent's
    ``communication.agent_key``) when keys_dir holds it, else ``default``."""
    if own and (keys_path(keys_dir) / f"{own}.key_secret").exists():
        return own
    return default


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


@dataclass
class Grant:
    """What one key may register as: ``kind`` service (one of ``names``), agent (a role in
    ``roles`` and a host in ``hosts``; empty means any) or client."""

    kind: str = "client"
    names: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)

    def refusal(self, kind: str, name: str, role: str, host: str) -> str:
        """Why this grant does not allow the registration ("" if it does)."""
        if kind != self.kind:
            return f"may register only as {self.describe()}, not as a {kind}"
        if self.kind == "service" and not any(fnmatch.fnmatchcase(name, n) for n in self.names):
            return f"may register only as {self.describe()}, not as {name!r}"
        if self.kind == "agent" and self.roles and role not in self.roles:
            return f"may register only as {self.describe()}, not with role {role!r}"
        if self.kind == "agent" and self.hosts and host not in self.hosts:
            return f"may register only as {self.describe()}, not on host {host!r}"
        return ""

    def describe(self) -> str:
        if self.kind == "service":
            return "service " + "/".join(self.names)
        if self.kind == "agent":
            roles = "/".join(self.roles) or "any role"
            return f"an agent ({roles}" + (f" on {'/'.join(self.hosts)})" if self.hosts else ")")
        return "a client"


@dataclass
class Keyring:
    """The hub's view of the allow-list: each listed public key's name and grant."""

    names: dict[bytes, str] = field(default_factory=dict)  # z85 public key -> key name
    grants: dict[str, Grant] = field(default_factory=dict)  # key name -> grant

    @classmethod
    def load(cls, keys_dir: str) -> "Keyring":
        allowed = keys_path(keys_dir) / AUTHORIZED
        if not allowed.is_dir():
            raise KeyError_(f"{allowed} does not exist (run `ccaa keys init`)")
        ring = cls()
        for path in sorted(allowed.glob("*.key")):
            public, _ = _load(path, secret=False)
            ring.names[public] = path.stem
            ring.grants[path.stem] = read_grant(allowed, path.stem)
        return ring

    def grant(self, key_name: str) -> Grant:
        return self.grants.get(key_name) or Grant()


def read_grant(allowed: Path, name: str) -> Grant:
    path = allowed / f"{name}{GRANT}"
    try:
        data = json.loads(path.read_text())
        return Grant(kind=str(data.get("kind", "client")),
                     names=[str(n) for n in data.get("names", [])],
                     roles=[str(r) for r in data.get("roles", [])],
                     hosts=[str(h) for h in data.get("hosts", [])])
    except FileNotFoundError:
        return Grant()
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise KeyError_(f"cannot read the grant {path}: {exc}") from None


class KeyAuthenticator(ThreadAuthenticator):
    """ZAP for the hub: only keys in ``authorized/`` connect; a connection's User-Id is
    its key's name (the hub reads it from every frame), and every refused handshake is
    reported to ``on_refused`` (called on the authenticator's thread)."""

    def __init__(self, ctx: zmq.Context, keys_dir: str,
                 on_refused: Callable[[str], None] | None = None):
        super().__init__(ctx)
        self.keys_dir = keys_dir
        self.keyring = Keyring.load(keys_dir)
        self.on_refused = on_refused

    def reload(self) -> Keyring:
        self.keyring = Keyring.load(self.keys_dir)  # replaced whole: the thread reads it
        return self.keyring

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keyring.names:
            return True
        if self.on_refused is not None:
            self.on_refused(key.decode("ascii", "replace"))
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.keyring.names.get(z85.encode(client_public_key), "")


def start_authenticator(ctx: zmq.Context, keys_dir: str,
                        on_refused: Callable[[str], None] | None = None) -> KeyAuthenticator:
    """ZAP: only clients whose public key is in ``authorized/`` may connect."""
    auth = KeyAuthenticator(ctx, keys_dir, on_refused)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=auth)
    return auth


# ---- `ccaa keys` ----------------------------------------------------------------------


def init(keys_dir: str, client: str = CLIENT_KEY) -> list[str]:
    """Make the hub's keypair, one key per service, one for agents and one client key,
    each listed with what it may register as."""
    root = keys_path(keys_dir)
    if (root / f"{HUB_KEY}.key_secret").exists():
        raise KeyError_(f"{root} already has hub keys; add keys with `ccaa keys add NAME`")
    (root / AUTHORIZED).mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    _create(root, HUB_KEY)
    # the hub's own event socket connects to its proxy with this keypair
    shutil.copy(root / f"{HUB_KEY}.key", root / AUTHORIZED / f"{HUB_KEY}.key")
    made = [str(root / f"{HUB_KEY}.key_secret")]
    for service in SERVICE_KEYS:  # controllers are named per host: controller@HOST
        names = [f"{service}@*"] if service == "controller" else [service]
        made += add(keys_dir, service, Grant(kind="service", names=names))
    made += add(keys_dir, AGENTS_KEY, Grant(kind="agent"))
    made += add(keys_dir, client, Grant(kind="client"))
    return made


def add(keys_dir: str, name: str, grant: Grant | None = None) -> list[str]:
    """A new keypair, listed in the hub's allow-list with its grant (send the hub SIGHUP,
    or restart it, to pick it up)."""
    root = keys_path(keys_dir)
    if not (root / AUTHORIZED).is_dir():
        raise KeyError_(f"{root} has no keys yet (run `ccaa keys init`)")
    if not name or "/" in name or name.startswith("."):
        raise KeyError_(f"{name!r} is not a usable key name")
    if (root / f"{name}.key").exists():
        raise KeyError_(f"a key named {name!r} already exists in {root}")
    public, secret = _create(root, name)
    grant = grant or Grant()
    (root / AUTHORIZED / f"{name}{GRANT}").write_text(json.dumps(asdict(grant)) + "\n")
    shutil.copy(public, root / AUTHORIZED / f"{name}.key")
    return [secret]


def _create(root: Path, name: str) -> tuple[str, str]:
    """A keypair whose secret half is never readable by others, not even for a moment."""
    old = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(str(root), name)
    finally:
        os.umask(old)
    os.chmod(public, 0o644)  # the public half is meant to be shared
    return public, secret
