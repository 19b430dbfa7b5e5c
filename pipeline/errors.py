"""User-facing errors: one line that names the problem and the fix, no traceback.

Anything a user can cause (bad config, bad data, bad paths) raises `UserError`.
Scripts wrap their `main` in `run_cli`, which prints `error: <message>` and exits
with status 2, unless `--debug` is on the command line, then the traceback shows.
"""

import sys


class UserError(Exception):
    """An error caused by input the user can fix; the message says how."""


def first_line(e: Exception) -> str:
    """What to quote of an exception in a one-line error: its message's first line, or its class name."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def run_cli(main, argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    try:
        return main(argv)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
