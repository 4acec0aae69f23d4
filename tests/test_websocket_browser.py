"""
The WebSocket page in a real browser: headless Chromium opens it on a
loopback node, binds the user from C{?user=}, and shows what the NodeAPI
pushes.  The test drives Chromium over the DevTools protocol (its
remote-debugging WebSocket, with autobahn's client) and reads the page's
DOM with C{Runtime.evaluate}.

Without Chromium the test is skipped, except under CI (C{CI} set), where
a missing browser is a failure: .ci/run installs it.
"""

import itertools
import json
import os
import shutil

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, error, protocol, reactor, task
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mpush.node_api import PushRequest
from mpush.protocol.client_type import ClientType

from tests.test_websocket import WsLoopbackNode

#: Seconds any one step (start, load, a DOM change) may take.
STEP = 30

#: The page's state, as its body's data-state attribute (null while loading).
STATE = "document.body && document.body.dataset.state"

#: Where Debian puts the browser itself; C{/usr/bin/chromium} is a shell
#: wrapper that adds flags and settings of its own.
_CHROMIUM_BINARIES = ("/usr/lib/chromium/chromium",)
_CHROMIUM_COMMANDS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium():
    for path in _CHROMIUM_BINARIES:
        if os.access(path, os.X_OK):
            return path
    for name in _CHROMIUM_COMMANDS:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_args(binary, profile):
    """
    Headless, nothing of its own on the network: the proxy is a closed
    loopback port and names resolve to nothing, so only loopback (which
    Chromium never proxies) is reachable.
    """
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-breakpad",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-dev-shm-usage",
        "--proxy-server=http://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "about:blank",
    ]


class CdpError(Exception):
    """
    A DevTools command failed.
    """


class BrowserProcess(protocol.ProcessProtocol):
    """
    The Chromium process: its stderr kept for failure messages, its end
    awaited on stop.
    """

    def __init__(self):
        self.ended = defer.Deferred()
        self.stderr = bytearray()

    def errReceived(self, data):
        self.stderr += data[: max(0, 65536 - len(self.stderr))]

    def processEnded(self, reason):
        self.ended.callback(None)

    def tail(self):
        return bytes(self.stderr[-3000:]).decode("utf-8", "replace")

    @defer.inlineCallbacks
    def stop(self):
        for signal in ("TERM", "KILL"):
            if self.ended.called:
                return
            try:
                self.transport.signalProcess(signal)
            except error.ProcessExitedAlready:
                pass
            waiting = defer.Deferred()
            self.ended.addBoth(lambda r: (waiting.called or waiting.callback(None), r)[1])
            try:
                yield waiting.addTimeout(10, reactor)
            except defer.TimeoutError:
                continue


class _CdpProtocol(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.cdp._opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.cdp._received(json.loads(payload))

    def onClose(self, wasClean, code, reason):
        self.factory.cdp._closed(reason)


class Cdp:
    """
    A DevTools client: commands by id, events collected.
    """

    def __init__(self):
        self.protocol = None
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        self.events = []
        self._ids = itertools.count(1)
        self._waiting = {}

    @classmethod
    def connect(cls, url, port):
        cdp = cls()
        factory = WebSocketClientFactory(url)
        factory.protocol = _CdpProtocol
        factory.cdp = cdp
        reactor.connectTCP("127.0.0.1", port, factory, timeout=STEP)
        return cdp.opened.addTimeout(STEP, reactor)

    def _opened(self, protocol):
        self.protocol = protocol
        self.opened.callback(self)

    def _received(self, message):
        if "id" in message:
            waiting = self._waiting.pop(message["id"], None)
            if waiting is None:
                return
            if "error" in message:
                waiting.errback(CdpError(json.dumps(message["error"])))
            else:
                waiting.callback(message.get("result", {}))
        else:
            self.events.append(message)

    def _closed(self, reason):
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"DevTools refused: {reason}"))
        for waiting in self._waiting.values():
            waiting.errback(ConnectionError("DevTools connection closed"))
        self._waiting.clear()
        self.closed.callback(None)

    def call(self, method, params=None, session_id=None):
        message_id = next(self._ids)
        message = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        waiting = defer.Deferred()
        self._waiting[message_id] = waiting
        self.protocol.sendMessage(json.dumps(message).encode())
        return waiting.addTimeout(STEP, reactor)

    def close(self):
        if self.protocol is None or self.closed.called:
            return defer.succeed(None)
        self.protocol.sendClose(1000)
        waiting = defer.Deferred()
        self.closed.addBoth(lambda r: (waiting.called or waiting.callback(None), r)[1])
        return waiting.addTimeout(STEP, reactor).addErrback(lambda _: None)


def require_chromium(environ=os.environ, find=find_chromium):
    """
    The browser to run, or L{SkipTest} without one; under CI a missing
    browser is an error, never a skip.
    """
    binary = find()
    if binary is None:
        message = "chromium is not installed (apt-get install chromium)"
        if environ.get("CI"):
            raise AssertionError(f"{message}; CI must run the browser test")
        raise SkipTest(message)
    return binary


class RequireChromiumTests(SynchronousTestCase):
    def test_missing_browser_skips_outside_ci(self):
        self.assertRaises(SkipTest, require_chromium, {}, lambda: None)

    def test_missing_browser_fails_under_ci(self):
        self.assertRaises(AssertionError, require_chromium, {"CI": "true"}, lambda: None)

    def test_found_browser_is_used(self):
        self.assertEqual(require_chromium({"CI": "true"}, lambda: "/x/chromium"), "/x/chromium")


class PageInChromiumTests(TestCase):
    timeout = 180

    def setUp(self):
        self.binary = require_chromium()
        self.server = WsLoopbackNode(self)
        self.api = self.server.api

    @defer.inlineCallbacks
    def start_browser(self):
        profile = os.path.abspath(self.mktemp())
        os.makedirs(profile)
        env = {
            "HOME": profile,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
        }
        browser = BrowserProcess()
        reactor.spawnProcess(browser, self.binary, chromium_args(self.binary, profile), env=env)
        self.addCleanup(shutil.rmtree, profile, True)
        self.addCleanup(browser.stop)
        self.browser = browser
        active = os.path.join(profile, "DevToolsActivePort")
        deadline = reactor.seconds() + STEP
        while not _complete(active):
            if browser.ended.called:
                self.fail(f"chromium exited at start:\n{browser.tail()}")
            if reactor.seconds() > deadline:
                self.fail(f"chromium gave no DevTools port in {STEP}s:\n{browser.tail()}")
            yield task.deferLater(reactor, 0.05, lambda: None)
        with open(active) as lines:
            port, path = lines.read().split("\n")[:2]
        cdp = yield Cdp.connect(f"ws://127.0.0.1:{port}{path}", int(port))
        self.addCleanup(cdp.close)
        return cdp

    @defer.inlineCallbacks
    def open_page(self, cdp, url):
        created = yield cdp.call("Target.createTarget", {"url": "about:blank"})
        attached = yield cdp.call(
            "Target.attachToTarget", {"targetId": created["targetId"], "flatten": True}
        )
        session = attached["sessionId"]
        yield cdp.call("Runtime.enable", session_id=session)
        yield cdp.call("Log.enable", session_id=session)
        yield cdp.call("Page.navigate", {"url": url}, session_id=session)
        return session

    @defer.inlineCallbacks
    def evaluate(self, cdp, session, expression):
        reply = yield cdp.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session_id=session
        )
        if "exceptionDetails" in reply:
            raise CdpError(json.dumps(reply["exceptionDetails"]))
        return reply["result"].get("value")

    @defer.inlineCallbacks
    def wait_for(self, cdp, session, expression, wanted):
        """
        Evaluate C{expression} until it equals C{wanted}; fail after L{STEP}s.
        """
        deadline = reactor.seconds() + STEP
        while True:
            try:
                value = yield self.evaluate(cdp, session, expression)
            except CdpError as error:
                # The page is still loading (no body, no context yet).
                value = error
            if value == wanted:
                return value
            if reactor.seconds() > deadline:
                self.fail(
                    f"{expression} is {value!r}, not {wanted!r}, after {STEP}s; "
                    f"page errors: {self.page_errors(cdp)}"
                )
            yield task.deferLater(reactor, 0.05, lambda: None)

    @staticmethod
    def page_errors(cdp):
        errors = []
        for event in cdp.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(params.get("exceptionDetails", {}).get("text"))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(params["entry"].get("text"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(json.dumps(params.get("args")))
        return errors

    @defer.inlineCallbacks
    def test_page_binds_and_shows_pushes(self):
        cdp = yield self.start_browser()
        url = f"http://127.0.0.1:{self.server.ws_port}/?user=alice"
        session = yield self.open_page(cdp, url)
        yield self.wait_for(cdp, session, STATE, "bound")
        state = yield self.evaluate(cdp, session, "document.getElementById('state').textContent")
        self.assertEqual(state, "bound as alice")

        routes = yield self.api.routes("alice")
        self.assertEqual(list(routes), [ClientType.WEB])
        self.assertTrue(routes[ClientType.WEB].online)

        first = yield self.api.push(
            PushRequest(users=("alice",), content="first push ✓".encode(), ack="auto", timeout_ms=10000)
        )
        self.assertEqual([r["status"] for r in first.results], ["success"])
        second = yield self.api.push(
            PushRequest(users=("alice",), content=b"<b>second</b>", ack="biz", timeout_ms=10000)
        )
        self.assertEqual([r["status"] for r in second.results], ["success"])
        shown = "Array.from(document.querySelectorAll('#pushes .content'), e => e.textContent)"
        yield self.wait_for(cdp, session, shown, ["<b>second</b>", "first push ✓"])
        markup = yield self.evaluate(cdp, session, "document.querySelectorAll('#pushes b').length")
        self.assertEqual(markup, 0)

        kicked = yield self.api.kick("alice")
        self.assertEqual(kicked, 1)
        yield self.wait_for(cdp, session, STATE, "kicked")
        text = "document.getElementById('state').textContent"
        yield self.wait_for(cdp, session, text, "logged out: alice was kicked by the operator")
        self.assertEqual(self.page_errors(cdp), [])


def _complete(path):
    """
    Whether Chromium has written its DevTools port file in full.
    """
    try:
        with open(path) as lines:
            return len(lines.read().split("\n")) >= 2
    except OSError:
        return False
