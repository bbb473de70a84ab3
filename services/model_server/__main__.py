"""python -m services.model_server (also `ccaa model-server`): the scripted model server."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from services.model_server.scripts import ScriptError
from services.model_server.server import ModelServer

EPILOG = """\
script format (YAML or JSON):
  name: example                 # optional; turns are named <name>#<n> in recordings
  turns:                        # tried in order, files in the order given; first match wins
    - match: {turn: 1, prompt_contains: "hello.py"}   # all given criteria must hold
      reply:
        content:
          - {type: text, text: "Writing hello.py."}
          - {type: tool_use, name: Write, input: {file_path: hello.py, content: "print(1)\\n"}}
        usage: {input_tokens: 1200, output_tokens: 80}  # stop_reason defaults to tool_use
    - match: {turn: 2, last_tool_result_contains: "created"}
      reply: {content: [{type: text, text: "Done."}]}   # stop_reason end_turn
    - match: {prompt_contains: "overload"}
      reply: {error: {status: 529, type: overloaded_error, message: "busy"}}
    - match: {prompt_contains: "hang"}
      reply: {stall: true}                               # never answers

match criteria: turn (1-based assistant turn), prompt_contains (first user message),
system_contains (system prompt or system-role messages), last_tool_result_contains,
latest_user_contains. A request nothing matches gets the text "no scripted turn matched".

run Claude Code against it:
  ANTHROPIC_BASE_URL=<url> ANTHROPIC_API_KEY=any HOME=<tmp> \\
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 claude -p "create hello.py" \\
  --output-format stream-json --verbose --permission-mode acceptEdits

When ready it prints one JSON line, {"event": "ready", "url": ..., "turns": N}, and
serves until SIGTERM or SIGINT (exit 0). Exit 2: a script could not be loaded, or the
address could not be bound.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccaa model-server",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the Anthropic Messages API (POST /v1/messages, streaming or not;\n"
                    "POST /v1/messages/count_tokens) on loopback from model scripts: scripted\n"
                    "text and tool calls, API errors and stalls, so the real Claude Code CLI\n"
                    "runs offline and deterministically.",
        epilog=EPILOG)
    parser.add_argument("--script", action="append", default=[], required=True,
                        metavar="PATH",
                        help="a script file, or a directory of .yaml/.yml/.json scripts "
                             "(repeatable; tried in the order given)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port (default: an ephemeral one)")
    parser.add_argument("--record", metavar="FILE",
                        help="append every request (path, headers, body, matched turn) as a "
                             "JSON line to FILE")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"],
                        help="stderr logging: unmatched requests and unknown endpoints are "
                             "warnings (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = ModelServer(args.script, host=args.host, port=args.port, record=args.record)
    except (ScriptError, OSError) as exc:
        print(f"ccaa model-server: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        print(json.dumps({"event": "ready", "url": server.url, "turns": len(server.turns)}),
              flush=True)
        while not stop.wait(0.5):  # a timed wait keeps signal handling prompt
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
