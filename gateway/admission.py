"""Admission control: take a request only when the services it needs can serve it in time.

Per service the gateway counts the calls it has admitted and not yet finished
(``in_flight``) and keeps an EWMA of the seconds each admitted call adds to
that service's queue (``item_s``: a finished call's latency, measured from
admission, divided by the calls it found in flight plus itself; under load
this is the service's measured time per call, 1 / throughput). A new call
expects to wait ``(in_flight + weight) * item_s``. When that is past
``headroom`` of the time it has (its share of the caller's deadline), the
request is refused at once with RESOURCE_EXHAUSTED and a retry hint (how long
the calls already admitted take to drain), instead of queueing into a deadline
miss. The gateway's concurrency per service is then what that service can
serve within the deadline (throughput x deadline), measured rather than fixed.

By default a request is admitted whole or not at all: on a machine the
services share, a partial answer spends the capacity of the services that
could take it on an answer the caller did not ask for, and full answers per
second (goodput) fall as load rises. With ``partial=True`` each feature is
admitted on its own instead (services on their own machines): a service that
cannot take the call in time makes that feature a RESOURCE_EXHAUSTED
``FeatureError`` while the others are served, and the whole call is refused
only when no feature fits. An idle service (nothing in flight) always admits,
so a stale or pessimistic estimate is corrected by the next measurement
instead of locking the service out.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from prometheus_client import Counter, Gauge

from services.common.errors import Overloaded

ADMISSION_IN_FLIGHT = Gauge(
    "visionmesh_gateway_admitted_in_flight", "Admitted calls not yet finished", ["service"]
)
ADMISSION_ITEM_SECONDS = Gauge(
    "visionmesh_gateway_item_seconds",
    "EWMA of the queue time one admitted call adds (1 / measured throughput under load)",
    ["service"],
)
ADMISSION_REJECTED = Counter(
    "visionmesh_gateway_rejected_total",
    "Requests refused at admission because a service could not serve them before their deadline",
    ["service"],
)

# Bounds of a retry hint: long enough not to come straight back, short enough to matter.
MIN_RETRY_AFTER_S = 0.05
MAX_RETRY_AFTER_S = 30.0
# Retries wanted per slot that frees: enough that no slot stays empty, few enough
# that refusing them costs little (each refusal still costs a received request).
RETRIES_PER_SLOT = 4.0
# Refusals counted over this window to estimate how many callers are waiting.
REFUSAL_WINDOW_S = 2.0


@dataclass
class ServiceLoad:
    """One service's admitted calls and its measured seconds per call."""

    name: str
    item_s: float = 0.1
    alpha: float = 0.2
    in_flight: int = 0
    refusals: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=100_000)
    )

    def refused_per_s(self, now: float) -> float:
        """Refusals per second over the last ``REFUSAL_WINDOW_S``."""
        while self.refusals and self.refusals[0] < now - REFUSAL_WINDOW_S:
            self.refusals.popleft()
        return len(self.refusals) / REFUSAL_WINDOW_S

    def retry_after_s(self, now: float) -> float:
        """When to come back: once what is admitted has drained, later when many are waiting.

        ``in_flight`` slots free up per drain period; callers refused at the
        current rate would send ``rate x drain`` retries in it. The hint is
        stretched so that about ``RETRIES_PER_SLOT`` retries arrive per freed slot.
        """
        drain = self.in_flight * self.item_s
        waiting = self.refused_per_s(now) * drain
        stretch = max(1.0, waiting / (RETRIES_PER_SLOT * max(1, self.in_flight)))
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, drain * stretch))

    def expected_s(self, weight: int = 1) -> float:
        """Seconds a call of ``weight`` admitted now should take to finish."""
        return (self.in_flight + weight) * self.item_s

    def observe(self, latency_s: float, found_in_flight: int, weight: int) -> None:
        sample = latency_s / (found_in_flight + weight)
        self.item_s += self.alpha * (sample - self.item_s)
        ADMISSION_ITEM_SECONDS.labels(self.name).set(self.item_s)


@dataclass
class _Slot:
    load: ServiceLoad
    weight: int
    found_in_flight: int
    admitted_at: float
    open: bool = True


@dataclass
class Ticket:
    """The admitted request's hold on each service; ``finish`` each as its call ends."""

    clock: Callable[[], float]
    slots: dict[str, _Slot] = field(default_factory=dict)
    # Services that could not take their call in time, with the refusal to report.
    refused: dict[str, Overloaded] = field(default_factory=dict)

    @property
    def retry_after_s(self) -> float | None:
        hints = [e.retry_after_s for e in self.refused.values() if e.retry_after_s is not None]
        return max(hints) if hints else None

    def finish(self, service: str, measured: bool = True) -> None:
        """Release ``service``'s slot; ``measured`` feeds its latency to the estimate.

        Measure successes only: fast failures (refusals, dead instances) would
        read as speed, and deadline misses as the caller's budget (a hung
        instance would inflate the estimate of a service that is merely down).
        """
        slot = self.slots.get(service)
        if slot is None or not slot.open:
            return
        slot.open = False
        slot.load.in_flight -= slot.weight
        ADMISSION_IN_FLIGHT.labels(service).set(slot.load.in_flight)
        if measured:
            slot.load.observe(self.clock() - slot.admitted_at, slot.found_in_flight, slot.weight)

    def close(self) -> None:
        """Release every slot not finished yet, measuring none (cache hits, errors before
        fan-out)."""
        for service in list(self.slots):
            self.finish(service, measured=False)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Admission:
    """Per-service loads and the admit-or-refuse decision."""

    def __init__(
        self,
        services: list[str] | None = None,
        *,
        headroom: float = 0.8,
        partial: bool = False,
        initial_item_s: float = 0.1,
        alpha: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < headroom <= 1:
            raise ValueError("headroom must be in (0, 1]")
        self.headroom = headroom
        self.partial = partial
        self.initial_item_s = initial_item_s
        self.alpha = alpha
        self.clock = clock
        self.loads: dict[str, ServiceLoad] = {}
        for name in services or []:
            self.load(name)

    def load(self, service: str) -> ServiceLoad:
        if service not in self.loads:
            self.loads[service] = ServiceLoad(service, self.initial_item_s, self.alpha)
        return self.loads[service]

    def limit(self, service: str, budget_s: float) -> int:
        """Calls of weight 1 ``service`` admits at once for ``budget_s`` (the derived in-flight
        cap)."""
        load = self.load(service)
        return max(1, int(budget_s * self.headroom / load.item_s))

    def admit(self, weights: Mapping[str, int], budget_s: float | None) -> Ticket:
        """Hold ``weights[service]`` calls on each service that can serve them within ``budget_s``.

        When one cannot, ``Overloaded`` is raised with the retry hint (nothing
        held); with ``partial`` it is listed in ``ticket.refused`` instead, and
        raised only when no service can. ``budget_s`` None: no deadline, always
        admitted.
        """
        now = self.clock()
        refused: dict[str, Overloaded] = {}
        for name, weight in weights.items():
            refusal = self._refusal(self.load(name), weight, budget_s, now)
            if refusal is not None:
                ADMISSION_REJECTED.labels(name).inc()
                self.load(name).refusals.append(now)
                refused[name] = refusal
        if refused and (not self.partial or len(refused) == len(weights)):
            raise max(refused.values(), key=lambda e: e.retry_after_s or 0.0)
        ticket = Ticket(self.clock, refused=refused)
        for name, weight in weights.items():
            if name in refused:
                continue
            load = self.load(name)
            ticket.slots[name] = _Slot(load, weight, load.in_flight, now)
            load.in_flight += weight
            ADMISSION_IN_FLIGHT.labels(name).set(load.in_flight)
        return ticket

    def _refusal(
        self, load: ServiceLoad, weight: int, budget_s: float | None, now: float
    ) -> Overloaded | None:
        if budget_s is None or load.in_flight == 0:
            return None
        expected = load.expected_s(weight)
        if expected <= budget_s * self.headroom:
            return None
        retry_after = load.retry_after_s(now)
        return Overloaded(
            f"service {load.name} is at capacity: a call admitted now would take ~{expected:.2f}s, "
            f"more than the {budget_s:.2f}s its deadline leaves; retry after {retry_after:.2f}s",
            retry_after_s=retry_after,
        )
