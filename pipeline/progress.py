"""Training progress: tqdm's bar in a terminal, a plain line every so often anywhere else.

Written to a file (`make demo > log 2>&1`, CI, nohup), tqdm's carriage-return updates pile up: one
demo run made a 420 KB log of them. When stdout or stderr is not a terminal, `progress()` returns a
`PlainProgress` instead, which prints one line every `interval` seconds and at the last step:

    latent ddpm: step 1200/4500 (27%), loss 0.1234, 16.3 steps/s, 3 min 22 s left

Both take the calls the training loops make: `update(n)`, `set_postfix(**values)`, `close()`.
"""

import sys
import time

from tqdm.auto import tqdm

PLAIN_INTERVAL_S = 30.0


def progress(total, initial=0, desc="", disable=False, interval=PLAIN_INTERVAL_S):
    """A progress bar in a terminal; plain lines to stdout when the output goes to a file or a pipe."""
    if sys.stdout.isatty() and sys.stderr.isatty():
        return tqdm(total=total, initial=initial, disable=disable, desc=desc)
    return PlainProgress(total, initial, desc, disable, interval)


def _duration(seconds: float) -> str:
    """3 min 22 s, 45 s, 1 h 05 min: precise enough for a time left."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class PlainProgress:
    """One line per `interval` seconds (and one at the end): step, percentage, postfix values, rate, time left.
    The rate counts only the steps of this run, so a resumed run does not report the old steps as fast ones."""

    def __init__(self, total, initial=0, desc="", disable=False, interval=PLAIN_INTERVAL_S, stream=None,
                 clock=time.monotonic):
        self.total, self.n, self.desc, self.disable, self.interval = total, initial, desc, disable, interval
        self.stream, self.clock = stream, clock
        self.start_step, self.start_time = initial, clock()
        self.last_print, self.printed_at = self.start_time, initial
        self.postfix = {}

    def update(self, n=1):
        self.n += n
        now = self.clock()
        if now - self.last_print >= self.interval or self.n >= self.total:
            self._print(now)

    def set_postfix(self, **values):
        self.postfix.update(values)  # shown from the next line on

    def close(self):
        if self.n != self.printed_at:  # a loop left early: say where it stopped
            self._print(self.clock())

    def _print(self, now):
        self.last_print, self.printed_at = now, self.n
        if self.disable:
            return
        elapsed, done = now - self.start_time, self.n - self.start_step
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc + ': ' if self.desc else ''}step {self.n}/{self.total} ({100 * self.n // max(self.total, 1)}%)"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        parts.append(f"{rate:.3g} steps/s")
        if self.n < self.total:
            parts.append(f"{_duration((self.total - self.n) / rate)} left" if rate > 0 else "time left unknown")
        else:
            parts.append(f"done in {_duration(elapsed)}")
        print(", ".join(parts), file=self.stream or sys.stdout, flush=True)
