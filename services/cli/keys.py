"""`ccaa keys`: make and list the CurveZMQ keys of a deployment (libs.security)."""

from __future__ import annotations

import argparse

from libs import security
from libs.config import SystemConfig
from services.cli.args import emit


def keys(args: argparse.Namespace, config: SystemConfig) -> int:
    """`ccaa keys init|add|list`: CurveZMQ keys and what each may register as."""
    keys_dir = config.communication.keys_dir
    if args.action == "list":
        ring = security.Keyring.load(keys_dir)
        names = sorted(ring.grants)
        emit(args, [{"name": n, "may_register_as": ring.grant(n).describe()} for n in names],
             *[f"{n:<20} {ring.grant(n).describe()}" for n in names])
        return 0
    if args.action == "init":
        made = security.init(keys_dir, args.name)
    else:
        if args.service and args.role:
            raise security.KeyError_("a key is for a service or for agents, not both")
        if args.host and not args.role:
            raise security.KeyError_("--host applies to agent keys: give --role too")
        if args.service:
            grant = security.Grant(kind="service", names=[args.service])
        elif args.role:
            roles = [] if "any" in args.role else args.role
            grant = security.Grant(kind="agent", roles=roles, hosts=args.host)
        else:
            grant = security.Grant(kind="client")
        made = security.add(keys_dir, args.name, grant)
        if not args.json:
            print(f"{args.name}: may register as {grant.describe()}")
    if args.json:
        emit(args, {"keys_dir": str(security.keys_path(keys_dir)),
                    "written": [str(p) for p in made]})
        return 0
    for path in made:
        print(f"wrote {path}")
    print(f"keys in {security.keys_path(keys_dir)}; set communication.curve = true on every "
          "host and give each host hub.key plus its keypairs (services use their own, "
          "agents communication.agent_key, the CLI communication.client_key); send the hub "
          "SIGHUP to pick up added keys")
    return 0
