"""Run the `janus` CLI and SIGKILL it at a deterministic point: at the N-th file a stage publishes.

Every stage publishes its work by renaming a finished temp file or directory into place
(`os.replace`: manifest parts, tar shards, progress files; `os.rename`: checkpoint directories).
This launcher wraps both in the child process and, at the `count`-th rename whose destination
matches `pattern` (fnmatch on the full path), SIGKILLs its own process, either just before the
rename (the temp file is left behind, the work is lost) or just after it (the work is durable,
the stage is not finished). A test that kills this way cannot miss its stage, however loaded the
machine: the process exits with -SIGKILL at that point, or it never reached it (a test failure).

    python tests/kill_at.py PATTERN COUNT {before,after} -- <janus arguments>
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def command(pattern: str, count: int, when: str, *janus_args: str) -> list[str]:
    """The argv that runs `janus <janus_args>` and kills it at the `count`-th rename onto `pattern`."""
    if when not in ("before", "after") or count < 1:
        raise ValueError(f"when must be 'before' or 'after' and count >= 1, got {when!r}, {count}")
    return [sys.executable, str(Path(__file__).resolve()), pattern, str(count), when, "--", *janus_args]


def die() -> None:
    """SIGKILL this process: no handler, no finally block, no atexit runs (as `kill -9` from outside)."""
    os.kill(os.getpid(), signal.SIGKILL)
    threading.Event().wait()  # not reached: SIGKILL to oneself is delivered before kill() returns


def install(pattern: str, count: int, when: str) -> None:
    """Wrap os.replace and os.rename so that the `count`-th matching one kills this process."""
    seen = 0
    lock = threading.Lock()  # stages may publish from a writer thread

    def wrap(real):
        def renamed(src, dst, *args, **kwargs):
            nonlocal seen
            with lock:
                hit = fnmatch.fnmatch(os.fspath(dst), pattern)
                seen += hit
                last = hit and seen == count
                if last and when == "before":
                    die()
                out = real(src, dst, *args, **kwargs)
                if last:
                    die()
                return out

        return renamed

    os.replace = wrap(os.replace)
    os.rename = wrap(os.rename)


def main() -> None:
    pattern, count, when, sep, *janus_args = sys.argv[1:]
    if sep != "--":
        raise SystemExit(__doc__)
    install(pattern, int(count), when)
    sys.path.insert(0, str(REPO))
    from cli import app

    app(args=janus_args, prog_name="janus")


if __name__ == "__main__":
    main()
