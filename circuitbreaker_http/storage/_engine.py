"""The sans-I/O sync engine: what a process sends for its breakers, and what a reply means.

Theory of operation
-------------------

A registry with a storage has one :class:`SyncEngine`. It never does I/O and
never reads a clock of its own: a syncer (a thread, or an asyncio task)
calls :meth:`SyncEngine.collect` to get the round's reports, sends them
through its storage however it does I/O, and hands the replies to
:meth:`SyncEngine.apply`, or calls :meth:`SyncEngine.failed` when the storage
could not be reached. So every storage and every I/O loop shares one meaning.

What changed. The hot path is never touched: the engine learns of a trip or
a manual action from a :class:`StateChange` subscription (transitions it
adopted itself carry a ``fleet:`` reason and are not proposed back), and of
new outcomes by comparing each breaker's monotonic window counts
(:meth:`CircuitBreaker.sync_view`) with those last flushed. A breaker with
nothing new, no lease wanted or returned, and no notice from the storage is
left out of the round; a round with no report sends nothing.

Cycles. Each breaker's track holds the fleet cycle it last saw. Reports are
tagged with it, so the storage drops deltas and trip proposals of a cycle the
fleet has left. A reply whose cycle differs is a fleet-wide transition and is
adopted (the local window counts are then re-based: what was counted in the
old cycle stays there); a reply in the same cycle means the fleet did not
move, for instance when it refused a trip for want of ``min_reporters``: the
local trip then stays local. On first contact only a fleet that is not closed
is adopted. A fresh reply (the storage had nothing: new key, expired or
wiped) never closes a breaker that is open here: local breaking goes on, and
a manual state is proposed again so an operator's choice survives a wipe.

Failure. Nothing is marked sent until a reply arrives, so after an outage the
next round carries everything counted meanwhile (the deltas merge back);
proposals and lease returns are kept for it. Breakers waiting on fleet leases
fall back to local trials while the storage is away.
"""

from __future__ import annotations

import random as _random
import threading
from collections import deque
from collections.abc import Callable, Sequence

from .._breaker import CircuitBreaker, Subscription
from .._core import CircuitState, FleetState, StateChange
from .._core._machine import FLEET_REASON_PREFIX
from ._protocol import MANUAL_ACTIONS, BreakerReport, FleetSettings

__all__ = ["SyncEngine"]

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN
_DISABLED = CircuitState.DISABLED
_MANUAL_OF = {_FORCED_OPEN: "force_open", _DISABLED: "disable"}


class _Track:
    """The engine's bookkeeping for one breaker."""

    __slots__ = (
        "breaker",
        "fleet_cycle",
        "manual",
        "notified",
        "refresh_at",
        "returns",
        "sent",
        "settings",
        "trip",
        "window_cycle",
    )

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.settings = FleetSettings.of(breaker.config)
        self.fleet_cycle = 0  # fleet cycle last seen; 0 before first contact
        self.window_cycle = 0
        self.sent = (0, 0, 0)  # window counts of window_cycle already flushed
        self.trip: str | None = None
        self.manual: str | None = None
        self.returns: tuple[tuple[str, bool | None], ...] = ()
        self.notified = False
        self.refresh_at = 0.0


class SyncEngine:
    """Turns a registry's breakers into storage reports and replies into breaker moves.

    Args:
        refresh: Seconds after which a breaker that is not closed is reported
            again even when nothing changed, so its shared state (a manual
            state, say) is rewritten before it expires and after a wipe.
        random: A zero-argument callable in ``[0, 1)`` for the open jitter.
    """

    def __init__(
        self, *, refresh: float = 10.0, random: Callable[[], float] = _random.random
    ) -> None:
        self._tracks: dict[str, _Track] = {}
        self._lock = threading.Lock()
        self._events: deque[StateChange] = deque()
        self._notices: deque[str] = deque()
        self._subscription = Subscription(self._on_change, (StateChange,))
        self._refresh = refresh
        self._random = random
        self._in_flight: list[tuple[_Track, BreakerReport, tuple[int, int, int], int]] = []
        #: Called (from any thread) when something should be sent soon: a
        #: trip, a manual action, a notice. A syncer sets it to wake itself.
        self.wake: Callable[[], None] = lambda: None
        #: Called with the key (in the creating thread) after a breaker starts
        #: being synced: a storage learns the name its notifications will
        #: carry, an asyncio syncer starts its task once it sees a running loop.
        self.tracked: Callable[[str], None] = lambda key: None

    # -- wiring ----------------------------------------------------------------

    def track(self, breaker: CircuitBreaker) -> None:
        """Start syncing ``breaker`` (its name is the key)."""
        with self._lock:
            if breaker.name in self._tracks:
                return
            self._tracks[breaker.name] = _Track(breaker)
        breaker.attach(self._subscription)
        self.tracked(breaker.name)

    def forget(self, key: str) -> None:
        """Stop syncing the breaker of ``key`` (dropped by the registry)."""
        with self._lock:
            track = self._tracks.pop(key, None)
        if track is not None:
            track.breaker.detach(self._subscription)

    def notice(self, key: str) -> None:
        """The storage says ``key`` moved fleet-wide: read it in the next round."""
        self._notices.append(key)
        self.wake()

    def _on_change(self, change: StateChange) -> None:
        if change.reason.startswith(FLEET_REASON_PREFIX):
            return
        self._events.append(change)
        if change.reason in MANUAL_ACTIONS or change.new is _OPEN:
            self.wake()

    # -- a round ---------------------------------------------------------------

    def collect(self, now: float) -> list[BreakerReport]:
        """Return the reports of this round (empty when idle). ``now`` is the syncer's clock.

        Every call must be followed by :meth:`apply` or :meth:`failed`.
        """
        with self._lock:
            tracks = self._tracks
            events = self._events
            while events:
                change = events.popleft()
                track = tracks.get(change.name)
                if track is None:
                    continue
                if change.reason in MANUAL_ACTIONS:
                    track.manual = change.reason
                    track.trip = None
                elif change.old is _CLOSED and change.new is _OPEN:
                    track.trip = change.reason
            notices = self._notices
            while notices:
                track = tracks.get(notices.popleft())
                if track is not None:
                    track.notified = True
            snapshot = list(tracks.values())
        in_flight = []
        reports = []
        for track in snapshot:
            try:
                view = track.breaker.sync_view()
            except ValueError:
                continue  # its clock is broken; it cannot be judged this round
            base = track.sent if view.window_cycle == track.window_cycle else (0, 0, 0)
            calls = view.calls - base[0]
            failures = view.failures - base[1]
            slow = view.slow_calls - base[2]
            returns = track.returns + view.lease_returns
            track.returns = returns  # kept until a reply arrives
            refresh = view.state is not _CLOSED and now >= track.refresh_at
            if not (
                calls
                or track.trip
                or track.manual
                or returns
                or view.leases_wanted
                or track.notified
                or refresh
            ):
                continue
            report = BreakerReport(
                key=track.breaker.name,
                settings=track.settings,
                fleet_cycle=track.fleet_cycle,
                calls=calls,
                failures=failures,
                slow_calls=slow,
                trip=track.trip,
                manual=track.manual,
                lease_returns=returns,
                leases_wanted=view.leases_wanted,
                # A Retry-After comes with a failure: send it with the failures.
                not_before=view.not_before if failures else None,
                random=self._random(),
            )
            reports.append(report)
            counts = (view.calls, view.failures, view.slow_calls)
            in_flight.append((track, report, counts, view.window_cycle))
        self._in_flight = in_flight
        return reports

    def apply(self, replies: Sequence[FleetState], now: float) -> None:
        """Apply the storage's replies to the reports of the last :meth:`collect`, in order."""
        in_flight, self._in_flight = self._in_flight, []
        for (track, report, counts, window_cycle), reply in zip(in_flight, replies, strict=True):
            track.sent = counts
            track.window_cycle = window_cycle
            track.returns = ()
            track.notified = False
            track.refresh_at = now + self._refresh
            if track.trip == report.trip:
                track.trip = None
            if track.manual == report.manual:
                track.manual = None
            self._apply_one(track, report, reply)

    def _apply_one(self, track: _Track, report: BreakerReport, reply: FleetState) -> None:
        breaker = track.breaker
        state = breaker.state
        if reply.fresh and reply.state is _CLOSED and state is not _CLOSED:
            # The storage lost this breaker (expired or wiped): keep breaking
            # locally, and put a manual state back.
            track.fleet_cycle = reply.fleet_cycle
            track.manual = _MANUAL_OF.get(state)
            return
        moved = (
            reply.fleet_cycle != report.fleet_cycle
            if report.fleet_cycle
            else reply.state is not _CLOSED
        )
        track.fleet_cycle = reply.fleet_cycle
        if moved:
            breaker.adopt(reply)
            # What the old cycle counted stays there: re-base the counts.
            view = breaker.sync_view()
            track.sent = (view.calls, view.failures, view.slow_calls)
            track.window_cycle = view.window_cycle
            track.returns = view.lease_returns
        elif reply.leases:
            breaker.grant_leases(reply.leases)

    def failed(self) -> None:
        """The last :meth:`collect`'s reports were not delivered: keep everything for later."""
        # Proposals and lease returns stay on their tracks (only apply() clears
        # them) and the counts were not marked sent: the next round has it all.
        self._in_flight = []
        with self._lock:
            tracks = list(self._tracks.values())
        for track in tracks:
            # No lease can come: trials follow local rules until the storage is back.
            track.breaker.leave_fleet()
