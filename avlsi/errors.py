"""The exceptions that end a job on purpose: a user's mistake, or a signal to stop."""


class UserError(Exception):
    """A mistake in the user's input: reported as one line, never as a traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (from SLURM, Ray, `timeout`, `kill`): stop the way Ctrl-C stops."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)

    def __reduce__(self):  # a joblib worker sends it back to the sweep pickled
        return type(self), (self.signum,)
