"""
The server fuzzer (mpush.fuzz): its bytes are deterministic and well aimed,
its settings keep it on loopback and bounded, and a short storm against a
real C{twistd mpush} node leaves the node alive, its honest devices with
every push and pong, its connection count and its memory where they were.
"""

import io
import random
import sys

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush.fuzz import (
    DEFAULT_ATTACKS,
    Attack,
    FrameMaker,
    FuzzConfig,
    FuzzConfigError,
    HonestReport,
    admin_count_connections,
    judge,
    plan_attacks,
    plan_digest,
    run_fuzz,
    scan_node_log,
)
from mpush.fuzz.__main__ import build_parser, config_from, main
from mpush.protocol.body import decode_body
from mpush.protocol.crypto import (
    MPUSH_DEMO_PRIVATE_KEY,
    MPUSH_DEMO_PUBLIC_KEY,
    AesCipher,
    RsaPrivateKey,
)
from mpush.protocol.errors import FramingError, InflateTooLarge
from mpush.protocol.messages import HandshakeMessage
from mpush.protocol.packet import Command, Flags, Packet, PacketDecoder

from tests.process_support import NodeProcess

DEMO_KEY = RsaPrivateKey.from_pkcs8_base64(MPUSH_DEMO_PRIVATE_KEY)


def maker(seed, tag="t"):
    return FrameMaker(random.Random(seed), MPUSH_DEMO_PUBLIC_KEY, 10240, tag=tag)


class FrameMakerTests(SynchronousTestCase):
    def everything(self, seed):
        m = maker(seed)
        cipher = AesCipher(bytes(16), bytes(16))
        return (
            m.templates(),
            [m.mutate(frame) for frame in m.templates()],
            m.session_frames(cipher, 30),
            m.oversize_header(),
            m.gateway_frames(),
            m.rsa_encrypt(b"x" * 300),
        )

    def test_same_seed_same_bytes(self):
        """Even the RSA padding: a seed is a reproducer."""
        self.assertEqual(self.everything("s:1"), self.everything("s:1"))
        self.assertNotEqual(self.everything("s:1"), self.everything("s:2"))

    def test_rsa_padding_is_valid_pkcs1(self):
        m = maker(3)
        for size in (1, 117, 118, 300):
            plain = bytes(i % 256 for i in range(size))
            secret = m.rsa_encrypt(plain)
            self.assertEqual(len(secret), 128 * -(-size // 117))
            self.assertEqual(DEMO_KEY.decrypt(secret), plain)

    def test_handshake_is_what_the_node_decodes(self):
        m = maker(4)
        client_key, iv = m.keys()
        [packet] = PacketDecoder().feed(m.handshake("dev-x", client_key, iv))
        self.assertEqual(packet.cmd, Command.HANDSHAKE)
        self.assertTrue(packet.flags & Flags.CRYPTO)
        message = HandshakeMessage.decode(decode_body(packet, DEMO_KEY))
        self.assertEqual((message.device_id, message.client_key, message.iv), ("dev-x", client_key, iv))

    def test_templates_are_whole_frames(self):
        frames = maker(5).templates()
        packets = PacketDecoder().feed(b"".join(frames))
        self.assertEqual(len(packets), len(frames))
        commands = {packet.cmd for packet in packets}
        for cmd in (Command.HANDSHAKE, Command.FAST_CONNECT, Command.BIND, Command.PUSH, Command.ACK,
                    Command.HEARTBEAT):
            self.assertIn(cmd, commands)

    def test_framed_heartbeat_is_thirteen_bytes(self):
        frame = maker(6).frame(Command.HEARTBEAT)
        self.assertEqual(len(frame), 13)
        [packet] = PacketDecoder().feed(frame)
        self.assertEqual(packet.cmd, Command.HEARTBEAT)

    def test_oversize_header_is_refused_by_the_decoder(self):
        m = maker(7)
        for _ in range(50):
            self.assertRaises(FramingError, PacketDecoder(10240).feed, m.oversize_header())

    def test_session_frames_reach_the_handlers(self):
        """After a handshake the garbage must get past framing to mean anything."""
        m = maker(8)
        frames = m.session_frames(AesCipher(bytes(16), bytes(16)), 200)
        packets = PacketDecoder(10240).feed(b"".join(frames))
        self.assertGreaterEqual(len(packets), 200)
        self.assertTrue(any(p.flags & Flags.CRYPTO for p in packets))

    def test_zlib_bomb_meets_the_inflate_cap(self):
        m = maker(9)
        refused = 0
        for _ in range(10):
            bomb = m.zlib_bomb()
            self.assertLess(len(bomb), 10240)
            try:
                plain = decode_body(Packet(Command.PUSH, 1, Flags.COMPRESS, bomb))
            except InflateTooLarge:
                refused += 1
                continue
            self.assertEqual(len(plain), 1 << 20)  # exactly at the cap: allowed
        self.assertGreater(refused, 0)

    def test_mutations_change_frames(self):
        m = maker(10)
        template = m.templates()[2]
        changed = sum(m.mutate(template) != template for _ in range(100))
        self.assertGreater(changed, 90)


class PlanTests(SynchronousTestCase):
    def test_deterministic_and_covering(self):
        plans = plan_attacks(42, 25)
        self.assertEqual(plans, plan_attacks(42, 25))
        self.assertNotEqual([p.attack for p in plans], [p.attack for p in plan_attacks(43, 25)])
        self.assertEqual({p.attack for p in plans[:len(DEFAULT_ATTACKS)]}, set(DEFAULT_ATTACKS))
        self.assertEqual([p.index for p in plans], list(range(25)))

    def test_heavy_attacks_only_when_named(self):
        self.assertNotIn(Attack.RSA_BURN, DEFAULT_ATTACKS)
        self.assertNotIn(Attack.SILENT_FLOOD, DEFAULT_ATTACKS)
        self.assertNotIn(Attack.QUEUE_FILL, DEFAULT_ATTACKS)
        plans = plan_attacks(1, 4, [Attack.RSA_BURN])
        self.assertEqual({p.attack for p in plans}, {Attack.RSA_BURN})

    def test_digest(self):
        config = FuzzConfig("127.0.0.1", 1, 2, connections=20, seed=5)
        self.assertEqual(plan_digest(config), plan_digest(FuzzConfig("127.0.0.1", 1, 2, connections=20, seed=5)))
        self.assertNotEqual(plan_digest(config), plan_digest(FuzzConfig("127.0.0.1", 1, 2, connections=20, seed=6)))


class ConfigTests(SynchronousTestCase):
    def test_loopback_only(self):
        for host in ("10.0.0.1", "8.8.8.8", "0.0.0.0", "example.com", "", "::", "192.168.1.2"):
            with self.assertRaises(FuzzConfigError, msg=host):
                FuzzConfig(host, 3000, 3001)
        self.assertEqual(FuzzConfig("localhost", 3000, 3001).host, "127.0.0.1")
        self.assertEqual(FuzzConfig("127.9.9.9", 3000, 3001).host, "127.9.9.9")
        self.assertEqual(FuzzConfig("::1", 3000, 3001).host, "::1")

    def test_bounded(self):
        for bad in (dict(duration=0), dict(duration=3601), dict(connections=0), dict(connections=100_001),
                    dict(concurrency=0), dict(concurrency=513), dict(honest=0), dict(port=0),
                    dict(gateway_port=70000), dict(hold=1000), dict(flood_bytes=0), dict(duration=True),
                    dict(attacks=()), dict(attacks=("no-such-attack",)), dict(public_key="not a key")):
            options = dict(host="127.0.0.1", port=3000, gateway_port=3001)
            options.update(bad)
            with self.assertRaises(FuzzConfigError, msg=repr(bad)):
                FuzzConfig(**options)

    def test_attack_names(self):
        config = FuzzConfig("127.0.0.1", 1, 2, attacks=("mutated", Attack.OVERSIZE))
        self.assertEqual(config.attacks, (Attack.MUTATED, Attack.OVERSIZE))


class CommandLineTests(SynchronousTestCase):
    def test_the_documented_command_line(self):
        args = build_parser().parse_args(
            "--host 127.0.0.1 --port 3000 --gateway-port 3001 --duration 60 --connections 200 --seed 9".split())
        config = config_from(args)
        self.assertEqual((config.port, config.gateway_port, config.duration, config.connections, config.seed),
                         (3000, 3001, 60.0, 200, 9))
        self.assertEqual(config.attacks, DEFAULT_ATTACKS)

    def test_attack_list(self):
        args = build_parser().parse_args(["--port", "1", "--gateway-port", "2", "--attacks", "rsa-burn,half-open"])
        self.assertEqual(config_from(args).attacks, (Attack.RSA_BURN, Attack.HALF_OPEN))

    def test_refuses_a_remote_host(self):
        errors = self.capture_stderr()
        with self.assertRaises(SystemExit) as exit_:
            main(["--host", "93.184.216.34", "--port", "1", "--gateway-port", "2"])
        self.assertEqual(exit_.exception.code, 2)
        self.assertIn("loopback only", errors.getvalue())

    def test_refuses_an_unknown_attack(self):
        errors = self.capture_stderr()
        with self.assertRaises(SystemExit) as exit_:
            build_parser().parse_args(["--port", "1", "--gateway-port", "2", "--attacks", "nope"])
        self.assertEqual(exit_.exception.code, 2)
        self.assertIn("rsa-burn", errors.getvalue())

    def capture_stderr(self):
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)
        return errors


def clean_honest(**changes):
    fields = dict(
        clients=3, pushes_sent=50, pushes_acked=50, push_statuses={"success": 50}, received=50,
        missing=0, duplicates=0, misdelivered=0, foreign=0, pings_ok=20, pings_failed=0,
        max_ping_rtt=0.01, unexpected_closes=(),
    )
    fields.update(changes)
    return HonestReport(**fields)


class JudgeTests(SynchronousTestCase):
    """The verdict: each kind of damage is named, a clean run has none."""

    config = FuzzConfig("127.0.0.1", 1, 2, honest=3, admin_port=3, pid=4, rss_margin_kb=1000)

    def problems(self, honest=None, after=3, baseline=10000, rss_after=10500, alive=True, errors=()):
        return judge(self.config, honest or clean_honest(), after, baseline, rss_after, alive, errors)

    def test_clean_run(self):
        self.assertEqual(self.problems(), ())
        self.assertEqual(self.problems(rss_after=11000), ())

    def test_each_kind_of_damage(self):
        cases = [
            (dict(alive=False), "is gone"),
            (dict(after=7), "7 connections"),
            (dict(after=None), "did not answer"),
            (dict(rss_after=11001), "RSS"),
            (dict(errors=("boom",)), "fuzzer error: boom"),
            (dict(honest=clean_honest(pushes_acked=49, push_statuses={"success": 49, "timeout": 1})), "not acknowledged"),
            (dict(honest=clean_honest(missing=2)), "never reached"),
            (dict(honest=clean_honest(duplicates=1)), "more than once"),
            (dict(honest=clean_honest(misdelivered=1)), "wrong device"),
            (dict(honest=clean_honest(pings_failed=1)), "pings unanswered"),
            (dict(honest=clean_honest(unexpected_closes=("honest-0: reset",))), "honest-0: reset"),
            (dict(honest=clean_honest(clients=2), after=2), "only 2 of 3"),
        ]
        for changes, expected in cases:
            problems = self.problems(**changes)
            self.assertEqual(len(problems), 1, (changes, problems))
            self.assertIn(expected, problems[0])

    def test_unwatched_node(self):
        config = FuzzConfig("127.0.0.1", 1, 2, honest=3)
        self.assertEqual(judge(config, clean_honest(), None, None, None, None), ())


class ScanLogTests(SynchronousTestCase):
    def test_finds_unexpected_exceptions(self):
        text = (
            "2026-01-01 [mpush.server.device.connection.ConnectionProtocol#info] closing 127.0.0.1:5: frame too big\n"
            "2026-01-01 [-] Unhandled Error\n"
            "\tTraceback (most recent call last):\n"
            "2026-01-01 [mpush.server.device.dispatcher.MessageDispatcher#critical] Unhandled error in Deferred:\n"
        )
        found = scan_node_log(text)
        self.assertEqual(len(found), 3)
        self.assertTrue(found[0].endswith("Unhandled Error"))

    def test_quiet_log(self):
        self.assertEqual(scan_node_log("handshake ok\nclosing idle connection\nBIND refused: 0 invalid param\n"), [])


def fuzz_node_config():
    """The demo key pair, in-memory stores, and a 1 s pre-handshake heartbeat so
    the node reaps silent connections within seconds."""
    return (
        "[security]\n"
        f'private-key = "{MPUSH_DEMO_PRIVATE_KEY}"\n'
        f'public-key = "{MPUSH_DEMO_PUBLIC_KEY}"\n'
        "[net]\n"
        'local-ip = "127.0.0.1"\n'
        "[core]\n"
        'pre-handshake-heartbeat = "1s"\n'
    )


def storm_config(node, **changes):
    """The short storm CI runs against C{node}, with C{changes}."""
    fields = dict(
        host="127.0.0.1",
        port=node.port,
        gateway_port=node.gateway_port,
        admin_port=node.admin_port,
        pid=node.process.pid,
        duration=4.0,
        connections=100,
        concurrency=40,
        honest=3,
        push_rate=25.0,
        hold=1.5,
    )
    fields.update(changes)
    return FuzzConfig(**fields)


class ServerFuzzTests(TestCase):
    """The short storm CI runs; docs/FUZZING.md has the long one."""

    timeout = 180

    def start_node(self):
        node = NodeProcess(fuzz_node_config())
        self.addCleanup(node.stop)
        return node.start()

    @defer.inlineCallbacks
    def test_admin_count(self):
        node = self.start_node()
        count = yield admin_count_connections(reactor, "127.0.0.1", node.admin_port)
        self.assertEqual(count, 0)

    @defer.inlineCallbacks
    def test_short_storm(self):
        node = self.start_node()
        config = storm_config(node, seed=20240601, half_open_hold=12.0, flood_bytes=16384)
        report = yield run_fuzz(reactor, config)
        summary = report.summary()
        self.assertEqual(report.problems, (), summary)
        self.assertEqual(scan_node_log(node.log()), [], summary)
        # The storm really happened, and every kind of attack took part.
        self.assertEqual(set(report.attacks), {a.value for a in DEFAULT_ATTACKS}, summary)
        for name, stats in report.attacks.items():
            self.assertGreater(stats["launched"], 0, f"{name} never launched\n{summary}")
            self.assertEqual(stats["connect_failed"], 0, summary)
        for name in (Attack.GARBAGE_AFTER_HANDSHAKE.value, Attack.WRONG_KEY.value):
            stats = report.attacks[name]
            self.assertEqual(stats["handshakes"], stats["launched"], f"{name}: handshakes refused\n{summary}")
        # Garbage under a wrong key is refused with a close, every time.
        wrong_key = report.attacks[Attack.WRONG_KEY.value]
        self.assertEqual(wrong_key["closed_by_node"], wrong_key["launched"], summary)
        oversize = report.attacks[Attack.OVERSIZE.value]
        self.assertGreater(oversize["closed_by_node"], 0, summary)
        # Silent connections are reaped by the node's idle check, not by us.
        half_open = report.attacks[Attack.HALF_OPEN.value]
        self.assertEqual(half_open["reaped"], half_open["launched"], summary)
        # The honest side did real work, and the node was watched.
        honest = report.honest
        self.assertGreater(honest.pushes_sent, 20, summary)
        self.assertEqual(honest.received, honest.pushes_sent, summary)
        self.assertGreater(honest.pings_ok, 0, summary)
        self.assertEqual((report.connections_before, report.connections_after), (3, 3), summary)
        self.assertTrue(report.node_alive, summary)
        self.assertIsNotNone(report.rss_after_kb, summary)


class RsaFloodTests(TestCase):
    """[limits] handshake-rate's default keeps an RSA flood from starving pushes."""

    timeout = 180

    @defer.inlineCallbacks
    def test_rsa_burn_on_a_default_node_leaves_pushes_flowing(self):
        node = NodeProcess(fuzz_node_config())  # no [limits]: the defaults
        self.addCleanup(node.stop)
        node.start()
        config = storm_config(
            node,
            seed=1,
            attacks=(Attack.RSA_BURN,),
            # Without a limit, most pushes time out against this bound
            # and pings go unanswered (docs/FUZZING.md).
            reply_timeout=2.0,
        )
        report = yield run_fuzz(reactor, config)
        summary = report.summary()
        self.assertEqual(report.problems, (), summary)
        burn = report.attacks[Attack.RSA_BURN.value]
        self.assertEqual(burn["closed_by_node"], burn["launched"], summary)
        self.assertEqual(report.honest.pushes_acked, report.honest.pushes_sent, summary)
