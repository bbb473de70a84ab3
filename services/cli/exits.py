"""The CLI's exit codes: one meaning each, so scripts can tell a failed session from a
refusal, a timeout or a hub that is down (`ccaa --help` and README list them)."""

from __future__ import annotations

OK = 0
#: the session (or one of a batch) ended failed, partial or cancelled; `cancel`: the
#: session had already ended
NOT_SUCCEEDED = 1
#: bad arguments, configuration or request: fix the command line or the config file
USAGE = 2
#: refused: an unknown session, task or role, a repository the system cannot use, a bus
#: token or key it does not accept
REFUSED = 3
#: gave up waiting (--wait-timeout, --timeout): the session goes on
WAIT_TIMEOUT = 4
#: nothing answered: the hub or the service is not running or not reachable
UNREACHABLE = 5
INTERRUPTED = 130  # Ctrl-C (the session goes on)
BROKEN_PIPE = 141  # the reader of the output went away (`ccaa ... | head`)

TABLE = [
    (OK, "success (a session: it succeeded)"),
    (NOT_SUCCEEDED, "the session ended failed, partial or cancelled"),
    (USAGE, "bad arguments, configuration or request"),
    (REFUSED, "refused (unknown session, task or role; unusable repository; token or key)"),
    (WAIT_TIMEOUT, "gave up waiting; the session goes on"),
    (UNREACHABLE, "no answer: the hub or a service is not running or not reachable"),
    (INTERRUPTED, "interrupted (Ctrl-C); a session goes on"),
    (BROKEN_PIPE, "the output's reader went away"),
]


#: error codes (protocols/errors.py) that mean the request itself was wrong
_USAGE_CODES = {"validation_error", "decode_error", "oversize", "unknown_type",
                "version_mismatch"}
#: ... and those that mean nobody could serve it
_UNREACHABLE_CODES = {"undeliverable", "unavailable", "timeout", "busy"}


def for_error(code: str) -> int:
    """The exit code for a request refused with this error code."""
    if code in _USAGE_CODES:
        return USAGE
    if code in _UNREACHABLE_CODES:
        return UNREACHABLE
    return REFUSED


class WaitTimeout(TimeoutError):
    """Waiting for a session (or a batch) ran out of time; the work goes on."""


def help_text() -> str:
    return "Exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in TABLE)
