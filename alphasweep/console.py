"""What a sweep shows on the console: its own lines only, while Ray, Tune and the libraries write to a log file.

Ray, Tune, Ray Train, transformers, Optuna and the C++ parts of Ray write to the process's stdout and stderr
from many threads and from child processes (whose output Ray forwards to the driver), each in its own way.
Rather than taming each, `quiet_console` points the process's own file descriptors 1 and 2 at a log file
under the sweep's output directory and keeps a copy of the terminal for the sweep's lines, which go to both.
A failure still reaches the console in full: the CLI prints it after the descriptors are given back, and a
failed trial's traceback is printed by the sweep.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import optuna


class Console:
    """Timestamped lines for the user: on the terminal, and in the log file when there is one."""

    def __init__(self, out: TextIO | None = None, log: TextIO | None = None):
        self._out, self._log = out, log

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the experiment: a restored Console prints to stdout."""
        return {"_out": None, "_log": None}

    def __call__(self, msg: str = "") -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}" if msg else msg
        for stream in (self._out or sys.stdout, self._log):
            if stream is not None:
                stream.write(line + "\n")
                stream.flush()


def quiet_libraries() -> None:
    """Less chatter in this process whatever the console: no Optuna study/trial INFO lines, no warnings about
    its experimental options, no Tune loggers that only duplicate MLflow (TensorBoard's dumps every
    non-scalar result); Tune's per-trial `result.json` is kept (the sweep adds that logger itself)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"


@contextmanager
def quiet_console(log_path: Path, *, verbose: bool = False) -> Iterator[Console]:
    """Inside, everything written to stdout or stderr goes to `log_path` (appended), and the yielded `Console`
    writes to the terminal and the log. With `verbose`, nothing is redirected (the log gets the sweep's lines)."""
    quiet_libraries()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
        if verbose:
            yield Console(sys.stdout, log)
            return
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        terminal = os.fdopen(os.dup(1), "w", buffering=1)
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield Console(terminal, log)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()
