"""Failed console sign-ins, counted per client address and in all, over a sliding window.

The 0.5 s delay after a wrong token slows one guesser but not many parallel ones; this caps
what any address (and everyone together) may fail within `WINDOW` seconds, after which
`/console/login` answers 429 with `Retry-After` until the oldest failure leaves the window.

Not aiolimiter (a dependency): its limiter waits for capacity instead of refusing, and does
not say when capacity returns, which is what `Retry-After` needs. The structure is bounded:
each window is a deque of at most its limit of timestamps, and at most `MAX_ADDRESSES`
addresses are remembered (the least recently failing is forgotten first; the global limit
still holds whatever is forgotten). Only addresses are kept, never what was presented.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["SignInThrottle"]

WINDOW = 300.0  # seconds a failure counts against its address and against everyone
PER_ADDRESS = 10  # failures one address may make within the window
GLOBAL = 100  # failures all addresses together may make within the window
MAX_ADDRESSES = 10_000


class _Window:
    """At most `limit` failure times within the last `window` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.times: deque[float] = deque(maxlen=limit)

    def retry_after(self, now: float) -> float:
        """0 if another failure is allowed now, else the seconds until one is."""
        while self.times and self.times[0] <= now - self.window:
            self.times.popleft()
        if len(self.times) < self.limit:
            return 0.0
        return self.times[0] + self.window - now

    def add(self, now: float) -> None:
        self.times.append(now)


class SignInThrottle:
    """Call `retry_after(address)` before checking a token (refuse if > 0), and `failed(
    address)` right after a wrong one, with no await between: concurrent guesses from one
    address can then never exceed the limit."""

    def __init__(
        self,
        *,
        per_address: int = PER_ADDRESS,
        global_limit: int = GLOBAL,
        window: float = WINDOW,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_address, self._window, self._max = per_address, window, max_addresses
        self._all = _Window(global_limit, window)
        self._by_address: OrderedDict[str, _Window] = OrderedDict()
        self._clock = clock

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again; 0 = now."""
        now = self._clock()
        own = self._by_address.get(address)
        mine = own.retry_after(now) if own is not None else 0.0
        return max(mine, self._all.retry_after(now))

    def failed(self, address: str) -> None:
        """Counts one wrong token from `address`."""
        now = self._clock()
        own = self._by_address.pop(address, None)
        if own is None:
            own = _Window(self._per_address, self._window)
            while len(self._by_address) >= self._max:
                self._by_address.popitem(last=False)
        self._by_address[address] = own  # most recently failing last
        own.add(now)
        self._all.add(now)
