"""Tests for mpush.config: TOML parsing, validation, errors, overrides, Redis URLs."""

import base64
import dataclasses
import os
import re
import tomllib

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from twisted.trial.unittest import SynchronousTestCase

from mpush.config import (
    BindConfig,
    Config,
    ConfigError,
    CoreConfig,
    NetConfig,
    ProxyConfig,
    PushConfig,
    RedisConfig,
    SecurityConfig,
    apply_overrides,
    load_config,
    parse_config,
    parse_redis_url,
)
from mpush.protocol.heartbeat import negotiate_heartbeat
from mpush.store.redis_connection import InvalidRedisUrl, parse_redis_url as parse_address

ETC_MPUSH_TOML = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              os.pardir, "etc", "mpush.toml")

# Short but valid one-line base64 values (not real keys: config only checks the form).
PRIVATE = base64.b64encode(b"private key bytes").decode()
PUBLIC = base64.b64encode(b"public key bytes!").decode()

# Every key mpush reads, each set to a value that is NOT its default.
EVERY_KEY = f"""
[mpush]
state-dir = "/srv/mpush-state"

[core]
max-packet-size = "32k"
compress-threshold = "2k"
min-heartbeat = "10s"
max-heartbeat = "4m"
max-hb-timeout-times = 5
session-expired-time = "2h"
pre-handshake-heartbeat = "15s"
max-inflated-size = "64k"
max-gateway-packet-size = "256k"

[security]
private-key = "{PRIVATE}"
public-key = "{PUBLIC}"
aes-key-length = 16

[net]
local-ip = "10.0.0.5"
public-ip = "203.0.113.7"
connect-server-bind-ip = "0.0.0.0"
connect-server-port = 4000
connect-server-backlog = 512
gateway-server-bind-ip = "10.0.0.5"
gateway-server-port = 4001
gateway-allow = ["10.0.0.0/8"]
admin-server-bind-ip = "::1"
admin-server-port = 4002
ws-server-port = 8080
ws-allowed-origins = ["https://app.example.com", "http://10.0.0.5:8080"]
write-buffer-water-mark.connect-server-high = "128k"
http-server-port = 9090
http-server-bind-ip = "10.0.0.5"

[redis]
nodes = ["redis.internal:6380", "10.0.0.9:6379"]
password = "s3cret"
db = 3
cluster-model = "sentinel"
sentinel-master = "mymaster"
wait-replicas = 1
wait-timeout = "250ms"

[push]
flow-control.global.limit = 20000
flow-control.global.max = 1000000
flow-control.global.duration = "2s"
flow-control.broadcast.limit = 500
flow-control.broadcast.max = 9000
flow-control.broadcast.duration = "500ms"
tag-match = "exact"
default-timeout = "5s"

[bind]
validator = "hmac"
hmac-secret = "bind-secret"

[cluster]
node-ttl = "30s"
node-refresh = "5s"
drain-timeout = "20s"
workers = 4

[http]
api-token = "t0ken"
max-body-size = "2m"
public-paths = ["/healthz", "/v1/allot"]

[offline]
max-count = 7
max-bytes = "1m"
lease = "5s"
"""

# MPush's conf/reference.conf (the version described in spec 17), translated key by key,
# plus the overrides of its distribution mpush.conf that mpush supports.
MPUSH_REFERENCE = """
[mpush]
home = "/opt/mpush"
log-level = "warn"
log-dir = "/opt/mpush/logs"
log-conf-path = "/opt/mpush/conf/logback.xml"

[core]
max-packet-size = "10k"
compress-threshold = "10k"
min-heartbeat = "3m"
max-heartbeat = "3m"
max-hb-timeout-times = 2
session-expired-time = "1d"
epoll-provider = "netty"

[security]
aes-key-length = 16

[net]
local-ip = ""
public-ip = ""
connect-server-bind-ip = ""
connect-server-register-ip = ""
connect-server-port = 3000
connect-server-register-attr = { weight = 1 }
gateway-server-bind-ip = ""
gateway-server-register-ip = ""
gateway-server-port = 3001
gateway-server-net = "tcp"
gateway-client-port = 4000
gateway-server-multicast = "239.239.239.88"
gateway-client-multicast = "239.239.239.99"
gateway-client-num = 1
admin-server-port = 3002
ws-server-port = 0
ws-path = "/"
public-host-mapping = {}
snd_buf = { connect-server = "32k", gateway-server = 0, gateway-client = 0 }
rcv_buf = { connect-server = "32k", gateway-server = 0, gateway-client = 0 }

[net.write-buffer-water-mark]
connect-server-low = "32k"
connect-server-high = "64k"
gateway-server-low = "10m"
gateway-server-high = "20m"

[net.traffic-shaping.gateway-client]
enabled = false
check-interval = "100ms"
write-global-limit = "30k"
read-global-limit = 0
write-channel-limit = "3k"
read-channel-limit = 0

[net.traffic-shaping.gateway-server]
enabled = false
check-interval = "100ms"
write-global-limit = 0
read-global-limit = "30k"
write-channel-limit = 0
read-channel-limit = "3k"

[net.traffic-shaping.connect-server]
enabled = false
check-interval = "100ms"
write-global-limit = 0
read-global-limit = "100k"
write-channel-limit = "3k"
read-channel-limit = "3k"

[zk]
server-address = "127.0.0.1:2181"
namespace = "mpush"
digest = "mpush"
watch-path = "/"
connectionTimeoutMs = "5s"
sessionTimeoutMs = "5s"

[zk.retry]
baseSleepTimeMs = "3s"
maxRetries = 3
maxSleepMs = "5s"

[redis]
write-to-zk = false
password = ""
cluster-model = "single"
sentinel-master = ""
nodes = ["127.0.0.1:6379"]

[redis.config]
maxTotal = 8
maxIdle = 4
minIdle = 1
lifo = true
fairness = false
maxWaitMillis = 5000
minEvictableIdleTimeMillis = 300000
softMinEvictableIdleTimeMillis = 1800000
numTestsPerEvictionRun = 3
testOnCreate = false
testOnBorrow = false
testOnReturn = false
testWhileIdle = false
timeBetweenEvictionRunsMillis = 60000
blockWhenExhausted = true
jmxEnabled = false
jmxNamePrefix = "pool"
jmxNameBase = "pool"

[http]
proxy-enabled = false
max-conn-per-host = 5
default-read-timeout = "10s"
max-content-length = "5m"
dns-mapping = { "mpush.com" = ["127.0.0.1:8080", "127.0.0.1:8081"] }

[thread.pool]
conn-work = 0
gateway-server-work = 0
http-work = 0
ack-timer = 1
push-task = 0
gateway-client-work = 0
push-client = 2
event-bus = { min = 1, max = 16, queue-size = 10000 }
mq = { min = 1, max = 4, queue-size = 10000 }

[push.flow-control.global]
limit = 5000
max = 0
duration = "1s"

[push.flow-control.broadcast]
limit = 3000
max = 100000
duration = "1s"

[monitor]
dump-dir = "/opt/mpush/tmp"
dump-stack = false
dump-period = "1m"
print-log = true
profile-enabled = false
profile-slowly-duration = "10ms"

[spi]
thread-pool-factory = "com.mpush.tools.thread.pool.DefaultThreadPoolFactory"
dns-mapping-manager = "com.mpush.common.net.HttpProxyDnsMappingManager"
"""


def parse(text: str, source: str = "test.toml") -> Config:
    return parse_config(tomllib.loads(text), source=source)


class ConfigErrorAssertions:
    """Every error must be one line naming the source and the key."""

    def assertConfigError(self, text, key, *fragments, source="test.toml"):
        e = self.assertRaises(ConfigError, parse, text, source)
        message = str(e)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(f"config {source}: {key}: "), message)
        self.assertEqual(e.key, key)
        self.assertEqual(e.source, source)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return e


class DefaultsTests(SynchronousTestCase):

    def test_load_none_is_all_defaults(self):
        config = load_config(None)
        self.assertEqual(config, Config())
        self.assertIsNone(config.source)

    def test_spec_17_defaults(self):
        config = load_config(None)
        self.assertEqual(config.core, CoreConfig(
            max_packet_size=10240, compress_threshold=10240, min_heartbeat=180000,
            max_heartbeat=180000, max_hb_timeout_times=2, session_expired_time=86400,
            pre_handshake_heartbeat=10000, max_inflated_size=1048576))
        self.assertIsNone(config.security.private_key)
        self.assertIsNone(config.security.public_key)
        self.assertEqual(config.security.aes_key_length, 16)
        self.assertEqual(config.net, NetConfig(
            local_ip="", public_ip="", connect_server_bind_ip="", connect_server_port=3000,
            gateway_server_bind_ip="127.0.0.1", gateway_server_port=3001,
            admin_server_bind_ip="127.0.0.1", admin_server_port=3002, ws_server_port=0))
        self.assertEqual(config.redis.nodes, ())
        self.assertEqual(config.redis.password, "")
        self.assertEqual(config.redis.db, 0)
        self.assertIsNone(config.redis.url())
        self.assertEqual(config.state_dir, "/var/lib/mpush")

    def test_empty_file_is_defaults(self):
        self.assertEqual(parse(""), Config())
        self.assertEqual(parse("[core]\n[net]\n[security]\n[redis]\n[mpush]\n"), Config())

    def test_source_recorded_but_not_compared(self):
        config = parse("", source="/etc/mpush/mpush.toml")
        self.assertEqual(config.source, "/etc/mpush/mpush.toml")
        self.assertEqual(config, Config())


class EveryKeyTests(ConfigErrorAssertions, SynchronousTestCase):

    def test_every_key_parsed(self):
        config = parse(EVERY_KEY)
        self.assertEqual(config.state_dir, "/srv/mpush-state")
        self.assertEqual(config.core, CoreConfig(
            max_packet_size=32768, compress_threshold=2048, min_heartbeat=10000,
            max_heartbeat=240000, max_hb_timeout_times=5, session_expired_time=7200,
            pre_handshake_heartbeat=15000, max_inflated_size=65536,
            max_gateway_packet_size=262144))
        self.assertEqual(config.security.private_key, PRIVATE)
        self.assertEqual(config.security.public_key, PUBLIC)
        self.assertEqual(config.security.aes_key_length, 16)
        self.assertEqual(config.net, NetConfig(
            local_ip="10.0.0.5", public_ip="203.0.113.7", connect_server_bind_ip="0.0.0.0",
            connect_server_port=4000, connect_server_backlog=512, gateway_server_bind_ip="10.0.0.5",
            gateway_server_port=4001, gateway_allow=("10.0.0.0/8",),
            admin_server_bind_ip="::1", admin_server_port=4002,
            ws_server_port=8080, connect_server_write_high=131072,
            ws_allowed_origins=("https://app.example.com", "http://10.0.0.5:8080"),
            http_server_port=9090, http_server_bind_ip="10.0.0.5"))
        self.assertEqual(config.redis.nodes, ("redis.internal:6380", "10.0.0.9:6379"))
        self.assertEqual(config.redis.password, "s3cret")
        self.assertEqual(config.redis.db, 3)
        self.assertEqual((config.redis.wait_replicas, config.redis.wait_timeout), (1, 250))
        self.assertEqual((config.redis.cluster_model, config.redis.sentinel_master), ("sentinel", "mymaster"))
        self.assertEqual(config.redis.url(), "redis+sentinel://:s3cret@redis.internal:6380,10.0.0.9:6379/mymaster/3")
        self.assertEqual(config.push, PushConfig(
            global_limit=20000, global_max=1000000, global_duration=2000,
            broadcast_limit=500, broadcast_max=9000, broadcast_duration=500,
            tag_match="exact", default_timeout=5000))
        self.assertEqual(config.bind, BindConfig(validator="hmac", hmac_secret="bind-secret"))

    def test_every_field_covered(self):
        """EVERY_KEY really changes every field, so the test above checks them all."""
        config, default = parse(EVERY_KEY), Config()
        for part in ("core", "security", "net", "redis", "push", "bind", "cluster", "http",
                     "offline"):
            for f in dataclasses.fields(getattr(config, part)):
                if f.name == "aes_key_length":
                    continue  # 16 is its only valid value
                self.assertNotEqual(getattr(getattr(config, part), f.name),
                                    getattr(getattr(default, part), f.name), f.name)
        self.assertNotEqual(config.state_dir, default.state_dir)

    def test_plain_numbers(self):
        config = parse("""
            [core]
            max-packet-size = 20000
            compress-threshold = 0
            min-heartbeat = 5000
            max-heartbeat = 600000
            session-expired-time = 3600
            pre-handshake-heartbeat = 2500
            max-inflated-size = 4096
        """)
        self.assertEqual(config.core.max_packet_size, 20000)
        self.assertEqual(config.core.compress_threshold, 0)
        self.assertEqual(config.core.min_heartbeat, 5000)          # bare ms, as in HOCON
        self.assertEqual(config.core.max_heartbeat, 600000)
        self.assertEqual(config.core.session_expired_time, 3600)   # bare SECONDS
        self.assertEqual(config.core.pre_handshake_heartbeat, 2500)
        self.assertEqual(config.core.max_inflated_size, 4096)

    def test_session_expired_time_units(self):
        for text, seconds in (('"1d"', 86400), ('"90m"', 5400), ('"1500s"', 1500),
                              ('"2000ms"', 2), ("0", 0), ('"0s"', 0)):
            config = parse(f"[core]\nsession-expired-time = {text}\n")
            self.assertEqual(config.core.session_expired_time, seconds, text)

    def test_dotted_and_inline_tables(self):
        """TOML's other spellings of the same tables work too."""
        config = parse('core.max-packet-size = "1k"\nnet = { connect-server-port = 1 }\n')
        self.assertEqual(config.core.max_packet_size, 1024)
        self.assertEqual(config.net.connect_server_port, 1)

    def test_boundaries_accepted(self):
        config = parse("""
            [core]
            max-packet-size = 14
            max-hb-timeout-times = 0
            min-heartbeat = 1
            max-heartbeat = 2147483647
            [net]
            connect-server-port = 65535
            gateway-server-port = 0
            admin-server-port = 0
            ws-server-port = 65535
        """)
        self.assertEqual(config.core.max_packet_size, 14)
        self.assertEqual(config.core.max_heartbeat, 2**31 - 1)
        self.assertEqual(config.net.gateway_server_port, 0)
        self.assertEqual(parse('[core]\nmax-packet-size = "16m"').core.max_packet_size,
                         16 * 1024 * 1024)

    def test_min_heartbeat_above_max_is_allowed(self):
        """Spec 8.4: if min > max, min wins; it is not a configuration error."""
        config = parse('[core]\nmin-heartbeat = "5m"\nmax-heartbeat = "1m"\n')
        self.assertEqual((config.core.min_heartbeat, config.core.max_heartbeat),
                         (300000, 60000))
        for asked in (1000, 60000, 120000, 300000, 600000):
            self.assertEqual(
                negotiate_heartbeat(asked, config.core.min_heartbeat, config.core.max_heartbeat),
                300000, asked)

    def test_empty_keys_mean_generate(self):
        config = parse('[security]\nprivate-key = ""\npublic-key = ""\n')
        self.assertIsNone(config.security.private_key)
        self.assertIsNone(config.security.public_key)

    def test_private_key_alone(self):
        config = parse(f'[security]\nprivate-key = "{PRIVATE}"\n')
        self.assertEqual(config.security.private_key, PRIVATE)
        self.assertIsNone(config.security.public_key)

    def test_ipv6_redis_node(self):
        config = parse('[redis]\nnodes = ["[::1]:6379"]\n')
        self.assertEqual(config.redis.url(), "redis://[::1]:6379/0")

    def test_mpush_reference_conf_translation_loads(self):
        """Every accepted-but-unused MPush key is accepted at MPush's values."""
        config = parse(MPUSH_REFERENCE)
        expected = Config().replace(
            # MPush's "" is every address (mpush's default is loopback).
            net=dataclasses.replace(NetConfig(), gateway_server_bind_ip=""),
            redis=RedisConfig(nodes=("127.0.0.1:6379",)),
            proxy=ProxyConfig(dns_mapping=(("mpush.com", ("127.0.0.1:8080", "127.0.0.1:8081")),)),
        )
        self.assertEqual(config, expected)

    def test_public_paths_are_read_only_paths(self):
        self.assertEqual(Config().http.public_paths, ("/healthz",))
        self.assertEqual(parse('[http]\npublic-paths = []\n').http.public_paths, ())
        self.assertConfigError('[http]\npublic-paths = ["/v1/push"]\n', "[http] public-paths",
                               "'/v1/push' cannot be public", "/v1/allot")

    def test_config_path(self):
        from mpush.config import config_path

        self.assertEqual(config_path("core.max-packet-size"), ("core", "max_packet_size"))
        self.assertEqual(config_path("mp.core.max-packet-size"), ("core", "max_packet_size"))
        self.assertEqual(config_path("mp.net.write-buffer-water-mark.connect-server-high"),
                         ("net", "connect_server_write_high"))
        self.assertEqual(config_path("mp.http.proxy-enabled"), ("proxy", "enabled"))
        self.assertEqual(config_path("mp.state-dir"), ("state_dir",))
        self.assertEqual(config_path("mp"), ())
        for key in ("mp.log-level", "mp.thread.pool.conn-work", "core", "nope.x", "mp.core.nope"):
            self.assertIsNone(config_path(key), key)

    def test_register_ip_equal_to_local_ip_accepted(self):
        config = parse('[net]\nlocal-ip = "10.1.2.3"\ngateway-server-register-ip = "10.1.2.3"\n')
        self.assertEqual(config.net.local_ip, "10.1.2.3")


class EtcMpushTomlTests(SynchronousTestCase):

    def test_loads_and_equals_defaults(self):
        config = load_config(ETC_MPUSH_TOML)
        self.assertEqual(config, load_config(None))
        self.assertEqual(config.source, ETC_MPUSH_TOML)

    def _uncommented(self, prefix):
        with open(ETC_MPUSH_TOML, encoding="utf-8") as f:
            lines = f.read().splitlines()
        found = [line for line in lines if line.startswith("# " + prefix)]
        self.assertTrue(found, prefix)
        return [line[2:] for line in found], lines

    def test_documents_every_key(self):
        """Each key the parser reads, and each accepted MPush key, is named in the file."""
        with open(ETC_MPUSH_TOML, encoding="utf-8") as f:
            text = f.read()
        keys = re.findall(r"^([a-z][a-z-]*) = ", EVERY_KEY, re.M)
        self.assertEqual(len(keys), 48)
        for key in keys:
            self.assertTrue(re.search(rf"(?m)^(# )?{key} = ", text), key)
        for key in re.findall(r"^([A-Za-z_][\w-]*) = ", MPUSH_REFERENCE, re.M):
            self.assertIn(key, text, key)

    def test_demo_key_pair_example(self):
        """The commented MPush demo pair is valid when uncommented, and is a matching pair."""
        (private_line,), _ = self._uncommented("private-key = ")
        (public_line,), _ = self._uncommented("public-key = ")
        config = parse(f"[security]\n{private_line}\n{public_line}\n")
        public = load_der_public_key(base64.b64decode(config.security.public_key))
        self.assertIsInstance(public, rsa.RSAPublicKey)
        numbers = public.public_numbers()
        self.assertEqual((public.key_size, numbers.e), (1024, 65537))
        # The PKCS#8 blob carries the same modulus (as a DER INTEGER with a 0x00 pad).
        private_der = base64.b64decode(config.security.private_key)
        self.assertIn(b"\x02\x81\x81\x00" + numbers.n.to_bytes(128, "big"), private_der)

    def test_demo_key_pair_is_marked_public(self):
        with open(ETC_MPUSH_TOML, encoding="utf-8") as f:
            text = f.read()
        self.assertIn("THIS PAIR IS PUBLIC", text)
        self.assertIn("NEVER USE IT IN PRODUCTION", text)

    def test_redis_example(self):
        (line, sentinels, seeds), _ = self._uncommented("nodes = ")
        self.assertEqual(line, 'nodes = ["127.0.0.1:6379"]')
        config = parse(f"[redis]\n{line}\n")
        self.assertEqual(config.redis.url(), "redis://127.0.0.1:6379/0")
        model = self._uncommented("cluster-model = ")[0][0]
        master = self._uncommented("sentinel-master = ")[0][-1]
        config = parse(f"[redis]\n{model}\n{master}\n{sentinels}\n")
        self.assertEqual(
            config.redis.url(), "redis+sentinel://10.0.0.11:26379,10.0.0.12:26379,10.0.0.13:26379/mymaster/0"
        )
        cluster = self._uncommented("cluster-model = ")[0][1]
        config = parse(f"[redis]\n{cluster}\n{seeds}\n")
        self.assertEqual(config.redis.url(), "redis+cluster://10.0.0.21:7000,10.0.0.22:7000,10.0.0.23:7000")


class ErrorTests(ConfigErrorAssertions, SynchronousTestCase):

    def test_message_format(self):
        e = self.assertRaises(ConfigError, parse, '[core]\nmax-packet-size = "abc"\n',
                              "/etc/mpush/mpush.toml")
        self.assertEqual(str(e), "config /etc/mpush/mpush.toml: [core] max-packet-size: "
                                 "expected a size like 10k, got 'abc'")

    def test_message_without_source(self):
        e = self.assertRaises(ConfigError, parse_config, {"core": {"max-packet-size": "x"}})
        self.assertEqual(str(e), "[core] max-packet-size: expected a size like 10k, got 'x'")
        self.assertIsNone(e.source)

    def test_unknown_table(self):
        self.assertConfigError("[cor]\n", "[cor]", "unknown table", "did you mean 'core'")
        self.assertConfigError("[logging]\nlevel = 1\n", "[logging]", "unknown table")

    def test_unknown_key(self):
        self.assertConfigError("[core]\nmax-packet-sise = 1\n", "[core] max-packet-sise",
                               "unknown key", "did you mean 'max-packet-size'")
        self.assertConfigError("[net]\nconnect_server_port = 1\n",
                               "[net] connect_server_port", "unknown key",
                               "connect-server-port")
        self.assertConfigError("[redis]\nhost = 'x'\n", "[redis] host", "unknown key")
        self.assertConfigError("[mpush]\nstate_dir = 'x'\n", "[mpush] state_dir")

    def test_unknown_key_in_accepted_mpush_table(self):
        """Accepted-but-unused tables still catch typos: their keys are listed too."""
        self.assertConfigError("[zk]\nserver-adress = 'x'\n", "[zk] server-adress",
                               "did you mean 'server-address'")
        self.assertConfigError("[net.traffic-shaping.connect-server]\nenable = true\n",
                               "[net.traffic-shaping.connect-server] enable",
                               "did you mean 'enabled'")
        self.assertConfigError("[thread.pool]\nboss = 1\n", "[thread.pool] boss")
        self.assertConfigError("[redis.config]\nmaxtotal = 1\n", "[redis.config] maxtotal")
        self.assertConfigError("[core]\nepoll = 'nio'\n", "[core] epoll")

    def test_top_level_key(self):
        self.assertConfigError("debug = true\n", "debug", "unknown top-level key")

    def test_table_expected(self):
        self.assertConfigError("core = 5\n", "[core]", "expected a table, got int 5")
        self.assertConfigError("[net]\nsnd_buf = 5\n", "[net.snd_buf]", "expected a table")
        self.assertConfigError("[http]\ndns-mapping = 'x'\n", "[http] dns-mapping",
                               "expected a table")

    def test_wrong_types(self):
        for table, key, value, needle in [
            ("core", "max-packet-size", "10.5", "float"),
            ("core", "max-packet-size", "true", "bool"),
            ("core", "compress-threshold", "[1]", "list"),
            ("core", "min-heartbeat", "1.5", "float"),
            ("core", "max-heartbeat", "false", "bool"),
            ("core", "session-expired-time", "1.0", "float"),
            ("core", "pre-handshake-heartbeat", "{}", "dict"),
            ("core", "max-inflated-size", "1.5", "float"),
            ("core", "max-hb-timeout-times", '"2"', "expected an integer, got str"),
            ("core", "max-hb-timeout-times", "true", "expected an integer, got bool"),
            ("security", "private-key", "5", "expected a string, got int"),
            ("security", "public-key", "[]", "expected a string, got list"),
            ("security", "aes-key-length", '"16"', "expected an integer, got str"),
            ("net", "local-ip", "127", "expected a string, got int"),
            ("net", "public-ip", "false", "expected a string, got bool"),
            ("net", "connect-server-bind-ip", "1979-05-27", "expected a string, got date"),
            ("net", "connect-server-port", '"3000"', "expected an integer, got str"),
            ("net", "gateway-server-port", "3001.0", "expected an integer, got float"),
            ("net", "admin-server-port", "true", "expected an integer, got bool"),
            ("net", "ws-server-port", "[80]", "expected an integer, got list"),
            ("redis", "nodes", '"127.0.0.1:6379"', "expected a list"),
            ("redis", "nodes", "[6379]", "expected a string, got int"),
            ("redis", "password", "1234", "expected a string, got int"),
            ("redis", "db", '"0"', "expected an integer, got str"),
            ("mpush", "state-dir", "1", "expected a string, got int"),
        ]:
            key_name = f"[{table}] {key}" + ("[0]" if value.startswith("[6379") else "")
            self.assertConfigError(f"[{table}]\n{key} = {value}\n", key_name, needle)

    def test_bad_units(self):
        self.assertConfigError('[core]\nmax-packet-size = "10kb"\n', "[core] max-packet-size",
                               "unknown size unit 'kb'")
        self.assertConfigError('[core]\nmin-heartbeat = "3 mins"\n', "[core] min-heartbeat",
                               "unknown duration unit")
        self.assertConfigError('[core]\nmax-heartbeat = "-3m"\n', "[core] max-heartbeat",
                               "non-negative")
        self.assertConfigError('[core]\ncompress-threshold = -1\n',
                               "[core] compress-threshold", "non-negative")
        self.assertConfigError('[core]\nsession-expired-time = "1500ms"\n',
                               "[core] session-expired-time", "whole number of seconds")
        self.assertConfigError('[core]\npre-handshake-heartbeat = "soon"\n',
                               "[core] pre-handshake-heartbeat", "expected a duration")

    def test_max_packet_size_range(self):
        for value in ("0", "13", '"16777217b"', '"17m"', '"1g"'):
            self.assertConfigError(f"[core]\nmax-packet-size = {value}\n",
                                   "[core] max-packet-size", "must be between 14 and 16777216")

    def test_heartbeat_ranges(self):
        for key in ("min-heartbeat", "max-heartbeat", "pre-handshake-heartbeat"):
            self.assertConfigError(f"[core]\n{key} = 0\n", f"[core] {key}",
                                   "must be between 1 and 2147483647")
            self.assertConfigError(f'[core]\n{key} = "25d"\n', f"[core] {key}",
                                   "must be between 1 and 2147483647")

    def test_max_inflated_size_range(self):
        self.assertConfigError("[core]\nmax-inflated-size = 0\n", "[core] max-inflated-size",
                               "at least 1 bytes, got 0")
        self.assertConfigError('[core]\nmax-inflated-size = "lots"\n',
                               "[core] max-inflated-size", "expected a size like 10k")

    def test_max_hb_timeout_times_range(self):
        self.assertConfigError("[core]\nmax-hb-timeout-times = -1\n",
                               "[core] max-hb-timeout-times", "at least 0")

    def test_port_ranges(self):
        for key, value, needle in [
            ("connect-server-port", 0, "between 1 and 65535"),
            ("connect-server-port", 65536, "between 1 and 65535"),
            ("connect-server-port", -1, "between 1 and 65535"),
            ("gateway-server-port", 65536, "between 0 and 65535 (0 disables it)"),
            ("gateway-server-port", -1, "between 0 and 65535"),
            ("admin-server-port", 70000, "between 0 and 65535"),
            ("ws-server-port", 65536, "between 0 and 65535"),
            ("connect-server-backlog", 0, "between 1 and 65535"),
            ("connect-server-backlog", '"many"', "expected an integer"),
        ]:
            self.assertConfigError(f"[net]\n{key} = {value}\n", f"[net] {key}", needle)

    def test_ws_allowed_origins(self):
        config = parse('[net]\nws-allowed-origins = ["*", "HTTPS://App.Example.com:8443"]\n')
        self.assertEqual(config.net.ws_allowed_origins, ("*", "HTTPS://App.Example.com:8443"))
        for value in ("ftp://x", "https://", "https://a.test/path", "app.example.com", "null"):
            self.assertConfigError(f'[net]\nws-allowed-origins = ["{value}"]\n',
                                   "[net] ws-allowed-origins", "origin")

    def test_bad_ip(self):
        for key in ("local-ip", "public-ip", "connect-server-bind-ip",
                    "gateway-server-bind-ip", "admin-server-bind-ip"):
            for value in ("localhost", "10.0.0.256", "10.0.0", " 10.0.0.1"):
                self.assertConfigError(f'[net]\n{key} = "{value}"\n', f"[net] {key}",
                                       "expected an IPv4 or IPv6 address")

    def test_aes_key_length(self):
        for value in (24, 32, 0, 128):
            self.assertConfigError(f"[security]\naes-key-length = {value}\n",
                                   "[security] aes-key-length", "only 16 works")

    def test_bad_keys(self):
        for key, other in (("private-key", ""), ("public-key", f'private-key = "{PRIVATE}"')):
            for value, needle in [
                ("-----BEGIN PRIVATE KEY-----", "one line of base64"),
                ("MIIB\\nNgIB", "no line breaks"),
                ("MIIB NgIB", "no line breaks"),
                ("AB$C", "not valid base64"),
                ("ABC", "not valid base64"),
            ]:
                self.assertConfigError(f'[security]\n{other}\n{key} = "{value}"\n',
                                       f"[security] {key}", needle)

    def test_public_key_without_private_key(self):
        self.assertConfigError(f'[security]\npublic-key = "{PUBLIC}"\n',
                               "[security] public-key", "without [security] private-key")

    def test_bad_redis_nodes(self):
        for index, node in [(0, "localhost"), (0, ""), (0, ":6379"), (0, "host:"),
                            (0, "host:port"), (0, "host:0"), (0, "host:65536"),
                            (0, "host:123456"), (0, "redis://host:6379"), (0, "::1:6379"),
                            (0, "[::g]:6379"), (0, "ho st:6379")]:
            self.assertConfigError(f'[redis]\nnodes = ["{node}"]\n', f"[redis] nodes[{index}]")
        self.assertConfigError('[redis]\nnodes = ["a:1", "b"]\n', "[redis] nodes[1]",
                               "expected \"host:port\", got 'b'")
        self.assertConfigError('[redis]\nnodes = ["127.0.0.1:6379:pw"]\n', "[redis] nodes[0]",
                               "ip:port:password", "use [redis] password")

    def test_sentinel(self):
        config = parse_config(
            {"redis": {"cluster-model": "sentinel", "sentinel-master": "my master", "password": "p@ss",
                       "nodes": ["127.0.0.1:26379", "10.0.0.2:26380"], "db": 2}}
        )
        self.assertEqual(config.redis.url(), "redis+sentinel://:p%40ss@127.0.0.1:26379,10.0.0.2:26380/my%20master/2")
        address = parse_address(config.redis.url())
        self.assertEqual(address.sentinels, (("127.0.0.1", 26379), ("10.0.0.2", 26380)))
        self.assertEqual((address.master, address.db, address.password), ("my master", 2, "p@ss"))
        self.assertNotIn("p@ss", repr(address))
        self.assertConfigError('[redis]\ncluster-model = "sentinel"\nnodes = ["127.0.0.1:26379"]\n',
                               "[redis] sentinel-master", "needs the master's name")

    def test_cluster(self):
        config = parse_config(
            {"redis": {"cluster-model": "cluster", "password": "p@ss", "nodes": ["127.0.0.1:7000", "10.0.0.2:7001"]}}
        )
        self.assertEqual(config.redis.url(), "redis+cluster://:p%40ss@127.0.0.1:7000,10.0.0.2:7001")
        address = parse_address(config.redis.url())
        self.assertEqual(address.cluster_nodes, (("127.0.0.1", 7000), ("10.0.0.2", 7001)))
        self.assertEqual(address.password, "p@ss")
        self.assertConfigError('[redis]\ncluster-model = "cluster"\ndb = 1\nnodes = ["127.0.0.1:7000"]\n',
                               "[redis] db", "only db 0")

    def test_bad_sentinel_urls(self):
        for url in ("redis+sentinel://127.0.0.1:26379", "redis+sentinel://127.0.0.1/m",
                    "redis+sentinel://127.0.0.1:0/m", "redis+sentinel://h:1/m/x"):
            self.assertRaises(InvalidRedisUrl, parse_address, url)

    def test_bad_redis_db(self):
        self.assertConfigError("[redis]\ndb = -1\n", "[redis] db", "at least 0")

    def test_empty_state_dir(self):
        self.assertConfigError('[mpush]\nstate-dir = ""\n', "[mpush] state-dir", "empty")

    def test_unsupported_mpush_values(self):
        for table, key, value, needle in [
            ("net", "gateway-server-net", '"udp"', "only 'tcp'"),
            ("net", "ws-path", '"/ws"', "only '/'"),
            ("net", "public-host-mapping", '{ "10.0.0.1" = "1.2.3.4" }', "set public-ip"),
            ("redis", "cluster-model", '"ring"', "expected \"single\", \"sentinel\" or \"cluster\""),
            ("http", "proxy-enabled", '"false"', "expected true or false"),
        ]:
            self.assertConfigError(f"[{table}]\n{key} = {value}\n", f"[{table}] {key}", needle)

    def test_gateway_register_ip_must_match_local_ip(self):
        self.assertConfigError(
            '[net]\nlocal-ip = "10.0.0.1"\ngateway-server-register-ip = "10.0.0.2"\n',
            "[net] gateway-server-register-ip", "set local-ip to '10.0.0.2' instead")

    def test_top_level_not_a_table(self):
        e = self.assertRaises(ConfigError, parse_config, ["core"], "x.toml")
        self.assertIn("config x.toml: expected a table of tables", str(e))


class LoadConfigTests(ConfigErrorAssertions, SynchronousTestCase):

    def write(self, content: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_load_file(self):
        path = self.write(EVERY_KEY.encode())
        config = load_config(path)
        self.assertEqual(config, parse(EVERY_KEY))
        self.assertEqual(config.source, path)

    def test_missing_file(self):
        path = self.mktemp()
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(e), f"config {path}: cannot read the file: No such file or directory")

    def test_directory(self):
        path = self.mktemp()
        os.mkdir(path)
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertTrue(str(e).startswith(f"config {path}: cannot read the file: "), str(e))

    def test_syntax_error(self):
        path = self.write(b"[core]\nmax-packet-size = 10k\n")
        e = self.assertRaises(ConfigError, load_config, path)
        try:
            tomllib.loads("[core]\nmax-packet-size = 10k\n")
        except tomllib.TOMLDecodeError as toml_error:
            expected = str(toml_error)
        self.assertEqual(str(e), f"config {path}: TOML syntax error: {expected}")
        self.assertIn("line 2", str(e))

    def test_duplicate_key_is_a_syntax_error(self):
        path = self.write(b"[net]\nconnect-server-port = 1\nconnect-server-port = 2\n")
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("TOML syntax error", str(e))

    def test_not_utf8(self):
        path = self.write(b'[mpush]\nstate-dir = "/tmp/\xff"\n')
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(e), f"config {path}: the file is not valid UTF-8")

    def test_error_from_file_names_file_and_key(self):
        path = self.write(b"[net]\nconnect-server-port = 0\n")
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(e), f"config {path}: [net] connect-server-port: "
                                 "must be between 1 and 65535, got 0")


class DataclassTests(SynchronousTestCase):

    def test_frozen_and_slotted(self):
        config = Config()
        for obj in (config, config.core, config.security, config.net, config.redis):
            self.assertFalse(hasattr(obj, "__dict__"), type(obj).__name__)
            first = dataclasses.fields(obj)[0].name
            self.assertRaises(dataclasses.FrozenInstanceError, setattr, obj, first, None)
            # Python 3.11 raises TypeError here for frozen+slots classes; either way, no.
            self.assertRaises((AttributeError, TypeError), setattr, obj, "extra", 1)

    def test_hashable(self):
        self.assertEqual(hash(parse(EVERY_KEY)), hash(parse(EVERY_KEY)))

    def test_replace(self):
        config = Config()
        changed = config.replace(state_dir="/tmp/x", source="here")
        self.assertEqual(changed.state_dir, "/tmp/x")
        self.assertEqual(changed.core, config.core)
        self.assertEqual(config.state_dir, "/var/lib/mpush")

    def test_replace_validates(self):
        self.assertRaises(ConfigError, Config().replace, state_dir="")
        self.assertRaises(ConfigError, Config().replace, core="not a CoreConfig")
        self.assertRaises(TypeError, Config().replace, no_such_field=1)

    def test_direct_construction_validates(self):
        e = self.assertRaises(ConfigError, CoreConfig, max_packet_size=5)
        self.assertEqual(e.key, "[core] max-packet-size")
        self.assertRaises(ConfigError, CoreConfig, min_heartbeat="3m")
        self.assertRaises(ConfigError, SecurityConfig, aes_key_length=32)
        self.assertRaises(ConfigError, NetConfig, connect_server_port=0)
        self.assertRaises(ConfigError, RedisConfig, nodes=["a:1"])
        self.assertRaises(ConfigError, RedisConfig, nodes=("a",))

    def test_secrets_not_in_repr(self):
        config = parse(EVERY_KEY)
        text = repr(config)
        self.assertNotIn("s3cret", text)
        self.assertNotIn(PRIVATE, text)
        self.assertIn("redis.internal:6380", text)


class RedisUrlTests(ConfigErrorAssertions, SynchronousTestCase):

    def test_parse(self):
        self.assertEqual(parse_redis_url("redis://127.0.0.1:6379/0"),
                         RedisConfig(nodes=("127.0.0.1:6379",)))
        self.assertEqual(parse_redis_url("redis://:pw@redis.internal:6380/5"),
                         RedisConfig(nodes=("redis.internal:6380",), password="pw", db=5))

    def test_cluster(self):
        redis = parse_redis_url("redis+cluster://:p%40ss@10.0.0.1:7000,10.0.0.2:7001")
        self.assertEqual(redis, RedisConfig(nodes=("10.0.0.1:7000", "10.0.0.2:7001"), password="p@ss",
                                            cluster_model="cluster"))
        self.assertEqual(redis.url(), "redis+cluster://:p%40ss@10.0.0.1:7000,10.0.0.2:7001")
        for bad in ("redis+cluster://10.0.0.1", "redis+cluster://h:1/2"):
            e = self.assertRaises(ConfigError, parse_redis_url, bad)
            self.assertIn("redis+cluster://", str(e))

    def test_defaults(self):
        self.assertEqual(parse_redis_url("redis://localhost"),
                         RedisConfig(nodes=("localhost:6379",)))
        self.assertEqual(parse_redis_url("redis://localhost/"),
                         RedisConfig(nodes=("localhost:6379",)))
        self.assertEqual(parse_redis_url("redis://localhost:7000"),
                         RedisConfig(nodes=("localhost:7000",)))

    def test_ipv6(self):
        redis = parse_redis_url("redis://[::1]:6390/1")
        self.assertEqual(redis.nodes, ("[::1]:6390",))
        self.assertEqual(redis.url(), "redis://[::1]:6390/1")

    def test_url_round_trip(self):
        for password in ("", "pw", "p@ss:w/rd?#%", "ünïcode"):
            redis = RedisConfig(nodes=("h:1234",), password=password, db=7)
            url = redis.url()
            self.assertEqual(parse_redis_url(url), redis, url)
        self.assertEqual(RedisConfig(nodes=("h:1",), password="a@b").url(),
                         "redis://:a%40b@h:1/0")

    def test_url_uses_first_node(self):
        self.assertEqual(RedisConfig(nodes=("a:1", "b:2"), db=2).url(), "redis://a:1/2")

    def test_bad_urls(self):
        for url, needle in [
            ("http://localhost:6379/0", "unsupported scheme 'http'"),
            ("rediss://localhost:6379/0", "unsupported scheme 'rediss'"),
            ("localhost:6379", "unsupported scheme"),
            ("", "unsupported scheme ''"),
            ("redis://", "missing host"),
            ("redis:///0", "missing host"),
            ("redis://localhost:abc/0", "malformed URL"),
            ("redis://localhost:70000/0", "malformed URL"),
            ("redis://localhost:0/0", "port must be between 1 and 65535"),
            ("redis://localhost/x", "database must be a number"),
            ("redis://localhost/-1", "database must be a number"),
            ("redis://localhost/0/1", "database must be a number"),
            ("redis://localhost/0?timeout=1", "query strings"),
            ("redis://localhost/0#frag", "fragments"),
            ("redis://user:pw@localhost/0", "user name"),
            ("redis://[::1/0", "malformed URL"),
        ]:
            e = self.assertRaises(ConfigError, parse_redis_url, url)
            self.assertIn(needle, str(e), url)
            self.assertTrue(str(e).startswith("redis url: "), str(e))
            self.assertNotIn("\n", str(e))

    def test_not_a_string(self):
        e = self.assertRaises(ConfigError, parse_redis_url, None)
        self.assertIn("expected a redis:// URL string", str(e))

    def test_password_not_in_errors(self):
        for url in ("redis://:topsecret@localhost:abc/0", "redis://u:topsecret@h/0",
                    "redis://:topsecret@h/x", "redis://:top/secret@h/0"):
            e = self.assertRaises(ConfigError, parse_redis_url, url)
            self.assertNotIn("secret", str(e), url)


class OverrideTests(SynchronousTestCase):

    def test_no_overrides_returns_same_config(self):
        config = parse(EVERY_KEY)
        self.assertIs(apply_overrides(config), config)

    def test_ports(self):
        config = apply_overrides(Config(), connect_port=5000, gateway_port=0, admin_port=5002)
        self.assertEqual((config.net.connect_server_port, config.net.gateway_server_port,
                          config.net.admin_server_port), (5000, 0, 5002))
        self.assertEqual(config.net.ws_server_port, 0)
        self.assertEqual(config.core, CoreConfig())

    def test_only_given_overrides_change(self):
        base = parse(EVERY_KEY)
        config = apply_overrides(base, gateway_port=6001)
        self.assertEqual(config.net.gateway_server_port, 6001)
        self.assertEqual(config.net.connect_server_port, 4000)
        self.assertEqual(config.net.admin_server_port, 4002)
        self.assertEqual(config.redis, base.redis)
        self.assertEqual(config.source, base.source)

    def test_redis_url(self):
        config = apply_overrides(parse(EVERY_KEY), redis_url="redis://:x@10.9.9.9:7000/4")
        self.assertEqual(config.redis, RedisConfig(nodes=("10.9.9.9:7000",), password="x", db=4))
        self.assertEqual(config.net.connect_server_port, 4000)

    def test_bad_overrides(self):
        for kwargs, key in [
            ({"connect_port": 0}, "[net] connect-server-port"),
            ({"connect_port": 65536}, "[net] connect-server-port"),
            ({"connect_port": "3000"}, "[net] connect-server-port"),
            ({"gateway_port": -1}, "[net] gateway-server-port"),
            ({"admin_port": True}, "[net] admin-server-port"),
            ({"redis_url": "http://x"}, "redis url"),
        ]:
            e = self.assertRaises(ConfigError, apply_overrides, Config(), **kwargs)
            self.assertEqual(e.key, key)
            self.assertTrue(str(e).startswith(f"config overrides: {key}: "), str(e))


class PushAndBindTests(SynchronousTestCase):

    def test_defaults_are_mpush_reference(self):
        push = Config().push
        self.assertEqual((push.global_limit, push.global_max, push.global_duration),
                         (5000, 0, 1000))
        self.assertEqual((push.broadcast_limit, push.broadcast_max, push.broadcast_duration),
                         (3000, 100000, 1000))
        self.assertEqual(push.tag_match, "substring")
        self.assertEqual(Config().bind.validator, "")

    def test_bad_tag_match(self):
        error = self.assertRaises(ConfigError, parse, '[push]\ntag-match = "regex"\n')
        self.assertIn("[push] tag-match", str(error))

    def test_negative_flow_limit(self):
        error = self.assertRaises(ConfigError, parse, "[push.flow-control.global]\nlimit = -1\n")
        self.assertIn("[push] flow-control.global.limit", str(error))

    def test_unknown_key_in_flow_control(self):
        error = self.assertRaises(ConfigError, parse, "[push.flow-control.global]\nrate = 1\n")
        self.assertIn("rate", str(error))

    def test_hmac_needs_secret(self):
        error = self.assertRaises(ConfigError, parse, '[bind]\nvalidator = "hmac"\n')
        self.assertIn("hmac-secret", str(error))

    def test_validator_form(self):
        error = self.assertRaises(ConfigError, parse, '[bind]\nvalidator = "nonsense"\n')
        self.assertIn("[bind] validator", str(error))
        config = parse('[bind]\nvalidator = "mypackage.auth:TokenValidator"\n')
        self.assertEqual(config.bind.validator, "mypackage.auth:TokenValidator")


class ClusterTests(SynchronousTestCase):

    def test_refresh_must_be_shorter_than_ttl(self):
        error = self.assertRaises(ConfigError, parse, '[cluster]\nnode-ttl = "2s"\nnode-refresh = "2s"\n')
        self.assertIn("[cluster] node-refresh", str(error))

    def test_values(self):
        config = parse('[cluster]\nnode-ttl = "2s"\nnode-refresh = "500ms"\n')
        self.assertEqual((config.cluster.node_ttl, config.cluster.node_refresh), (2000, 500))


class ReliabilityAndEcosystemConfigTests(SynchronousTestCase):

    def test_limits(self):
        config = parse('[limits]\nmax-connections = 20000\nmax-connections-per-ip = 50\n'
                       'handshake-rate = 4000\npre-handshake-timeout = "15s"\n'
                       'max-pending-packets = 64\nmax-read-size = "64k"\n')
        limits = config.limits
        self.assertEqual((limits.max_connections, limits.max_connections_per_ip, limits.handshake_rate,
                          limits.pre_handshake_timeout, limits.max_pending_packets, limits.max_read_size),
                         (20000, 50, 4000, 15000, 64, 65536))
        error = self.assertRaises(ConfigError, parse, "[limits]\nmax-connections = -1\n")
        self.assertIn("[limits] max-connections", str(error))

    def test_tls_needs_cert_and_key(self):
        error = self.assertRaises(ConfigError, parse, "[tls]\nconnect-server = true\n")
        self.assertIn("[tls] cert-file", str(error))
        config = parse('[tls]\ncert-file = "/etc/mpush/cert.pem"\nkey-file = "/etc/mpush/key.pem"\n'
                       'connect-server = true\n')
        self.assertTrue(config.tls.connect_server)

    def test_zk(self):
        config = parse('[zk]\nenabled = true\nserver-address = "10.0.0.1:2181,10.0.0.2:2181"\n'
                       'sessionTimeoutMs = "10s"\n')
        self.assertEqual((config.zk.enabled, config.zk.server_address, config.zk.session_timeout),
                         (True, "10.0.0.1:2181,10.0.0.2:2181", 10000))

    def test_proxy(self):
        config = parse('[http]\nproxy-enabled = true\nproxy-allow = ["10.1.2.0/24", "127.0.0.1"]\n'
                       'default-read-timeout = "3s"\nmax-content-length = "1m"\n')
        proxy = config.proxy
        self.assertEqual((proxy.enabled, proxy.allow, proxy.default_read_timeout, proxy.max_content_length),
                         (True, ("10.1.2.0/24", "127.0.0.1"), 3000, 1 << 20))
        error = self.assertRaises(ConfigError, parse, '[http]\nproxy-allow = ["not-an-ip"]\n')
        self.assertIn("[http] proxy-allow", str(error))
        ported = ["10.1.2.3:8080", "10.1.0.0/16:443", "[fd00::/8]:443", "[::1]:80", "fd00::/8"]
        config = parse("[http]\nproxy-allow = [%s]\n" % ", ".join(f'"{e}"' for e in ported))
        self.assertEqual(config.proxy.allow, tuple(ported))
        for bad in ("10.1.2.3:0", "10.1.2.3:65536", "10.1.2.3:http", "[fd00::1]x", "::1:80x", "[fd00::1]:"):
            error = self.assertRaises(ConfigError, parse, f'[http]\nproxy-allow = ["{bad}"]\n')
            self.assertIn("[http] proxy-allow", str(error))
        error = self.assertRaises(ConfigError, parse, '[http]\ndns-mapping = { "a.com" = [] }\n')
        self.assertIn("[http] dns-mapping", str(error))
