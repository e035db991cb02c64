"""Can this serving process write? The intake's last append and the sealer's last round, as a 507 for uploads
and one line for /readyz; and the background loop's failures, logged once each, not once a round.

An acknowledgement is a promise: an upload is answered 200 only once its record is fsynced. While the disk
refuses writes (ENOSPC, EIO, EROFS: the last append or the last seal failed) uploads are refused at once with
507 and the reason. Both states clear by themselves: the intake is probed with the failed batch's size every
round, and the sealer retries every round.
"""
from __future__ import annotations

import logging
import os

from ..errors import first_line
from .sealer import storage_failure
from .uploads import Rejected

log = logging.getLogger("latentstore.serve")
RETRY_AFTER_S = "5"  # what a 507 tells clients to wait: a few seal intervals


class WriteHealth:
    def __init__(self, intake_dir: str):
        self.intake_dir = intake_dir  # this process's intake folder (its writability is part of readiness)
        self.log_error: str | None = None  # why the last intake append failed (None: it succeeded)
        self.log_error_bytes = 0  # ... and the size of that batch: the probe must fit it before uploads resume
        self.logged: str | None = None  # the background loop's last logged failure

    def append_failed(self, e: OSError, nbytes: int) -> Rejected:
        self.log_error = f"cannot write the log ({e.strerror or e})"
        self.log_error_bytes = nbytes
        return Rejected(507, f"{self.log_error}; retry later", "log_write", {"Retry-After": RETRY_AFTER_S})

    def probe(self, intake) -> None:
        """After a failed append: uploads resume once the intake takes a batch of that size again."""
        if self.log_error is None:
            return
        try:
            intake.probe(self.log_error_bytes)
        except OSError as e:
            self.log_error = f"cannot write the log ({e.strerror or e})"
            return
        log.warning("the intake log is writable again")
        self.log_error = None

    def refusal(self, sealer) -> Rejected | None:
        """The 507 an upload gets while the disk refuses writes, else None."""
        if self.log_error is not None:
            return Rejected(507, f"{self.log_error}; retry later", "log_write", {"Retry-After": RETRY_AFTER_S})
        err = sealer.storage_error if sealer is not None else None
        if err is not None:
            return Rejected(507, f"the store cannot be written ({err}); retry later", "store_write",
                            {"Retry-After": RETRY_AFTER_S})
        return None

    def ready_reason(self, ready: bool, sealer) -> str | None:
        """None when ready (/readyz 200), else one line saying why not."""
        if not ready:
            return "not ready: starting or shutting down"
        if self.log_error is not None:
            return f"not ready: {self.log_error}"
        if sealer is not None and sealer.last_error is not None:
            return f"not ready: the last seal failed ({sealer.last_error})"
        if not os.access(self.intake_dir, os.W_OK):
            return "not ready: the store's intake folder is not writable"
        return None

    def round_ok(self) -> None:
        if self.logged is not None:
            log.warning("sealing works again")
            self.logged = None

    def round_failed(self, e: Exception, interval_s: float) -> None:
        """A failed background round: a traceback for a bug, one line for a full or failing disk; each once."""
        line = first_line(e, 300, with_type=True)
        if line != self.logged:
            if storage_failure(e) is None:
                log.exception("seal failed (will retry)")
            else:
                log.warning("seal failed, will retry every %.1f s: %s", interval_s, line)
        self.logged = line
