"""Stopping cleanly: the first SIGINT or SIGTERM lets the optimizer step under way finish, so that a
checkpoint can be written; a second SIGINT quits at once."""
import signal
import sys
from typing import Any

import torch

from training.distributed import all_reduce_sum, is_main


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; `last.pt` holds the state to resume from."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While active, the first SIGINT or SIGTERM asks training to stop after the current optimizer step,
    where every process holds a consistent state to save; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        if is_main():
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this optimizer step "
                  "(Ctrl-C again to quit without it)", file=sys.stderr)

    def agreed(self, device: torch.device) -> bool:
        """Whether any process received a signal; every process must ask at the same point."""
        return all_reduce_sum(torch.tensor([float(self.received is not None)], device=device)).item() > 0
