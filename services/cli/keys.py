"""`ccaa keys`: make and list the CurveZMQ keys of a deployment (libs.security)."""

from __future__ import annotations

import argparse

from libs import security
from libs.config import SystemConfig


def keys(args: argparse.Namespace, config: SystemConfig) -> int:
    """`ccaa keys init|add|list`: CurveZMQ keys and what each may register as."""
    keys_dir = config.communication.keys_dir
    if args.action == "list":
        ring = security.Keyring.load(keys_dir)
        for name in sorted(ring.grants):
            print(f"{name:<20} {ring.grant(name).describe()}")
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
        print(f"{args.name}: may register as {grant.describe()}")
    for path in made:
        print(f"wrote {path}")
    print(f"keys in {security.keys_path(keys_dir)}; set communication.curve = true on every "
          "host and give each host hub.key plus its keypairs (services use their own, "
          "agents communication.agent_key, the CLI communication.client_key); send the hub "
          "SIGHUP to pick up added keys")
    return 0
