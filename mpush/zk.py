"""
This node's registration in ZooKeeper, the way MPush registers its servers.

MPush's Java ``PushSender`` finds gateway servers under ``/cluster/gs`` and the
alloc service hands ``/cluster/cs`` (and ``/cluster/ws``) entries to mobile
clients (spec 19.3, 12.7 step 4).  A node that wants those Java components to
find it registers one EPHEMERAL znode per listener, named by a random UUID,
holding fastjson's rendering of MPush's ``CommonServiceNode``; when the node
dies its session expires and ZooKeeper removes the entries by itself.

kazoo talks to ZooKeeper from its own threads.  Nothing here blocks the
reactor: kazoo's asynchronous calls complete into the reactor with
``callFromThread``, every call has a deadline on the injected clock, and the
one blocking call (closing the session) runs in the reactor's thread pool,
also with a deadline.

Session loss: the entries are created again under the SAME paths (the UUIDs
are chosen once per L{ZkRegistration}), as MPush does when Curator reconnects,
so a watcher sees the same node leave and come back rather than a new node.
Like Curator, a connection that stays down for a whole session timeout counts
as a lost session: the client is replaced by a new one, which also gets past a
ZooKeeper that came back without its data (it refuses any client that has
seen a newer transaction than it has).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import dataclass
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.handlers.threading import SequentialThreadingHandler
from kazoo.protocol.states import KazooState, KeeperState
from kazoo.retry import KazooRetry
from kazoo.security import CREATOR_ALL_ACL, OPEN_ACL_UNSAFE
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from mpush.config import MPUSH_ZK_DIGEST, ConfigError

__all__ = [
    "DEFAULT_CS_ATTRS",
    "KINDS",
    "ZkError",
    "ZkNode",
    "ZkNodeError",
    "ZkRegistration",
    "ZkTimeout",
    "cluster_nodes",
    "mpush_node_json",
    "parse_namespace",
    "parse_server_address",
]

log = Logger()

#: The registration paths by kind (MPush ``ServiceNames``), inside the namespace.
KINDS = {"cs": "/cluster/cs", "gs": "/cluster/gs", "ws": "/cluster/ws"}

#: MPush's ``mp.net.connect-server-register-attr`` default.
DEFAULT_CS_ATTRS = {"weight": 1}

#: ZooKeeper's client port, when ``server-address`` names a host without one.
DEFAULT_ZK_PORT = 2181

#: kazoo's reconnect back-off, in seconds: MPush's Curator retry sleeps at most
#: ``retry.maxSleepMs`` (5 s), so a ZooKeeper that comes back is found within that.
RECONNECT_DELAY = 0.5
RECONNECT_MAX_DELAY = 5.0

#: Back-off, in seconds, before registering again after a failed attempt while
#: connected (e.g. the namespace belongs to another digest).
RETRY_DELAY = 1.0
RETRY_MAX_DELAY = 30.0

_NODE_KEYS = frozenset({"host", "port", "attrs"})
_CREATE_ATTEMPTS = 3


class ZkError(Exception):
    """Registration in ZooKeeper failed."""


class ZkTimeout(ZkError):
    """A ZooKeeper call did not complete within its deadline."""


class ZkNodeError(ZkError, ValueError):
    """A registration entry (kind, host, port, attrs) is not valid."""


# --- What is registered ---


def mpush_node_json(kind: str, host: str, port: int, attrs: Mapping[str, Any] | None = None) -> str:
    """
    The znode data MPush writes for a listener: fastjson's compact rendering of
    a ``CommonServiceNode`` (keys in alphabetical order, nulls left out).

    @raise ZkNodeError: an unknown C{kind} or an invalid host, port or attrs.
    """
    _check_kind(kind)
    node: dict[str, Any] = {"host": _checked_host(host), "port": _checked_port(port)}
    if attrs is not None:
        node["attrs"] = _checked_attrs(attrs)
    return json.dumps(node, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _check_kind(kind: object) -> None:
    if not isinstance(kind, str) or kind not in KINDS:
        raise ZkNodeError(f"kind must be one of {', '.join(sorted(KINDS))}, got {kind!r}")


def _checked_host(host: object) -> str:
    if not isinstance(host, str) or not host:
        raise ZkNodeError(f"host must be a non-empty string, got {host!r}")
    if len(host) > 253 or any(ch.isspace() or not ch.isprintable() for ch in host):
        raise ZkNodeError(f"host must be an address or a host name, got {host!r}")
    return host


def _checked_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ZkNodeError(f"port must be an integer in 1..65535, got {port!r}")
    return port


def _checked_attrs(attrs: object) -> dict[str, Any]:
    if not isinstance(attrs, Mapping):
        raise ZkNodeError(f"attrs must be a table, got {type(attrs).__name__}")
    clean: dict[str, Any] = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise ZkNodeError(f"attrs keys must be non-empty strings, got {key!r}")
        if value is None:
            continue  # fastjson leaves null values out
        if isinstance(value, float) and not math.isfinite(value):
            raise ZkNodeError(f"attrs[{key!r}] must be a finite number, got {value!r}")
        if not isinstance(value, (str, int, float)):  # bool is an int
            raise ZkNodeError(
                f"attrs[{key!r}] must be a string, number or boolean, got {type(value).__name__}"
            )
        clean[key] = value
    return clean


@dataclass(frozen=True, slots=True)
class ZkNode:
    """One registration: its kind, its znode path (namespace included) and its data."""

    kind: str
    path: str
    data: bytes


def cluster_nodes(
    config, *, connect_host: str, gateway_host: str, cs_attrs: Mapping[str, Any] | None = DEFAULT_CS_ATTRS
) -> list[tuple[str, dict[str, Any]]]:
    """
    What a node registers, from its config, in MPush's start order: the
    connection server, the WebSocket server when ``[net] ws-server-port`` is
    set, the gateway when ``[net] gateway-server-port`` is set.

    MPush registers the connect and WebSocket servers under the connect
    register IP (the public IP by default) and the gateway under the gateway
    register IP (the local IP by default).
    """
    net = config.net
    nodes: list[tuple[str, dict[str, Any]]] = []
    cs: dict[str, Any] = {"host": connect_host, "port": net.connect_server_port}
    if cs_attrs is not None:
        cs["attrs"] = dict(cs_attrs)
    nodes.append(("cs", cs))
    if net.ws_server_port:
        nodes.append(("ws", {"host": connect_host, "port": net.ws_server_port}))
    if net.gateway_server_port:
        nodes.append(("gs", {"host": gateway_host, "port": net.gateway_server_port}))
    return nodes


def _make_node(root: str, entry: object) -> ZkNode:
    if not isinstance(entry, (tuple, list)) or len(entry) != 2:
        raise ZkNodeError(f"a node is a (kind, {{host, port[, attrs]}}) pair, got {entry!r}")
    kind, spec = entry
    _check_kind(kind)
    if not isinstance(spec, Mapping):
        raise ZkNodeError(f"{kind}: expected a table with host and port, got {type(spec).__name__}")
    unknown = set(spec) - _NODE_KEYS
    if unknown:
        raise ZkNodeError(f"{kind}: unknown keys {sorted(map(str, unknown))} (host, port, attrs)")
    if "host" not in spec or "port" not in spec:
        raise ZkNodeError(f"{kind}: host and port are required")
    data = mpush_node_json(kind, spec["host"], spec["port"], spec.get("attrs"))
    path = f"{root}{KINDS[kind]}/{uuid.uuid4()}"
    return ZkNode(kind=kind, path=path, data=data.encode("utf-8"))


# --- Where to register ---


def parse_server_address(text: str) -> tuple[tuple[str, int], ...]:
    """
    ``[zk] server-address``: ``host:port`` pairs separated by commas, as
    Curator takes them (``[v6addr]:port`` for IPv6; the port defaults to 2181).

    @raise ConfigError: naming ``[zk] server-address``.
    """
    key = "[zk] server-address"
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("must list at least one host:port", key=key)
    if "/" in text:
        raise ConfigError(f"no chroot path here, set [zk] namespace instead: {text!r}", key=key)
    hosts = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            raise ConfigError(f"empty entry in {text!r}", key=key)
        if item.startswith("["):
            end = item.find("]")
            if end < 0:
                raise ConfigError(f"unclosed '[' in {item!r}", key=key)
            host, rest = item[1:end], item[end + 1:]
            if rest and not rest.startswith(":"):
                raise ConfigError(f"expected [address]:port, got {item!r}", key=key)
            port_text = rest[1:] if rest else None
        elif item.count(":") > 1:
            raise ConfigError(f"write IPv6 addresses as [address]:port, got {item!r}", key=key)
        elif ":" in item:
            host, port_text = item.split(":")
        else:
            host, port_text = item, None
        if not host or any(ch.isspace() or not ch.isprintable() for ch in host):
            raise ConfigError(f"bad host in {item!r}", key=key)
        if port_text is None:
            port = DEFAULT_ZK_PORT
        elif port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535:
            port = int(port_text)
        else:
            raise ConfigError(f"port must be 1..65535 in {item!r}", key=key)
        hosts.append((host, port))
    return tuple(hosts)


def _hosts_text(hosts: Iterable[tuple[str, int]]) -> str:
    return ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in hosts)


def parse_namespace(namespace: str) -> str:
    """
    The znode every path lives under: ``"/" + namespace`` (Curator's
    namespace), or ``""`` for an empty namespace (the root).

    @raise ConfigError: naming ``[zk] namespace``, for what ZooKeeper refuses
        in a path.
    """
    key = "[zk] namespace"
    if not isinstance(namespace, str):
        raise ConfigError(f"expected a string, got {type(namespace).__name__}", key=key)
    if not namespace:
        return ""
    if namespace.startswith("/") or namespace.endswith("/"):
        raise ConfigError(f"no leading or trailing '/': {namespace!r}", key=key)
    for segment in namespace.split("/"):
        if segment in ("", ".", ".."):
            raise ConfigError(f"empty, '.' or '..' path segment in {namespace!r}", key=key)
        for ch in segment:
            code = ord(ch)
            if (code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xF8FF
                    or code >= 0xFFF0):
                raise ConfigError(f"character {ch!r} is not allowed in a ZooKeeper path", key=key)
    return "/" + namespace


# --- kazoo's log, into Twisted's ---


class _TwistedLogHandler(logging.Handler):
    """
    kazoo logs every reconnect attempt; forwarded at debug level (errors as
    warnings), so a ZooKeeper that is down costs one line of our own, not one
    per retry.
    """

    def __init__(self, reactor):
        super().__init__(logging.DEBUG)
        self._reactor = reactor

    def emit(self, record):
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        level = LogLevel.warn if record.levelno >= logging.ERROR else LogLevel.debug
        try:
            # Not "message": legacy observers own that key.
            self._reactor.callFromThread(log.emit, level, "kazoo: {text}", text=message)
        except Exception:
            pass  # the reactor is gone; so is anyone to read this


def _kazoo_logger(reactor) -> logging.Logger:
    # A Logger outside logging's tree: nothing reaches the root logger.
    logger = logging.Logger("mpush.zk.kazoo", logging.INFO)
    logger.addHandler(_TwistedLogHandler(reactor))
    return logger


def _make_kazoo_client(**kwargs) -> KazooClient:
    handler = SequentialThreadingHandler()
    retry = KazooRetry(
        max_tries=-1,
        delay=RECONNECT_DELAY,
        backoff=2,
        max_delay=RECONNECT_MAX_DELAY,
        sleep_func=handler.sleep_func,
    )
    return KazooClient(handler=handler, connection_retry=retry, **kwargs)


def _default_threads(clock):
    if hasattr(clock, "callFromThread") and hasattr(clock, "callInThread"):
        return clock
    from twisted.internet import reactor

    return reactor


# --- The service ---


class ZkRegistration(service.Service):
    """
    Registers this node's listeners in ZooKeeper while running.

    Add it to the node's C{MultiService} after the listeners, so that it
    registers only once they are bound and withdraws first on stop.  A
    ZooKeeper that is down does not stop the node: it logs once and kazoo
    keeps reconnecting in the background; the entries appear when it answers.

    @ivar nodes: the L{ZkNode}s registered, paths fixed for this object's life.
    """

    name = "zk-registration"

    def __init__(
        self,
        config,
        nodes: Iterable[tuple[str, Mapping[str, Any]]],
        clock,
        *,
        reactor=None,
        client_factory: Callable[..., Any] | None = None,
    ):
        """
        @param config: the node's L{mpush.config.Config} (its C{zk} table is used).
        @param nodes: C{(kind, {"host", "port"[, "attrs"]})} pairs, kind one of
            C{"cs"}, C{"gs"}, C{"ws"}; see L{cluster_nodes}.
        @param clock: an C{IReactorTime} for every deadline.
        @param reactor: C{callFromThread} and C{callInThread}; C{clock} when it
            has them, else the global reactor.
        @param client_factory: builds the kazoo client from keyword arguments.

        @raise ConfigError: a bad C{[zk] server-address} or C{namespace}.
        @raise ZkNodeError: a bad entry in C{nodes}.
        """
        zk = config.zk
        self._address = zk.server_address
        self._hosts = parse_server_address(zk.server_address)
        self._root = parse_namespace(zk.namespace)
        if isinstance(nodes, (str, bytes, Mapping)) or not isinstance(nodes, Iterable):
            raise ZkNodeError(f"nodes must be a list of (kind, table) pairs, got {type(nodes).__name__}")
        self.nodes = tuple(_make_node(self._root, entry) for entry in nodes)
        if not self.nodes:
            raise ZkNodeError("nothing to register: no nodes given")
        self._digest = zk.digest or None
        self._acl = CREATOR_ALL_ACL if self._digest else OPEN_ACL_UNSAFE
        self._session_timeout = zk.session_timeout / 1000.0
        self._call_timeout = zk.connection_timeout / 1000.0
        # kazoo's close waits for the server's answer, at worst a read timeout
        # (2/3 of the session timeout) after its last request.
        self._close_timeout = self._session_timeout + self._call_timeout
        self._clock = clock
        self._reactor = reactor if reactor is not None else _default_threads(clock)
        self._client_factory = client_factory or _make_kazoo_client
        self._client = None
        self._connected = False
        self._registered_session: int | None = None
        self._logged_session: int | None = None
        self._busy = False
        self._again = False
        self._failures = 0
        self._last_error: str | None = None
        self._retry_call = None
        self._unreachable_call = None
        self._unreachable_logged = False
        self._session_call = None
        self._closing: set[defer.Deferred] = set()
        self._pending: dict[defer.Deferred, Any] = {}

    # -- state seen by the node --

    @property
    def registered(self) -> bool:
        """Every entry is in ZooKeeper under the current session."""
        return self._registered_session is not None

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(node.path for node in self.nodes)

    # -- service --

    def startService(self):
        super().startService()
        self._warn_weak_digest()
        log.info(
            "registering in ZooKeeper at {address}: {paths}",
            address=self._address, paths=", ".join(self.paths),
        )
        self._watch_unreachable()
        self._start_client()

    def _warn_weak_digest(self) -> None:
        """
        The digest is the ACL credential of what we register: with MPush's
        public default, or none, anyone who reaches ZooKeeper can rewrite
        or delete this node's entries (and so steer MPush's PushSender).
        Warned at every start rather than refused: fleets run with it.
        """
        if self._digest is None:
            log.warn(
                "[zk] digest is empty: the ZooKeeper nodes of this server get an open ACL, "
                "anyone who reaches ZooKeeper can change or delete them. Set a digest "
                "(\"user:password\"), the same in MPush's Java services."
            )
        elif self._digest == MPUSH_ZK_DIGEST:
            log.warn(
                "[zk] digest is MPush's public default \"mpush\": it is the ACL credential of "
                "this server's ZooKeeper nodes, so anyone who reaches ZooKeeper can change or "
                "delete them. Set your own digest (\"user:password\"), the same in MPush's "
                "Java services."
            )

    def _start_client(self) -> None:
        """A new kazoo client, with a new session (and no zxid seen yet)."""
        auth = [("digest", self._digest)] if self._digest else None
        client = self._client_factory(
            hosts=_hosts_text(self._hosts),
            timeout=self._session_timeout,
            auth_data=auth,
            default_acl=self._acl,
            logger=_kazoo_logger(self._reactor),
        )
        self._client = client
        reactor = self._reactor
        client.add_listener(lambda state: reactor.callFromThread(self._state_changed, client, state))
        client.start_async()

    def stopService(self):
        super().stopService()
        self._cancel_timers()
        client, self._client = self._client, None
        self._connected = False
        self._registered_session = None
        if client is None:
            return defer.succeed(None)
        return defer.ensureDeferred(self._withdraw(client))

    async def _withdraw(self, client) -> None:
        if client.connected:
            calls = [self._call(client.delete_async, node.path) for node in self.nodes]
            outcomes = await defer.DeferredList(calls, consumeErrors=True)
            for node, (ok, result) in zip(self.nodes, outcomes):
                if not ok and not result.check(NoNodeError):
                    log.warn(
                        "ZooKeeper entry {path} not deleted ({why}); it goes with the session",
                        path=node.path, why=_describe(result.value),
                    )
        try:
            await self._blocking(_close_client, client, self._close_timeout)
        except Exception as error:
            log.warn("ZooKeeper session not closed cleanly: {why}", why=_describe(error))
        if self._closing:
            await defer.DeferredList(list(self._closing))  # clients replaced earlier
        for d in list(self._pending):
            self._settle(d, Failure(ZkError("registration stopped")))
        log.info("withdrawn from ZooKeeper at {address}", address=self._address)

    # -- connection state (reactor thread) --

    def _state_changed(self, client, state) -> None:
        if client is not self._client:
            return  # a stopped client's last words
        if state == KazooState.CONNECTED:
            self._connected = True
            self._cancel_unreachable()
            self._cancel_session_watch()
            if self._unreachable_logged:
                self._unreachable_logged = False
                log.info("ZooKeeper at {address} answers again", address=self._address)
            self._register_soon()
        elif state == KazooState.SUSPENDED:
            # The session may survive: the entries stay until it expires.
            self._connected = False
            self._cancel_retry()
            self._watch_unreachable()
            self._watch_session()
        elif state == KazooState.LOST:
            self._connected = False
            self._registered_session = None
            self._cancel_retry()
            self._cancel_session_watch()
            if client.client_state == KeeperState.AUTH_FAILED:
                self._cancel_unreachable()
                log.error(
                    "ZooKeeper at {address} refused the [zk] digest credentials; "
                    "this node is not registered",
                    address=self._address,
                )
            else:
                log.warn(
                    "ZooKeeper session lost; registering the same entries again on reconnect"
                )
                self._watch_unreachable()

    def _watch_session(self) -> None:
        if self._session_call is None:
            self._session_call = self._clock.callLater(self._session_timeout, self._session_presumed_lost)

    def _session_presumed_lost(self) -> None:
        """
        Disconnected for a whole session timeout: the session has expired
        unless ZooKeeper itself was down.  Start over with a new client, as
        Curator does: a ZooKeeper that came back empty refuses the old client
        forever (it has seen a newer zxid than the server has).
        """
        self._session_call = None
        if self._connected or not self.running or self._client is None:
            return
        log.warn(
            "no ZooKeeper session for {seconds:g} s: presumed expired; connecting with a new one",
            seconds=self._session_timeout,
        )
        self._registered_session = None
        self._cancel_retry()
        old = self._client
        self._start_client()
        closing = self._blocking(_close_client, old, self._close_timeout)
        closing.addErrback(
            lambda failure: log.debug("old ZooKeeper client not closed: {why}", why=_describe(failure.value))
        )
        self._closing.add(closing)
        closing.addBoth(lambda _: self._closing.discard(closing))

    def _watch_unreachable(self) -> None:
        if self._unreachable_call is None and not self._unreachable_logged:
            self._unreachable_call = self._clock.callLater(self._call_timeout, self._unreachable)

    def _unreachable(self) -> None:
        self._unreachable_call = None
        if not self._connected and self.running:
            self._unreachable_logged = True
            log.warn(
                "ZooKeeper at {address} not reachable: this node runs unregistered and keeps "
                "trying in the background",
                address=self._address,
            )

    # -- registering (reactor thread) --

    def _register_soon(self) -> None:
        if self._busy:
            self._again = True
            return
        self._cancel_retry()
        self._busy = True
        d = defer.ensureDeferred(self._register_all(self._client))
        d.addCallbacks(self._registered, self._register_failed)
        d.addBoth(self._register_done)

    async def _register_all(self, client) -> int | None:
        identity = client.client_id
        session = identity[0] if identity else None
        for node in self.nodes:
            await self._register(client, node, session)
        return session

    async def _register(self, client, node: ZkNode, session: int | None) -> None:
        for _ in range(_CREATE_ATTEMPTS):
            try:
                await self._call(
                    client.create_async, node.path, node.data,
                    acl=self._acl, ephemeral=True, makepath=True,
                )
                return
            except NodeExistsError:
                pass
            stat = await self._call(client.exists_async, node.path)
            if stat is None:
                continue
            if session is not None and stat.ephemeralOwner == session:
                return  # created earlier in this same session
            # Another session's leftover: replace it, as MPush does.
            try:
                await self._call(client.delete_async, node.path, version=stat.version)
            except (NoNodeError, BadVersionError):
                pass
        raise ZkError(f"{node.path} keeps being created by another session")

    def _registered(self, session) -> None:
        if not self.running or not self._connected:
            return
        current = self._client.client_id if self._client is not None else None
        if session is None or current is None or current[0] != session:
            return  # the session changed meanwhile: a new round is queued
        self._registered_session = session
        self._failures = 0
        self._last_error = None
        if self._logged_session != session:
            self._logged_session = session
            log.info(
                "registered in ZooKeeper at {address}: {paths}",
                address=self._address, paths=", ".join(self.paths),
            )

    def _register_failed(self, failure: Failure) -> None:
        if not self.running:
            return
        why = _describe(failure.value)
        if why != self._last_error:
            self._last_error = why
            log.warn("ZooKeeper registration failed: {why}; trying again", why=why)
        if self._connected and not self._again:
            delay = min(RETRY_DELAY * 2 ** self._failures, RETRY_MAX_DELAY)
            self._failures += 1
            self._retry_call = self._clock.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        if self.running and self._connected:
            self._register_soon()

    def _register_done(self, _ignored) -> None:
        self._busy = False
        if self._again:
            self._again = False
            if self.running and self._connected:
                self._register_soon()

    # -- calls into kazoo, with deadlines --

    def _call(self, method, *args, **kwargs) -> defer.Deferred:
        """
        Run one asynchronous kazoo call; its result arrives in the reactor
        thread, or L{ZkTimeout} after C{[zk] connectionTimeoutMs}.
        """
        try:
            result = method(*args, **kwargs)
        except Exception as error:
            return defer.fail(error)
        d = self._deadline(f"{getattr(method, '__name__', 'call')} {args[0] if args else ''}".strip())

        def arrived(done):
            if d not in self._pending:
                return
            try:
                value = done.get(block=False)
            except Exception as error:
                self._settle(d, Failure(error))
            else:
                self._settle(d, value)

        reactor = self._reactor
        result.rawlink(lambda done: reactor.callFromThread(arrived, done))
        return d

    def _blocking(self, function, argument, timeout: float) -> defer.Deferred:
        """Run a blocking kazoo call in a thread, with a deadline."""
        d = self._deadline(function.__name__, timeout)
        reactor = self._reactor

        def work():
            try:
                function(argument)
            except Exception as error:
                outcome = Failure(error)
            else:
                outcome = None
            reactor.callFromThread(self._settle, d, outcome)

        reactor.callInThread(work)
        return d

    def _deadline(self, what: str, timeout: float | None = None) -> defer.Deferred:
        d = defer.Deferred()
        seconds = self._call_timeout if timeout is None else timeout
        self._pending[d] = self._clock.callLater(
            seconds,
            lambda: self._settle(d, Failure(ZkTimeout(f"ZooKeeper {what}: no answer within {seconds:g} s"))),
        )
        return d

    def _settle(self, d: defer.Deferred, outcome) -> bool:
        timer = self._pending.pop(d, None)
        if timer is None:
            return False
        if timer.active():
            timer.cancel()
        if isinstance(outcome, Failure):
            d.errback(outcome)
        else:
            d.callback(outcome)
        return True

    # -- timers --

    def _cancel_retry(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None

    def _cancel_unreachable(self) -> None:
        if self._unreachable_call is not None and self._unreachable_call.active():
            self._unreachable_call.cancel()
        self._unreachable_call = None

    def _cancel_session_watch(self) -> None:
        if self._session_call is not None and self._session_call.active():
            self._session_call.cancel()
        self._session_call = None

    def _cancel_timers(self) -> None:
        self._cancel_retry()
        self._cancel_unreachable()
        self._cancel_session_watch()


def _close_client(client) -> None:
    # Closing the session removes every ephemeral entry it still holds.
    client.stop()
    client.close()


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
