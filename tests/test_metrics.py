"""
Tests for L{mpush.metrics}: the hooks move their series, never raise, and
the web resources answer (health within its timeout, whatever the check).
"""

import datetime
import inspect
import json
import math
import platform
import sys

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site, UnsupportedMethod
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from mpush.metrics import (
    ACK_LATENCY_BUCKETS,
    BIND_OUTCOMES,
    FAST_CONNECT_OUTCOMES,
    HANDSHAKE_OUTCOMES,
    HEALTH_TIMEOUT,
    MAX_LABEL_LENGTH,
    MAX_UNEXPECTED_LABEL_VALUES,
    OFFLINE_EVENTS,
    OTHER_LABEL_VALUE,
    PUSH_RESULTS,
    REDIS_COMPONENTS,
    REFUSED_REASONS,
    HealthResource,
    IMetrics,
    MetricsResource,
    MetricValueError,
    NullMetrics,
    PrometheusMetrics,
)

#: Hook name -> arguments a caller might plausibly pass, for the sweeps.
GOOD_CALLS = {
    "connection_opened": (),
    "connection_closed": (),
    "handshake": ("ok",),
    "fast_connect": ("expired",),
    "bind": ("refused",),
    "push": ("success",),
    "ack_latency": (0.2,),
    "offline": ("stored", 3),
    "offline_queue_size": (12,),
    "redis_error": ("routes",),
    "bytes_in": (100,),
    "bytes_out": (200,),
    "refused": ("per_ip",),
}

#: Metric names the brief promises (as they appear in the exposition).
EXPOSED_NAMES = (
    "mpush_connections",
    "mpush_handshakes_total",
    "mpush_fast_connects_total",
    "mpush_binds_total",
    "mpush_pushes_total",
    "mpush_ack_latency_seconds_bucket",
    "mpush_ack_latency_seconds_count",
    "mpush_ack_latency_seconds_sum",
    "mpush_offline_messages_total",
    "mpush_offline_queue_messages",
    "mpush_redis_errors_total",
    "mpush_received_bytes_total",
    "mpush_sent_bytes_total",
    "mpush_refused_total",
)


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def exposed_samples(body):
    """
    Parse an exposition the way a scraper would: {(name, labels): value}.
    """
    found = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


class NullMetricsTests(unittest.SynchronousTestCase):
    def test_provides_interface(self):
        self.assertTrue(verifyObject(IMetrics, NullMetrics()))

    def test_hooks_do_nothing_and_keep_no_state(self):
        """
        Every hook returns None, whatever it is given, and there is nowhere
        for it to keep anything.
        """
        metrics = NullMetrics()
        self.assertFalse(hasattr(metrics, "__dict__"))
        for name, args in GOOD_CALLS.items():
            self.assertIsNone(getattr(metrics, name)(*args), name)
        self.assertIsNone(metrics.bytes_in(-5))
        self.assertIsNone(metrics.push(None))

    def test_covers_the_interface(self):
        self.assertEqual(set(IMetrics.names()) - {"totals"}, set(GOOD_CALLS))

    def test_totals_are_empty(self):
        self.assertEqual(NullMetrics().totals(), {"pushes": {}, "offline": {}})


class PrometheusMetricsInterfaceTests(unittest.SynchronousTestCase):
    def test_provides_interface(self):
        self.assertTrue(verifyObject(IMetrics, PrometheusMetrics()))

    def test_hook_signatures_match_interface(self):
        """
        The guard around each hook hides its signature from verifyObject;
        check the real one against the interface.
        """
        for name in IMetrics.names():
            declared = IMetrics[name].getSignatureInfo()
            params = list(inspect.signature(getattr(PrometheusMetrics, name)).parameters.values())[1:]
            self.assertEqual(tuple(p.name for p in params), tuple(declared["positional"]), name)
            defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
            self.assertEqual(defaults, declared["optional"], name)

    def test_totals_are_what_is_exposed(self):
        """
        totals() reads the series /metrics shows, hot-path counts included
        (they are moved in first), so no door can disagree with another.
        """
        metrics = PrometheusMetrics()
        metrics.push("success")
        metrics.push("success", 4)
        metrics.push("offline")
        metrics.offline("stored", 2)
        totals = metrics.totals()
        self.assertEqual(totals["pushes"]["success"], 5)
        self.assertEqual(totals["pushes"]["offline"], 1)
        self.assertEqual(totals["pushes"]["stored_offline"], 0)
        self.assertEqual(totals["offline"]["stored"], 2)
        exposed = exposed_samples(metrics.render()[0])
        for result, count in totals["pushes"].items():
            self.assertEqual(exposed[("mpush_pushes_total", (("result", result),))], count, result)
        for event, count in totals["offline"].items():
            self.assertEqual(exposed[("mpush_offline_messages_total", (("event", event),))], count, event)

    def test_own_registry_by_default(self):
        metrics = PrometheusMetrics()
        self.assertIsInstance(metrics.registry, CollectorRegistry)
        self.assertIsNot(metrics.registry, REGISTRY)
        self.assertIsNone(REGISTRY.get_sample_value("mpush_connections"))

    def test_given_registry_is_used(self):
        registry = CollectorRegistry()
        metrics = PrometheusMetrics(registry)
        self.assertIs(metrics.registry, registry)
        metrics.connection_opened()
        self.assertEqual(registry.get_sample_value("mpush_connections"), 1.0)

    def test_instances_are_independent(self):
        first, second = PrometheusMetrics(), PrometheusMetrics()
        first.connection_opened()
        first.handshake("ok")
        first.bytes_in(10)
        self.assertEqual(sample(first, "mpush_connections"), 1.0)
        self.assertEqual(sample(second, "mpush_connections"), 0.0)
        self.assertEqual(sample(second, "mpush_handshakes_total", outcome="ok"), 0.0)
        self.assertEqual(sample(second, "mpush_received_bytes_total"), 0.0)

    def test_no_process_metrics_by_default(self):
        self.assertIsNone(sample(PrometheusMetrics(), "python_info", **_python_info_labels()))

    def test_process_metrics_on_request(self):
        metrics = PrometheusMetrics(process_metrics=True)
        self.assertEqual(sample(metrics, "python_info", **_python_info_labels()), 1.0)
        if sys.platform.startswith("linux"):
            self.assertGreater(sample(metrics, "process_open_fds"), 0)


def _python_info_labels():
    """
    The labels of the C{python_info} series the platform collector adds.
    """
    major, minor, patchlevel = platform.python_version_tuple()
    return {
        "implementation": platform.python_implementation(),
        "major": major,
        "minor": minor,
        "patchlevel": patchlevel,
        "version": platform.python_version(),
    }


class PrometheusHookTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.metrics = PrometheusMetrics()

    def test_connections_gauge(self):
        self.metrics.connection_opened()
        self.metrics.connection_opened()
        self.metrics.connection_closed()
        self.assertEqual(sample(self.metrics, "mpush_connections"), 1.0)

    def _check_labelled(self, hook, name, label, expected):
        """
        Every expected value exists at zero before the hook runs and moves
        only its own series.
        """
        for value in expected:
            self.assertEqual(sample(self.metrics, name, **{label: value}), 0.0, value)
        for count, value in enumerate(expected, start=1):
            for _ in range(count):
                getattr(self.metrics, hook)(value)
        for count, value in enumerate(expected, start=1):
            self.assertEqual(sample(self.metrics, name, **{label: value}), float(count), value)

    def test_handshake(self):
        self._check_labelled("handshake", "mpush_handshakes_total", "outcome", HANDSHAKE_OUTCOMES)

    def test_fast_connect(self):
        self._check_labelled("fast_connect", "mpush_fast_connects_total", "outcome", FAST_CONNECT_OUTCOMES)

    def test_bind(self):
        self._check_labelled("bind", "mpush_binds_total", "outcome", BIND_OUTCOMES)

    def test_push(self):
        self._check_labelled("push", "mpush_pushes_total", "result", PUSH_RESULTS)

    def test_redis_error(self):
        self._check_labelled("redis_error", "mpush_redis_errors_total", "component", REDIS_COMPONENTS)

    def test_refused(self):
        self._check_labelled("refused", "mpush_refused_total", "reason", REFUSED_REASONS)

    def test_refused_future_reason(self):
        """
        A limit added later shows up under its own name.
        """
        self.metrics.refused("push_rate")
        self.assertEqual(sample(self.metrics, "mpush_refused_total", reason="push_rate"), 1.0)

    def test_offline(self):
        self._check_labelled("offline", "mpush_offline_messages_total", "event", OFFLINE_EVENTS)

    def test_offline_count(self):
        self.metrics.offline("expired", 5)
        self.metrics.offline("expired", count=2)
        self.metrics.offline("expired", 0)
        self.assertEqual(sample(self.metrics, "mpush_offline_messages_total", event="expired"), 7.0)

    def test_offline_queue_size_is_set_not_added(self):
        self.metrics.offline_queue_size(40)
        self.metrics.offline_queue_size(15)
        self.assertEqual(sample(self.metrics, "mpush_offline_queue_messages"), 15.0)
        self.metrics.offline_queue_size(0)
        self.assertEqual(sample(self.metrics, "mpush_offline_queue_messages"), 0.0)

    def test_bytes(self):
        self.metrics.bytes_in(100)
        self.metrics.bytes_in(23)
        self.metrics.bytes_out(7)
        self.assertEqual(sample(self.metrics, "mpush_received_bytes_total"), 123.0)
        self.assertEqual(sample(self.metrics, "mpush_sent_bytes_total"), 7.0)

    def test_ack_latency_histogram(self):
        for seconds in (0.0005, 0.003, 0.003, 0.4, 7, 30):
            self.metrics.ack_latency(seconds)
        bucket = "mpush_ack_latency_seconds_bucket"
        self.assertEqual(sample(self.metrics, bucket, le="0.001"), 1.0)
        self.assertEqual(sample(self.metrics, bucket, le="0.005"), 3.0)
        self.assertEqual(sample(self.metrics, bucket, le="0.5"), 4.0)
        self.assertEqual(sample(self.metrics, bucket, le="10.0"), 5.0)
        self.assertEqual(sample(self.metrics, bucket, le="+Inf"), 6.0)
        self.assertEqual(sample(self.metrics, "mpush_ack_latency_seconds_count"), 6.0)
        self.assertAlmostEqual(sample(self.metrics, "mpush_ack_latency_seconds_sum"), 37.4065)

    def test_ack_latency_buckets_span_1ms_to_10s(self):
        self.assertEqual(ACK_LATENCY_BUCKETS[0], 0.001)
        self.assertEqual(ACK_LATENCY_BUCKETS[-1], 10.0)
        self.assertEqual(list(ACK_LATENCY_BUCKETS), sorted(set(ACK_LATENCY_BUCKETS)))

    def test_every_hook_moves_a_series(self):
        """
        A sweep over the whole interface: each hook changes the exposition.
        """
        for name, args in GOOD_CALLS.items():
            before = exposed_samples(self.metrics.render()[0])
            getattr(self.metrics, name)(*args)
            after = exposed_samples(self.metrics.render()[0])
            moved = {key for key in after if key[0].startswith("mpush_") and after[key] != before.get(key)}
            self.assertTrue(moved, name)


class PrometheusBadInputTests(unittest.SynchronousTestCase):
    """
    Hooks given bad values do not raise and do not move their series; the
    failure is counted, and logged once per hook.
    """

    def setUp(self):
        self.metrics = PrometheusMetrics()

    def hook_errors(self, hook):
        return sample(self.metrics, "mpush_metrics_hook_errors_total", hook=hook) or 0.0

    def test_bad_amounts(self):
        bad = (-1, -0.5, math.nan, math.inf, "10", None, True, b"3", [1])
        for value in bad:
            self.assertIsNone(self.metrics.bytes_in(value))
            self.assertIsNone(self.metrics.bytes_out(value))
            self.assertIsNone(self.metrics.ack_latency(value))
            self.assertIsNone(self.metrics.offline_queue_size(value))
            self.assertIsNone(self.metrics.offline("stored", value))
        self.assertEqual(sample(self.metrics, "mpush_received_bytes_total"), 0.0)
        self.assertEqual(sample(self.metrics, "mpush_sent_bytes_total"), 0.0)
        self.assertEqual(sample(self.metrics, "mpush_ack_latency_seconds_count"), 0.0)
        self.assertEqual(sample(self.metrics, "mpush_offline_queue_messages"), 0.0)
        self.assertEqual(sample(self.metrics, "mpush_offline_messages_total", event="stored"), 0.0)
        for hook in ("bytes_in", "bytes_out", "ack_latency", "offline_queue_size", "offline"):
            self.assertEqual(self.hook_errors(hook), float(len(bad)), hook)
        logged = self.flushLoggedErrors(MetricValueError)
        self.assertEqual(len(logged), 5)

    def test_good_values_still_count_after_bad(self):
        self.metrics.bytes_in(-1)
        self.metrics.bytes_in(5)
        self.assertEqual(sample(self.metrics, "mpush_received_bytes_total"), 5.0)
        self.assertEqual(len(self.flushLoggedErrors(MetricValueError)), 1)

    def test_broken_internals_do_not_raise(self):
        """
        A bug inside a hook (here: a series that has gone) is swallowed too.
        """
        self.metrics._handshakes = None
        self.metrics._binds = None
        self.assertIsNone(self.metrics.handshake("ok"))
        self.assertIsNone(self.metrics.bind("ok"))
        self.assertEqual(self.hook_errors("handshake"), 1.0)
        self.assertEqual(self.hook_errors("bind"), 1.0)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 2)

    def test_weird_labels_do_not_raise(self):
        weird = (
            None,
            42,
            b"bytes\xff",
            "",
            'quote " back \\ newline \n tab \t',
            "\udc80 lone surrogate",
            "\u00e9\u4e2d\U0001f600",
            "x" * 10_000,
        )
        for value in weird:
            for hook in ("handshake", "fast_connect", "bind", "push", "redis_error", "refused"):
                self.assertIsNone(getattr(self.metrics, hook)(value))
            self.assertIsNone(self.metrics.offline(value))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(sample(self.metrics, "mpush_pushes_total", result="None"), 1.0)
        self.assertEqual(sample(self.metrics, "mpush_pushes_total", result="42"), 1.0)
        self.assertEqual(sample(self.metrics, "mpush_pushes_total", result="bytes\ufffd"), 1.0)
        self.assertEqual(sample(self.metrics, "mpush_pushes_total", result="\u00e9\u4e2d\U0001f600"), 1.0)

    def test_weird_labels_keep_the_exposition_valid(self):
        """
        A lone surrogate would make every later scrape fail to encode; it
        is escaped, and the whole exposition still parses.
        """
        self.metrics.push("\udc80")
        self.metrics.push('a"b\\c\nd')
        found = exposed_samples(self.metrics.render()[0])
        self.assertEqual(found[("mpush_pushes_total", (("result", "\\udc80"),))], 1.0)
        self.assertEqual(found[("mpush_pushes_total", (("result", 'a"b\\c\nd'),))], 1.0)

    def test_long_label_truncated(self):
        self.metrics.refused("r" * 1000)
        self.assertEqual(sample(self.metrics, "mpush_refused_total", reason="r" * MAX_LABEL_LENGTH), 1.0)

    def test_unexpected_label_values_are_bounded(self):
        """
        Past the limit, new values fold into "other"; values already seen
        and expected ones keep their own series.
        """
        for n in range(MAX_UNEXPECTED_LABEL_VALUES):
            self.metrics.push(f"new-{n}")
        self.metrics.push("one-too-many")
        self.metrics.push("another")
        self.metrics.push("new-0")
        self.metrics.push("success")
        self.assertEqual(sample(self.metrics, "mpush_pushes_total", result=OTHER_LABEL_VALUE), 2.0)
        self.assertIsNone(sample(self.metrics, "mpush_pushes_total", result="one-too-many"))
        self.assertEqual(sample(self.metrics, "mpush_pushes_total", result="new-0"), 2.0)
        self.assertEqual(sample(self.metrics, "mpush_pushes_total", result="success"), 1.0)
        # Each label has its own budget.
        self.metrics.bind("new-0")
        self.assertEqual(sample(self.metrics, "mpush_binds_total", outcome="new-0"), 1.0)


class RenderTests(unittest.SynchronousTestCase):
    def test_render(self):
        metrics = PrometheusMetrics()
        metrics.handshake("ok")
        body, content_type = metrics.render()
        self.assertIsInstance(body, bytes)
        self.assertEqual(content_type, CONTENT_TYPE_LATEST)
        found = exposed_samples(body)
        names = {name for name, _ in found}
        for name in EXPOSED_NAMES:
            self.assertIn(name, names)
        self.assertEqual(found[("mpush_handshakes_total", (("outcome", "ok"),))], 1.0)


class MetricsResourceTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.metrics = PrometheusMetrics()
        self.resource = MetricsResource(self.metrics)

    def test_get(self):
        self.metrics.push("offline")
        request = DummyRequest([])
        request.method = b"GET"
        request.render(self.resource)
        self.assertEqual(request.finished, 1)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [CONTENT_TYPE_LATEST.encode("ascii")]
        )
        found = exposed_samples(b"".join(request.written))
        self.assertEqual(found[("mpush_pushes_total", (("result", "offline"),))], 1.0)

    def test_other_methods_unsupported(self):
        for method in (b"POST", b"PUT", b"DELETE"):
            request = DummyRequest([])
            request.method = method
            error = self.assertRaises(UnsupportedMethod, self.resource.render, request)
            self.assertIn(b"GET", error.allowedMethods)

    def test_needs_something_to_render(self):
        self.assertRaises(TypeError, MetricsResource, NullMetrics())

    def test_render_failure_is_500(self):
        self.metrics.render = lambda: 1 / 0
        request = DummyRequest([])
        request.method = b"GET"
        request.render(self.resource)
        self.assertEqual(request.responseCode, 500)
        self.assertEqual(b"".join(request.written), b"metrics unavailable\n")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class HealthResourceTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()

    def get(self, check, **kwargs):
        resource = HealthResource(check, clock=self.clock, **kwargs)
        request = DummyRequest([])
        request.method = b"GET"
        self.assertIs(resource.render(request), NOT_DONE_YET)
        return request

    def answer(self, request):
        self.assertEqual(request.finished, 1)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
        )
        return request.responseCode, json.loads(b"".join(request.written))

    def test_ok_dict(self):
        request = self.get(lambda: {"connections": 3, "redis": "up"})
        self.assertEqual(self.answer(request), (200, {"status": "ok", "connections": 3, "redis": "up"}))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ok_none(self):
        self.assertEqual(self.answer(self.get(lambda: None)), (200, {"status": "ok"}))

    def test_status_key_is_ours(self):
        code, body = self.answer(self.get(lambda: {"status": "degraded"}))
        self.assertEqual((code, body["status"]), (200, "ok"))

    def test_details_not_json_are_stringified(self):
        when = datetime.datetime(2025, 1, 2, 3, 4, 5)
        code, body = self.answer(self.get(lambda: {"since": when, 7: "seven"}))
        self.assertEqual(code, 200)
        self.assertEqual(body["since"], str(when))
        self.assertEqual(body["7"], "seven")

    def test_ok_deferred(self):
        pending = defer.Deferred()
        request = self.get(lambda: pending)
        self.assertEqual(request.finished, 0)
        pending.callback({"node": "a"})
        self.assertEqual(self.answer(request), (200, {"status": "ok", "node": "a"}))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ok_coroutine(self):
        async def check():
            return {"async": True}

        self.assertEqual(self.answer(self.get(check)), (200, {"status": "ok", "async": True}))

    def test_check_raises(self):
        def check():
            raise RuntimeError("redis down")

        self.assertEqual(
            self.answer(self.get(check)), (503, {"status": "unavailable", "reason": "RuntimeError: redis down"})
        )

    def test_check_fails_later(self):
        pending = defer.Deferred()
        request = self.get(lambda: pending)
        pending.errback(ConnectionRefusedError())
        code, body = self.answer(request)
        self.assertEqual((code, body), (503, {"status": "unavailable", "reason": "ConnectionRefusedError"}))

    def test_check_returns_non_mapping(self):
        code, body = self.answer(self.get(lambda: ["ok"]))
        self.assertEqual(code, 503)
        self.assertEqual(body["status"], "unavailable")
        self.assertIn("HealthCheckError", body["reason"])
        self.assertIn("list", body["reason"])

    def test_hung_check_answers_503_at_the_timeout(self):
        cancelled = []
        hung = defer.Deferred(cancelled.append)
        request = self.get(lambda: hung)
        self.clock.advance(HEALTH_TIMEOUT - 0.001)
        self.assertEqual(request.finished, 0)
        self.clock.advance(0.001)
        code, body = self.answer(request)
        self.assertEqual(code, 503)
        self.assertEqual(body, {"status": "unavailable", "reason": "health check did not answer within 2 s"})
        self.assertEqual(cancelled, [hung])

    def test_hung_check_without_canceller(self):
        """
        A check that cannot be cancelled still gets its 503, and its late
        result is dropped rather than answered twice.
        """
        hung = defer.Deferred()
        request = self.get(lambda: hung, timeout=0.5)
        self.clock.advance(0.5)
        code, body = self.answer(request)
        self.assertEqual(code, 503)
        self.assertIn("0.5 s", body["reason"])
        hung.callback({"late": True})
        self.assertEqual(request.finished, 1)

    def test_client_gone_cancels_check(self):
        cancelled = []
        hung = defer.Deferred(cancelled.append)
        request = self.get(lambda: hung)
        request.processingFailed(Failure(ConnectionDone()))
        self.assertEqual(cancelled, [hung])
        self.assertEqual(request.written, [])
        self.assertEqual(request.finished, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_other_methods_unsupported(self):
        resource = HealthResource(dict, clock=self.clock)
        request = DummyRequest([])
        request.method = b"POST"
        self.assertRaises(UnsupportedMethod, resource.render, request)

    def test_bad_arguments(self):
        self.assertRaises(TypeError, HealthResource, "not callable", clock=self.clock)
        for timeout in (0, -1, math.nan, math.inf):
            self.assertRaises(ValueError, HealthResource, dict, clock=self.clock, timeout=timeout)
        for timeout in ("2", None, True):
            self.assertRaises(TypeError, HealthResource, dict, clock=self.clock, timeout=timeout)


class _TrackingFactory(WrappingFactory):
    """
    Knows when its last connection is gone, so a test can end with a clean
    reactor without waiting on wall-clock time.
    """

    def __init__(self, wrapped):
        super().__init__(wrapped)
        self._waiting = []

    def unregisterProtocol(self, protocol):
        super().unregisterProtocol(protocol)
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def wait_idle(self):
        if not self.protocols:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        return d


class LoopbackSiteTests(unittest.TestCase):
    """
    Both resources mounted as the lead mounts them, over a real Site on a
    loopback port.
    """

    def setUp(self):
        from twisted.internet import reactor

        self.metrics = PrometheusMetrics()
        root = Resource()
        root.putChild(b"metrics", MetricsResource(self.metrics))
        root.putChild(b"healthz", HealthResource(lambda: {"connections": 1}))
        factory = _TrackingFactory(Site(root))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(factory.wait_idle)
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)
        self.base = f"http://127.0.0.1:{port.getHost().port}".encode("ascii")

    @defer.inlineCallbacks
    def fetch(self, method, path):
        response = yield self.agent.request(method, self.base + path)
        body = yield readBody(response)
        return response, body

    @defer.inlineCallbacks
    def test_metrics_get(self):
        self.metrics.bytes_out(321)
        response, body = yield self.fetch(b"GET", b"/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [CONTENT_TYPE_LATEST.encode("ascii")])
        self.assertEqual(exposed_samples(body)[("mpush_sent_bytes_total", ())], 321.0)

    @defer.inlineCallbacks
    def test_metrics_post_405(self):
        response, _ = yield self.fetch(b"POST", b"/metrics")
        self.assertEqual(response.code, 405)

    @defer.inlineCallbacks
    def test_healthz(self):
        response, body = yield self.fetch(b"GET", b"/healthz")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body), {"status": "ok", "connections": 1})
