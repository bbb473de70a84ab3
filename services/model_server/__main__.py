"""python -m services.model_server (also `ccaa model-server`): the scripted model server."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from services.model_server.scripts import ScriptError
from services.model_server.server import ModelServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ccaa model-server",
        description="Serve the Anthropic Messages API on loopback from model scripts (YAML or "
                    "JSON files of scripted turns: text and tool calls, API errors, stalls), "
                    "so the real Claude Code CLI can run offline. Point it here with "
                    "ANTHROPIC_BASE_URL=<the printed url>. Prints one JSON ready line.")
    parser.add_argument("--script", action="append", default=[], required=True,
                        help="script file or directory (repeatable; tried in order)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default: an ephemeral port")
    parser.add_argument("--record", help="append every request as a JSON line to this file")
    args = parser.parse_args(argv)
    try:
        server = ModelServer(args.script, host=args.host, port=args.port, record=args.record)
    except (ScriptError, OSError) as exc:
        print(f"ccaa model-server: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(json.dumps({"event": "ready", "url": server.url, "turns": len(server.turns)}),
          flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
