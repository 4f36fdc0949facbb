"""The one error type users see: a clear message naming the file, line or field. The CLI exits 2 on it."""


class PreferError(Exception):
    """Bad input or configuration. The message names the offending file, line or field."""


# A Ctrl-C, remembered. Python's own SIGINT handler only raises KeyboardInterrupt where the main thread happens to
# be; a C extension that checks for signals and clears the error, or a finalizer (whose exceptions Python drops),
# loses it, and the run goes on to exit 0 with nothing printed (seen in the test suite after a checkpoint). prefer's
# command line installs `note_interrupt` instead, and every stage's loop asks `raise_if_interrupted` at each step's
# end (prefer.training.run.StageRun.due), so a lost interrupt is raised again there.
_interrupted = False


def note_interrupt(signum, frame) -> None:
    """SIGINT's handler: remember the interrupt, then raise KeyboardInterrupt as Python's default handler does."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if a Ctrl-C came (and may have been lost on its way), else nothing."""
    if _interrupted:
        raise KeyboardInterrupt
