"""
What a node is doing, for Prometheus, behind one small interface.

Server code calls L{IMetrics} hooks and never imports C{prometheus_client}:
a node without metrics, and every test that does not look at them, gets
L{NullMetrics}, whose hooks cost one method call.  L{PrometheusMetrics}
keeps its series in its own C{CollectorRegistry}, so two nodes (or two
tests) in one process never share counters.

A hook never raises: a bug or a bad value in metrics must not drop a
connection or a push.  A hook that fails is counted in
C{mpush_metrics_hook_errors_total{hook}} and its first failure is logged.

L{MetricsResource} serves the text exposition; L{HealthResource} answers a
load balancer's C{/healthz} within a bounded time, whatever the check does.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import Interface, implementer

from mpush.log_throttle import LogThrottle

__all__ = [
    "ACK_LATENCY_BUCKETS",
    "BIND_OUTCOMES",
    "FAST_CONNECT_OUTCOMES",
    "HANDSHAKE_OUTCOMES",
    "HEALTH_TIMEOUT",
    "HealthCheckError",
    "HealthResource",
    "IMetrics",
    "MAX_LABEL_LENGTH",
    "MAX_UNEXPECTED_LABEL_VALUES",
    "MetricValueError",
    "MetricsResource",
    "NullMetrics",
    "OFFLINE_EVENTS",
    "OTHER_LABEL_VALUE",
    "PUSH_RESULTS",
    "PrometheusMetrics",
    "REDIS_COMPONENTS",
    "REFUSED_REASONS",
    "WS_ORIGIN",
]

# The label values server code is expected to pass.  Others are accepted
# (see _LabelledCounter); these are created at zero up front so that rate() and
# absent() work from the first scrape.
HANDSHAKE_OUTCOMES = ("ok", "invalid", "repeat", "error")
FAST_CONNECT_OUTCOMES = ("ok", "expired", "invalid_device", "error")
BIND_OUTCOMES = ("ok", "refused", "invalid")
PUSH_RESULTS = (
    "success",
    "failure",
    "offline",
    "redirect",
    "timeout",
    "ack_timeout",
    "stored_offline",
)
OFFLINE_EVENTS = ("stored", "delivered", "expired", "dropped_full", "refused")
REDIS_COMPONENTS = (
    "sessions",
    "routes",
    "events",
    "kicks",
    "registry",
    "offline",
    "broadcast",
)
#: A WebSocket handshake from a page the origin policy does not allow.
WS_ORIGIN = "ws_origin"
REFUSED_REASONS = (
    "max_connections", "per_ip", "handshake_rate", "pre_handshake_timeout", "pending_packets",
    "read_size", "slow_reader", WS_ORIGIN, "gateway_allow",
)

# PUSH written -> ACK received: a LAN round trip is about a millisecond, a
# phone waking its radio takes seconds, and the ack timeout caps it.
ACK_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Every distinct label value is a series kept for the life of the process;
# these bound what a caller passing request data by mistake can cost.
MAX_LABEL_LENGTH = 64
MAX_UNEXPECTED_LABEL_VALUES = 32
OTHER_LABEL_VALUE = "other"

HEALTH_TIMEOUT = 2.0


class MetricValueError(ValueError):
    """
    A hook was given a count, size or duration that is not a finite,
    non-negative number.  Hooks catch it (and count it); it never reaches
    the caller.
    """


class HealthCheckError(Exception):
    """
    The health check returned something other than a mapping or C{None}.
    """


class IMetrics(Interface):
    """
    Hooks the server calls as things happen.  Implementations never raise
    and never block.  Label values are free strings; the expected ones are
    listed per hook (and in this module's C{*_OUTCOMES} etc. constants).
    """

    def connection_opened():
        """
        A client connection was accepted.
        """

    def connection_closed():
        """
        A client connection was lost, whatever the reason.
        """

    def handshake(outcome):
        """
        A HANDSHAKE was answered: C{"ok"}, C{"invalid"}, C{"repeat"} or
        C{"error"}.
        """

    def fast_connect(outcome):
        """
        A FAST_CONNECT was answered: C{"ok"}, C{"expired"},
        C{"invalid_device"} or C{"error"}.
        """

    def bind(outcome):
        """
        A BIND_USER was answered: C{"ok"}, C{"refused"} or C{"invalid"}.
        """

    def push(result, count=1):
        """
        C{count} pushes to one device ended: C{"success"}, C{"failure"},
        C{"offline"}, C{"redirect"}, C{"timeout"}, C{"ack_timeout"} or
        C{"stored_offline"}.  Each push is counted once, by the node that
        decided its result: the one that wrote it (or found its user gone),
        or the one whose API found no node to ask.
        """

    def ack_latency(seconds):
        """
        Seconds from writing a PUSH to receiving its ACK.
        """

    def offline(event, count=1):
        """
        C{count} offline messages had C{event}: C{"stored"},
        C{"delivered"}, C{"expired"}, C{"dropped_full"} or C{"refused"}.
        """

    def offline_queue_size(size):
        """
        The number of offline messages queued, as this node sees it.
        """

    def redis_error(component):
        """
        A Redis call failed in C{component}: C{"sessions"}, C{"routes"},
        C{"events"}, C{"kicks"}, C{"registry"}, C{"offline"} or
        C{"broadcast"}.
        """

    def bytes_in(n):
        """
        C{n} bytes were read from client connections.
        """

    def bytes_out(n):
        """
        C{n} bytes were written to client connections.
        """

    def refused(reason):
        """
        A connection or request was refused by a limit: C{"max_connections"},
        C{"per_ip"}, C{"handshake_rate"}, C{"gateway_allow"} (a source
        outside C{[net] gateway-allow}), or a newer limit's name.
        """

    def totals():
        """
        The push results and offline events counted so far, as
        C{{"pushes": {result: n}, "offline": {event: n}}}: what C{/metrics}
        shows, for the API's C{/v1/stats} and the console's C{stats}.
        """


@implementer(IMetrics)
class NullMetrics:
    """
    Metrics turned off: every hook does nothing.
    """

    __slots__ = ()

    def connection_opened(self):
        pass

    def connection_closed(self):
        pass

    def handshake(self, outcome):
        pass

    def fast_connect(self, outcome):
        pass

    def bind(self, outcome):
        pass

    def push(self, result, count=1):
        pass

    def ack_latency(self, seconds):
        pass

    def offline(self, event, count=1):
        pass

    def offline_queue_size(self, size):
        pass

    def redis_error(self, component):
        pass

    def bytes_in(self, n):
        pass

    def bytes_out(self, n):
        pass

    def refused(self, reason):
        pass

    def totals(self):
        return {"pushes": {}, "offline": {}}


def _amount(value: object) -> float:
    """
    A count, size or duration as a float; anything Prometheus would reject
    (or silently turn into nonsense) is a L{MetricValueError}.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise MetricValueError(f"expected a number, got {type(value).__name__}")
    amount = float(value)
    if not math.isfinite(amount) or amount < 0:
        raise MetricValueError(f"expected a finite non-negative number, got {amount!r}")
    return amount


def _label_text(value: object) -> str:
    """
    A label value as UTF-8-safe text of bounded length: one lone surrogate
    would otherwise make every later scrape fail to encode.
    """
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "replace")
    else:
        text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:MAX_LABEL_LENGTH]


class _LabelledCounter:
    """
    A counter with one label, whose series are bounded.  Expected values
    pass as they are; up to a limit, unexpected ones too (a new outcome
    should show up, not vanish); past it they fold into C{"other"}, so a
    caller passing request data cannot grow the series without bound.
    Children are cached by value: the hot path is one dict lookup.
    """

    __slots__ = ("_counter", "_children", "_limit")

    def __init__(self, counter: Counter, expected: Iterable[str], extra: int = MAX_UNEXPECTED_LABEL_VALUES):
        self._counter = counter
        # Created up front, at zero, so that rate() works from the first scrape.
        self._children = {value: counter.labels(value) for value in expected}
        self._limit = len(self._children) + extra

    def inc(self, value: object, amount: float = 1.0) -> None:
        child = self._children.get(value) if isinstance(value, str) else None
        if child is None:
            child = self._child(_label_text(value))
        child.inc(amount)

    def values(self) -> dict[str, float]:
        """Every series' value by label value, read from the counter itself."""
        found = {}
        for metric in self._counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    found.update({value: sample.value for value in sample.labels.values()})
        return found

    def _child(self, text: str):
        child = self._children.get(text)
        if child is None:
            if len(self._children) >= self._limit:
                text = OTHER_LABEL_VALUE
                child = self._children.get(text)
            if child is None:
                child = self._children[text] = self._counter.labels(text)
        return child


def _never_raises(hook: Callable[..., None], name: str | None = None) -> Callable[..., None]:
    """
    Make a hook swallow (and count, as C{name}: its own by default) its own
    errors.
    """
    name = name or hook.__name__

    @functools.wraps(hook)
    def guarded(self: PrometheusMetrics, *args: Any, **kwargs: Any) -> None:
        try:
            hook(self, *args, **kwargs)
        except Exception:
            self._hook_failed(name)

    return guarded


class _Flush:
    """
    A collector with no series of its own: reading the registry first moves
    the counts L{PrometheusMetrics} keeps on its hot path into their series.
    """

    def __init__(self, metrics):
        self._metrics = metrics

    def describe(self):
        return []

    def collect(self):
        self._metrics._flush()
        return []


@implementer(IMetrics)
class PrometheusMetrics:
    """
    L{IMetrics} as Prometheus series named C{mpush_*}.

    @ivar registry: the C{CollectorRegistry} holding this node's series; a
        new one unless given, never the process-global one.
    """

    log = Logger()

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = False):
        """
        @param process_metrics: also register the process, platform and GC
            collectors (C{process_open_fds}, C{process_resident_memory_bytes}
            ...).  Off by default because they describe the whole process:
            with two nodes in one process only one should report them.
        """
        self.registry = CollectorRegistry() if registry is None else registry
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        reg = self.registry
        # Hot-path counts (pushes, bytes, ack latencies) are plain numbers
        # here, moved into their series whenever the registry is read: this
        # collector, registered before the series, does it.
        self._bytes_in = 0
        self._bytes_out = 0
        self._push_counts: dict[str, int] = {}
        reg.register(_Flush(self))
        self._connections = Gauge("mpush_connections", "Client connections open on this node.", registry=reg)
        self._handshakes = self._labelled(
            "mpush_handshakes", "HANDSHAKE requests answered, by outcome.", "outcome", HANDSHAKE_OUTCOMES
        )
        self._fast_connects = self._labelled(
            "mpush_fast_connects", "FAST_CONNECT requests answered, by outcome.", "outcome", FAST_CONNECT_OUTCOMES
        )
        self._binds = self._labelled(
            "mpush_binds", "BIND_USER requests answered, by outcome.", "outcome", BIND_OUTCOMES
        )
        self._pushes = self._labelled("mpush_pushes", "Pushes to one device, by result.", "result", PUSH_RESULTS)
        self._ack_latency = Histogram(
            "mpush_ack_latency_seconds",
            "Seconds from writing a PUSH to receiving its ACK.",
            buckets=ACK_LATENCY_BUCKETS,
            registry=reg,
        )
        self._ack_bounds = list(getattr(self._ack_latency, "_upper_bounds", ()))
        self._ack_counts = [0] * len(self._ack_bounds)
        self._ack_sum = 0.0
        # Moving counts in relies on the histogram's buckets and sum; a
        # prometheus_client without them gets every observation as it comes.
        self._ack_batched = bool(self._ack_bounds) and all(
            hasattr(self._ack_latency, name) for name in ("_buckets", "_sum")
        )
        self._offline_messages = self._labelled(
            "mpush_offline_messages", "Offline messages, by what happened to them.", "event", OFFLINE_EVENTS
        )
        self._offline_queue = Gauge(
            "mpush_offline_queue_messages", "Offline messages queued, as this node sees it.", registry=reg
        )
        self._redis_errors = self._labelled(
            "mpush_redis_errors", "Failed Redis calls, by component.", "component", REDIS_COMPONENTS
        )
        self._received_bytes = Counter("mpush_received_bytes", "Bytes read from client connections.", registry=reg)
        self._sent_bytes = Counter("mpush_sent_bytes", "Bytes written to client connections.", registry=reg)
        self._refused = self._labelled(
            "mpush_refused", "Connections or requests refused by a limit, by reason.", "reason", REFUSED_REASONS
        )
        self._hook_errors = Counter(
            "mpush_metrics_hook_errors",
            "Metrics hooks that failed (a bad value or a bug); the server went on.",
            ["hook"],
            registry=reg,
        )
        self._logged_hooks: set[str] = set()

    def _labelled(self, name: str, documentation: str, label: str, expected: tuple[str, ...]):
        return _LabelledCounter(Counter(name, documentation, [label], registry=self.registry), expected)

    def _hook_failed(self, hook: str) -> None:
        """
        Called from inside an C{except} block: count the failure and log the
        first of each hook with its traceback (a hook failing on every packet
        must not flood the log).
        """
        self._hook_errors.labels(hook).inc()
        if hook not in self._logged_hooks:
            self._logged_hooks.add(hook)
            self.log.failure("metrics hook {hook} failed; further failures are only counted", hook=hook)

    @_never_raises
    def connection_opened(self):
        self._connections.inc()

    @_never_raises
    def connection_closed(self):
        self._connections.dec()

    @_never_raises
    def handshake(self, outcome):
        self._handshakes.inc(outcome)

    @_never_raises
    def fast_connect(self, outcome):
        self._fast_connects.inc(outcome)

    @_never_raises
    def bind(self, outcome):
        self._binds.inc(outcome)

    def push(self, result, count=1):
        if result.__class__ is str and count.__class__ is int and count >= 0:
            counts = self._push_counts
            counts[result] = counts.get(result, 0) + count
        else:
            self._push_now(result, count)

    @functools.partial(_never_raises, name="push")
    def _push_now(self, result, count=1):
        self._pushes.inc(result, _amount(count))

    def ack_latency(self, seconds):
        if self._ack_batched and seconds.__class__ is float and 0.0 <= seconds < math.inf:
            self._ack_counts[bisect.bisect_left(self._ack_bounds, seconds)] += 1
            self._ack_sum += seconds
        else:
            self._ack_latency_now(seconds)

    @functools.partial(_never_raises, name="ack_latency")
    def _ack_latency_now(self, seconds):
        self._ack_latency.observe(_amount(seconds))

    @_never_raises
    def offline(self, event, count=1):
        self._offline_messages.inc(event, _amount(count))

    @_never_raises
    def offline_queue_size(self, size):
        self._offline_queue.set(_amount(size))

    @_never_raises
    def redis_error(self, component):
        self._redis_errors.inc(component)

    def bytes_in(self, n):
        if n.__class__ is int and n >= 0:
            self._bytes_in += n
        else:
            self._bytes_in_now(n)

    @functools.partial(_never_raises, name="bytes_in")
    def _bytes_in_now(self, n):
        self._received_bytes.inc(_amount(n))

    def bytes_out(self, n):
        if n.__class__ is int and n >= 0:
            self._bytes_out += n
        else:
            self._bytes_out_now(n)

    @functools.partial(_never_raises, name="bytes_out")
    def _bytes_out_now(self, n):
        self._sent_bytes.inc(_amount(n))

    def _flush(self):
        """
        Move the hot-path counts into their series.
        """
        if self._bytes_in:
            n, self._bytes_in = self._bytes_in, 0
            self._bytes_in_now(n)
        if self._bytes_out:
            n, self._bytes_out = self._bytes_out, 0
            self._bytes_out_now(n)
        if self._push_counts:
            counts, self._push_counts = self._push_counts, {}
            for result, count in counts.items():
                self._push_many(result, count)
        if self._ack_batched and any(self._ack_counts):
            counts, total = self._ack_counts, self._ack_sum
            self._ack_counts, self._ack_sum = [0] * len(counts), 0.0
            self._ack_many(counts, total)

    @functools.partial(_never_raises, name="push")
    def _push_many(self, result, count):
        self._pushes.inc(result, count)

    @functools.partial(_never_raises, name="ack_latency")
    def _ack_many(self, counts, total):
        histogram = self._ack_latency
        histogram._sum.inc(total)
        for bucket, count in zip(histogram._buckets, counts):
            if count:
                bucket.inc(count)

    @_never_raises
    def refused(self, reason):
        self._refused.inc(reason)

    def totals(self):
        self._flush()
        return {
            "pushes": {result: int(n) for result, n in self._pushes.values().items()},
            "offline": {event: int(n) for event, n in self._offline_messages.values().items()},
        }

    def render(self) -> tuple[bytes, str]:
        """
        @return: the text exposition of this registry and its content type.
        """
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsResource(Resource):
    """
    C{GET} answers the exposition of a L{PrometheusMetrics} (anything with
    its C{render()}); other methods get 405 from twisted.web.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, metrics: PrometheusMetrics):
        if not callable(getattr(metrics, "render", None)):
            raise TypeError(f"{type(metrics).__name__} has no render(); expose a PrometheusMetrics")
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request):
        request.setHeader(b"cache-control", b"no-store")
        try:
            body, content_type = self._metrics.render()
        except Exception:
            self.log.failure("rendering metrics failed")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"metrics unavailable\n"
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body


class _HealthProbe:
    """
    One C{/healthz} request: whether its client is still there, and the
    check to cancel if it leaves.
    """

    __slots__ = ("request", "gone", "running")

    def __init__(self, request):
        self.request = request
        self.gone = False
        self.running: defer.Deferred | None = None

    def abandon(self, reason: Failure) -> None:
        self.gone = True
        if self.running is not None:
            self.running.cancel()

    def answer(self, result: tuple[int, dict]) -> None:
        if self.gone:
            return
        code, document = result
        body = json.dumps(document, default=str, sort_keys=True).encode("utf-8") + b"\n"
        self.request.setResponseCode(code)
        self.request.setHeader(b"content-type", b"application/json; charset=utf-8")
        self.request.setHeader(b"cache-control", b"no-store")
        self.request.write(body)
        self.request.finish()


class HealthResource(Resource):
    """
    C{GET} runs C{check()} and answers 200 C{{"status": "ok", ...details}}
    when it succeeds, or 503 C{{"status": "unavailable", "reason": ...}}
    when it fails or has not answered within C{timeout} seconds: a load
    balancer's probe must get an answer even when Redis hangs.

    C{check} takes no argument and returns a mapping of details (or
    C{None}), or a Deferred (or coroutine) of one; it is called once per
    request and must return a fresh Deferred each time, since a late one is
    cancelled.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        check: Callable[[], Any],
        clock: IReactorTime | None = None,
        timeout: float = HEALTH_TIMEOUT,
    ):
        if not callable(check):
            raise TypeError(f"health check must be callable, not {type(check).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
            raise TypeError(f"health timeout must be a number, not {type(timeout).__name__}")
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"health timeout must be a positive number of seconds, not {timeout!r}")
        super().__init__()
        if clock is None:
            from twisted.internet import reactor as clock
        self._check = check
        self._clock = clock
        self._timeout = float(timeout)
        self._warnings = LogThrottle(clock)

    def render_GET(self, request):
        probe = _HealthProbe(request)
        request.notifyFinish().addErrback(probe.abandon)
        checking = defer.maybeDeferred(self._check)
        probe.running = checking
        checking.addTimeout(self._timeout, self._clock)
        checking.addCallback(_healthy)
        checking.addErrback(self._unhealthy)
        checking.addCallback(probe.answer)
        checking.addErrback(self._answer_failed)
        return NOT_DONE_YET

    def _unhealthy(self, reason: Failure) -> tuple[int, dict]:
        if reason.check(defer.TimeoutError):
            why = f"health check did not answer within {self._timeout:g} s"
        elif reason.check(defer.CancelledError):
            # The client went away and its probe was abandoned: no news.
            return 503, {"status": "unavailable", "reason": "health check cancelled"}
        else:
            message = str(reason.value)
            why = f"{reason.type.__name__}: {message}" if message else reason.type.__name__
        self._warnings.warn(self.log, "health", "health check failed: {why}", why=why)
        return 503, {"status": "unavailable", "reason": why}

    def _answer_failed(self, reason: Failure) -> None:
        self.log.failure("writing the health answer failed", reason)


def _healthy(details: object) -> tuple[int, dict]:
    if details is None:
        details = {}
    if not isinstance(details, Mapping):
        raise HealthCheckError(f"health check returned {type(details).__name__}, not a mapping")
    document = {str(key): value for key, value in details.items()}
    document["status"] = "ok"
    return 200, document
