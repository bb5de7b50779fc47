"""`tunesmith train` as the console script runs it, except that the process crashes on purpose right after
writing metrics row STOP_AT, so a test can kill or resume a run at a known step however fast the machine is.

    python stop_at_row.py STOP_AT {stop|exit} train CONFIG ...

stop: SIGSTOP itself (the test then SIGKILLs it: a kill mid-run, between checkpoints);
exit: os._exit(17) (the main process of a multi-process launch dies; the launcher stops the others).
"""

import os
import signal
import sys

from tunesmith.train import logbook

STOP_AT, HOW = int(sys.argv.pop(1)), sys.argv.pop(1)
real_log = logbook.Logbook.log


def log(self, row):
    real_log(self, row)
    if row["step"] == STOP_AT:
        if HOW == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        else:
            os._exit(17)


logbook.Logbook.log = log
from tunesmith.cli import main  # noqa: E402

main(sys.argv[1:])
