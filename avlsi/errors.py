"""The exceptions that end a job on purpose: a user's mistake, or a signal to stop."""

from __future__ import annotations

import re


class UserError(Exception):
    """A mistake in the user's input: reported as one line, never as a traceback."""


LONG_TOKEN = 200  # longer runs of non-blank characters are cut when echoed


def clip(text: object, limit: int = LONG_TOKEN) -> str:
    """`text` on one line with every run of more than `limit` non-blank characters cut to
    its head and tail, so that a 100 KB override is echoed as a readable token (clipping
    twice changes nothing more)."""

    def cut(match: re.Match) -> str:
        token = match.group(0)
        head, tail = token[: limit // 2], token[-(limit // 4) :]
        return f"{head} ...[{len(token) - len(head) - len(tail):,} characters cut]... {tail}"

    flat = re.sub(r"\s*\n\s*", " ", str(text).strip())
    return re.sub(rf"\S{{{limit + 1},}}", cut, flat)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (from SLURM, Ray, `timeout`, `kill`): stop the way Ctrl-C stops."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)

    def __reduce__(self):  # a joblib worker sends it back to the sweep pickled
        return type(self), (self.signum,)
