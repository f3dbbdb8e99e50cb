"""Stop strings: end a generation's text before the first of some strings, also one that spans tokens."""

from __future__ import annotations

from typing import Sequence

from .errors import InputError

MAX_STOP_STRINGS = 4


def check_stop_strings(stop: Sequence[str]) -> tuple[str, ...]:
    """At most four non-empty strings -> a tuple; InputError naming the bad one otherwise."""
    stops = tuple(stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise InputError(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}")
    for s in stops:
        if not isinstance(s, str) or not s:
            raise InputError(f"each stop string must be a non-empty string, got {s!r}")
    return stops


class StopStrings:
    """Text pieces in, text pieces out, cut before the first stop string.

    The first piece that completes a stop string ends the text, before the earliest stop string complete by
    then (`hit`); nothing after it comes out. Until then, the tail that could still begin a stop string is held
    back for the next piece to settle, so released text never holds the start of one."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = check_stop_strings(stops)
        self.hit: str | None = None
        self._out: list[str] = []  # released so far
        self._held = ""

    @property
    def text(self) -> str:
        """All text released so far."""
        return "".join(self._out)

    def push(self, piece: str) -> str:
        if self.hit is not None:
            return ""
        if not self.stops:
            self._out.append(piece)
            return piece
        buf = self._held + piece
        found = [(i, s) for s in self.stops if (i := buf.find(s)) >= 0]
        if found:
            cut, self.hit = min(found)
            out, self._held = buf[:cut], ""
        else:
            keep = self._partial(buf)
            out, self._held = buf[: len(buf) - keep], buf[len(buf) - keep :]
        self._out.append(out)
        return out

    def flush(self) -> str:
        """The held-back tail, at the end of the text (nothing once a stop string was found)."""
        out, self._held = self._held, ""
        self._out.append(out)
        return out

    def _partial(self, buf: str) -> int:
        """Length of the longest end of `buf` that is a proper beginning of a stop string."""
        for n in range(min(len(buf), max(map(len, self.stops)) - 1), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
