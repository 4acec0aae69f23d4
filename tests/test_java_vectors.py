"""Byte-for-byte checks against vectors produced by the unmodified Java client.

One test method is generated per vector id (test_vector_<id>), so a failure
names the vector. If the vectors file is missing, a single test fails with
the path it looked at.
"""

import hashlib

from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.body import decode_body, inflate, make_packet, make_raw_packet
from mpush.protocol.crypto import (
    MPUSH_DEMO_MODULUS,
    MPUSH_DEMO_PRIVATE_KEY,
    MPUSH_DEMO_PUBLIC_KEY,
    AesCipher,
    RsaPrivateKey,
    RsaPublicKey,
    mix_key,
)
from mpush.protocol.fields import FieldReader, FieldWriter, decode_headers, encode_headers
from mpush.protocol.messages import (
    AckMessage,
    BindUserMessage,
    ErrorMessage,
    FastConnectMessage,
    FastConnectOkMessage,
    HandshakeMessage,
    HandshakeOkMessage,
    HttpRequestMessage,
    HttpResponseMessage,
    KickUserMessage,
    OkMessage,
    PushMessage,
)
from mpush.protocol.packet import (
    HEADER_LENGTH,
    HEARTBEAT,
    Command,
    Flags,
    Packet,
    PacketDecoder,
    encode_packet,
)

from tests.vectors import try_load_vectors

DOCUMENT, LOAD_ERROR = try_load_vectors()

_PIPELINE_FLAGS = int(Flags.CRYPTO | Flags.COMPRESS)


def _hex(value):
    return bytes.fromhex(value) if value is not None else None


def _utf8(value):
    return value.encode("utf-8") if value is not None else None


def _private_key():
    return RsaPrivateKey.from_pkcs8_base64(DOCUMENT["keys"]["rsa_private_key_pkcs8_b64"])


def _decode_one(test, frame, vid):
    """Decode a frame that must hold exactly one packet, both as server and client."""
    packets = None
    for limit in (10240, None):
        decoder = PacketDecoder(limit)
        got = decoder.feed(frame)
        test.assertEqual(len(got), 1, f"{vid}: expected exactly one packet, got {got!r}")
        test.assertEqual(decoder.buffered, 0, f"{vid}: bytes left in the decoder")
        packets = got
    return packets[0]


def _check_header(test, packet, header, vid):
    test.assertEqual(
        (len(packet.body), packet.cmd, packet.cc, packet.flags, packet.session_id, packet.lrc),
        (
            header["body_len"],
            header["cmd"],
            header["cc"],
            header["flags"],
            header["session_id"],
            header["lrc"],
        ),
        f"{vid}: header fields",
    )
    if "cmd_name" in header:
        test.assertEqual(Command(packet.cmd).name, header["cmd_name"], f"{vid}: command name")


def _cipher(spec):
    if isinstance(spec, dict):
        return AesCipher(bytes.fromhex(spec["key"]), bytes.fromhex(spec["iv"]))
    return None


# --- building messages from a vector's decoded fields -----------------------


def _handshake(f):
    return HandshakeMessage(
        f["device_id"],
        f["os_name"],
        f["os_version"],
        f["client_version"],
        _hex(f["iv"]),
        _hex(f["client_key"]),
        f["min_heartbeat"],
        f["max_heartbeat"],
        f["timestamp"],
    )


def _handshake_ok(f):
    return HandshakeOkMessage(
        _hex(f["server_key"]), f["heartbeat"], f["session_id"], f["expire_time"]
    )


def _bind(f):
    return BindUserMessage(f["user_id"], f["alias"], f["tags"])


def _fast_connect(f):
    return FastConnectMessage(
        f["session_id"], f["device_id"], f["min_heartbeat"], f["max_heartbeat"]
    )


def _http_request(f):
    headers = decode_headers(f["headers_string"]) if "headers_string" in f else None
    body = _utf8(f["body_utf8"]) if "body_utf8" in f else f.get("body")
    return HttpRequestMessage(f["method"], f["uri"], headers, body)


def _http_response(f):
    return HttpResponseMessage(
        f["status_code"],
        f["reason_phrase"],
        decode_headers(f["headers_string"]),
        _utf8(f.get("body_utf8")),
    )


def _message_for(cmd, direction, fields):
    """The message a step's `fields` describe, chosen by command and direction."""
    to_server = direction.startswith("client")
    if cmd == Command.HANDSHAKE:
        return _handshake(fields) if to_server else _handshake_ok(fields)
    if cmd == Command.FAST_CONNECT:
        return _fast_connect(fields) if to_server else FastConnectOkMessage(fields["heartbeat"])
    if cmd in (Command.BIND, Command.UNBIND):
        return _bind(fields)
    if cmd == Command.OK:
        return OkMessage(fields["cmd"], fields["code"], fields["data"])
    if cmd == Command.ERROR:
        return ErrorMessage(fields["cmd"], fields["code"], fields["reason"], fields["data"])
    if cmd == Command.HTTP_PROXY:
        return _http_request(fields) if to_server else _http_response(fields)
    if cmd == Command.KICK:
        return KickUserMessage(fields["device_id"], fields["user_id"])
    if cmd == Command.PUSH:
        return PushMessage(_utf8(fields["content_utf8"]))
    raise AssertionError(f"no message class for cmd {cmd} ({direction})")


_MESSAGE_CLASSES = {
    (Command.HANDSHAKE, True): HandshakeMessage,
    (Command.HANDSHAKE, False): HandshakeOkMessage,
    (Command.FAST_CONNECT, True): FastConnectMessage,
    (Command.FAST_CONNECT, False): FastConnectOkMessage,
    (Command.BIND, True): BindUserMessage,
    (Command.UNBIND, True): BindUserMessage,
    (Command.OK, False): OkMessage,
    (Command.ERROR, False): ErrorMessage,
    (Command.HTTP_PROXY, True): HttpRequestMessage,
    (Command.HTTP_PROXY, False): HttpResponseMessage,
    (Command.KICK, False): KickUserMessage,
    (Command.PUSH, False): PushMessage,
}


# --- message_body vectors: id -> (message class, message built from input) --


def _body_http_request_input(i):
    headers = {}
    for line in i["headers_in_order"]:
        name, _, value = line.partition(":")
        headers[name] = value
    return HttpRequestMessage(i["method"], i["uri"], headers, _utf8(i["body_utf8"]))


_MESSAGE_BODY_INPUTS = {
    "body_handshake": _handshake,
    "body_bind": _bind,
    "body_unbind": _bind,
    "body_fast_connect": _fast_connect,
    "body_http_request": _body_http_request_input,
    "body_handshake_ok": _handshake_ok,
    "body_ok": lambda i: OkMessage(i["cmd"], i["code"], i["data"]),
    "body_error": lambda i: ErrorMessage(i["cmd"], i["code"], i["reason"], i["data"]),
    "body_fast_connect_ok": lambda i: FastConnectOkMessage(i["heartbeat"]),
    "body_http_response": lambda i: HttpResponseMessage(
        i["status_code"],
        i["reason_phrase"],
        decode_headers(i["headers_string"]),
        _utf8(i["body_utf8"]),
    ),
    "body_kick": lambda i: KickUserMessage(i["device_id"], i["user_id"]),
}


# --- checkers, one per vector kind ------------------------------------------


def check_frame_encode(test, vector):
    vid, i, frame = vector["id"], vector["input"], bytes.fromhex(vector["expected"]["frame_hex"])
    packet = Packet(
        i["cmd"],
        i.get("session_id", 0),
        i.get("flags", 0),
        bytes.fromhex(i.get("body_hex", "")),
        i.get("cc", 0),
        i.get("lrc", 0),
    )
    test.assertEqual(encode_packet(packet).hex(), frame.hex(), f"{vid}: encoded frame")
    decoded = _decode_one(test, frame, vid)
    if packet.cmd == Command.HEARTBEAT:
        test.assertEqual(decoded, HEARTBEAT, f"{vid}: heartbeat decodes to HEARTBEAT")
    else:
        # The decoder yields Java's signed view of each field (lrc 171 -> -85).
        signed = Packet(
            _signed(packet.cmd, 8),
            _signed(packet.session_id, 32),
            _signed(packet.flags, 8),
            packet.body,
            _signed(packet.cc, 16),
            _signed(packet.lrc, 8),
        )
        test.assertEqual(decoded, signed, f"{vid}: decoded packet")
        test.assertEqual(encode_packet(decoded), frame, f"{vid}: re-encoded decoded packet")


def _signed(value, bits):
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _check_stream_packets(test, got, expected, vid):
    test.assertEqual(len(got), len(expected), f"{vid}: packet count ({got!r})")
    for n, (packet, want) in enumerate(zip(got, expected)):
        where = f"{vid}: packet #{n}"
        if want.get("heartbeat"):
            test.assertTrue(packet.is_heartbeat, where)
            test.assertEqual(packet, HEARTBEAT, where)
            continue
        _check_header(test, packet, want, where)
        test.assertEqual(packet.body.hex(), want["body_hex"], where + " body")


def check_frame_decode_stream(test, vector):
    vid = vector["id"]
    stream = bytes.fromhex(vector["input"]["stream_hex"])
    expected = vector["expected"]["packets"]
    remaining = bytes.fromhex(vector["expected"]["remaining_hex"])
    for limit in (10240, None):
        # Whole stream at once.
        decoder = PacketDecoder(limit)
        _check_stream_packets(test, decoder.feed(stream), expected, vid)
        test.assertEqual(decoder.buffered, len(remaining), f"{vid}: remaining tail length")
        # The held tail is exactly remaining_hex: complete it and parse it.
        need = HEADER_LENGTH + int.from_bytes(remaining[:4], "big", signed=True) - len(remaining)
        (tail_packet,) = decoder.feed(bytes(need))
        test.assertEqual(
            encode_packet(tail_packet)[: len(remaining)].hex(),
            remaining.hex(),
            f"{vid}: the buffered tail is remaining_hex",
        )
        # One byte at a time gives the same packets.
        decoder = PacketDecoder(limit)
        got = []
        for n in range(len(stream)):
            got.extend(decoder.feed(stream[n:n + 1]))
        _check_stream_packets(test, got, expected, vid + " (1-byte feeds)")
        test.assertEqual(decoder.buffered, len(remaining), f"{vid}: remaining after 1-byte feeds")


def check_field_codec(test, vector):
    vid = vector["id"]
    for n, case in enumerate(vector["expected"]["cases"]):
        where = f"{vid} case #{n}"
        if "encoded_hex" in case:
            encoded = FieldWriter().write_string(case["value"]).getvalue()
            test.assertEqual(encoded.hex(), case["encoded_hex"], where + ": encoding")
            reader = FieldReader(bytes.fromhex(case["encoded_hex"]))
            test.assertEqual(reader.read_string(), case["decodes_to"], where + ": decoding")
            test.assertEqual(reader.remaining, 0, where)
        else:
            test.assertEqual(case["data_rule"], "byte i = i % 251", where + ": unknown rule")
            data = bytes(i % 251 for i in range(case["length"]))
            encoded = FieldWriter().write_bytes(data).getvalue()
            header = bytes.fromhex(case["encoded_header_hex"])
            test.assertEqual(encoded[: len(header)].hex(), header.hex(), where + ": header")
            test.assertEqual(len(encoded), case["encoded_total_len"], where + ": total length")
            test.assertEqual(
                hashlib.sha256(encoded).hexdigest(), case["encoded_sha256"], where + ": sha256"
            )
            reader = FieldReader(encoded)
            test.assertEqual(reader.read_bytes(), data, where + ": decoding")
            test.assertEqual(reader.remaining, 0, where)


def check_message_body(test, vector):
    vid, i, e = vector["id"], vector["input"], vector["expected"]
    if vid == "body_ack":
        packet = make_raw_packet(Command.ACK, AckMessage(), i["session_id"])
        test.assertEqual(encode_packet(packet).hex(), e["frame_hex"], f"{vid}: ACK frame")
        decoded = _decode_one(test, bytes.fromhex(e["frame_hex"]), vid)
        test.assertEqual(decoded.body, b"", vid)
        test.assertEqual(AckMessage.decode(decoded.body), AckMessage(), vid)
        return
    build = _MESSAGE_BODY_INPUTS.get(vid)
    test.assertIsNotNone(build, f"{vid}: new message_body vector with no test mapping")
    message = build(i)
    body = bytes.fromhex(e["body_hex"])
    test.assertEqual(message.encode().hex(), body.hex(), f"{vid}: encoded body")
    test.assertEqual(type(message).decode(body), message, f"{vid}: decoded fields")
    if "headers_string" in e:
        test.assertEqual(encode_headers(message.headers), e["headers_string"], vid)


def check_aes(test, vector):
    vid, i = vector["id"], vector["input"]
    cipher = AesCipher(bytes.fromhex(i["key"]), bytes.fromhex(i["iv"]))
    for n, case in enumerate(vector["expected"]["cases"]):
        plain, secret = bytes.fromhex(case["plaintext_hex"]), bytes.fromhex(case["ciphertext_hex"])
        test.assertEqual(plain, bytes(range(len(plain))), f"{vid} #{n}: plaintext rule")
        test.assertEqual(cipher.encrypt(plain).hex(), secret.hex(), f"{vid} #{n}: encrypt")
        test.assertEqual(cipher.decrypt(secret), plain, f"{vid} #{n}: decrypt")
        test.assertEqual(len(secret), 16 * (len(plain) // 16 + 1), f"{vid} #{n}: length")


def check_session_key(test, vector):
    vid = vector["id"]
    for n, case in enumerate(vector["expected"]["cases"]):
        got = mix_key(bytes.fromhex(case["client_key"]), bytes.fromhex(case["server_key"]))
        test.assertEqual(got.hex(), case["session_key"], f"{vid} #{n}")


def check_rsa(test, vector):
    vid = vector["id"]
    private = _private_key()
    test.assertTrue(private.is_demo_key, vid)
    public = RsaPublicKey.from_x509_base64(DOCUMENT["keys"]["rsa_public_key_x509_b64"])
    for n, case in enumerate(vector["expected"]["cases"]):
        plain, secret = bytes.fromhex(case["plaintext_hex"]), bytes.fromhex(case["ciphertext_hex"])
        test.assertEqual(plain, bytes(255 - k for k in range(len(plain))), f"{vid} #{n}: rule")
        test.assertEqual(len(secret), case["ciphertext_len"], f"{vid} #{n}")
        test.assertEqual(len(secret) // 128, case["blocks"], f"{vid} #{n}")
        test.assertEqual(private.decrypt(secret), plain, f"{vid} #{n}: Java ciphertext")
        ours = public.encrypt(plain)
        test.assertEqual(len(ours), case["ciphertext_len"], f"{vid} #{n}: our chunking")
        test.assertEqual(private.decrypt(ours), plain, f"{vid} #{n}: our ciphertext")


def check_compression(test, vector):
    vid, i, e = vector["id"], vector["input"], vector["expected"]
    compressed = bytes.fromhex(e["compressed_hex"])
    test.assertEqual(len(compressed), e["compressed_len"], vid)
    test.assertEqual(compressed[:2], b"\x78\x9c", f"{vid}: zlib header")
    data = inflate(compressed)
    test.assertEqual(len(data), i["data_len"], vid)
    test.assertEqual(hashlib.sha256(data).hexdigest(), i["data_sha256"], vid)
    test.assertEqual(data, bytes(ord("a") + (k * 7) % 26 for k in range(i["data_len"])), vid)
    packet = Packet(Command.PUSH, 1, int(Flags.COMPRESS), compressed)
    test.assertEqual(decode_body(packet), data, f"{vid}: through decode_body")


def _check_rsa_handshake_step(test, step, frame, vid):
    packet = _decode_one(test, frame, vid)
    _check_header(test, packet, step["header"], vid)
    plain = decode_body(packet, _private_key())
    test.assertEqual(plain.hex(), step["plain_body_hex"], f"{vid}: RSA plaintext")
    message = HandshakeMessage.decode(plain)
    test.assertEqual(message, _handshake(step["fields"]), f"{vid}: handshake fields")
    test.assertEqual(message.encode(), plain, f"{vid}: re-encoded handshake")
    # Our own client-side encoding: same header, decrypts to the same body.
    public = RsaPublicKey.from_x509_base64(DOCUMENT["keys"]["rsa_public_key_x509_b64"])
    ours = make_packet(Command.HANDSHAKE, message, packet.session_id, public, 1024)
    ours_frame = encode_packet(ours)
    test.assertEqual(ours_frame[:HEADER_LENGTH], frame[:HEADER_LENGTH], f"{vid}: our header")
    test.assertEqual(decode_body(ours, _private_key()), plain, f"{vid}: our RSA body")


def _check_frame_step(test, step, vid):
    frame = bytes.fromhex(step["frame_hex"])
    header = step["header"]
    direction = step["dir"]
    cipher = _cipher(step.get("cipher"))
    packet = _decode_one(test, frame, vid)
    _check_header(test, packet, header, vid)
    if packet.has_flag(Flags.CRYPTO):
        test.assertIsNotNone(cipher, f"{vid}: encrypted frame without a cipher")
    extra_flags = packet.flags & ~_PIPELINE_FLAGS

    if packet.cmd == Command.ACK:
        test.assertEqual(encode_packet(make_raw_packet(Command.ACK, None, packet.session_id)), frame)
        return

    plain = decode_body(packet, cipher)
    if "plain_body_hex" in step:
        test.assertEqual(plain.hex(), step["plain_body_hex"], f"{vid}: plaintext body")

    if packet.has_flag(Flags.COMPRESS):
        # zlib output differs between builds: check the Java bytes and the
        # content, then re-encrypt the Java compressed bytes.
        compressed = cipher.decrypt(packet.body)
        test.assertEqual(compressed.hex(), step["compressed_hex"], f"{vid}: compressed body")
        test.assertEqual(step["content_rule"], "byte i = 'A' + i % 26, 3000 bytes", vid)
        test.assertEqual(plain, bytes(ord("A") + k % 26 for k in range(3000)), vid)
        test.assertEqual(hashlib.sha256(plain).hexdigest(), step["content_sha256"], vid)
        rebuilt = Packet(packet.cmd, packet.session_id, packet.flags, cipher.encrypt(compressed))
        test.assertEqual(encode_packet(rebuilt).hex(), frame.hex(), f"{vid}: re-encrypted frame")
        ours = make_packet(packet.cmd, PushMessage(plain), packet.session_id, cipher, 1024, extra_flags)
        test.assertEqual(ours.flags, packet.flags, f"{vid}: our flags")
        test.assertEqual(decode_body(ours, cipher), plain, f"{vid}: our compressed body")
        return

    if "fields" in step:
        to_server = direction.startswith("client")
        cls = _MESSAGE_CLASSES[(Command(packet.cmd), to_server)]
        message = _message_for(packet.cmd, direction, step["fields"])
        test.assertEqual(cls.decode(plain), message, f"{vid}: decoded fields")
    else:
        # No fields given (biz-ack push): the body is opaque push content.
        message = PushMessage(plain)

    if cipher is not None and packet.has_flag(Flags.CRYPTO):
        rebuilt = make_packet(packet.cmd, message, packet.session_id, cipher, flags=extra_flags)
    else:
        rebuilt = make_raw_packet(packet.cmd, message, packet.session_id, extra_flags)
    test.assertEqual(encode_packet(rebuilt).hex(), frame.hex(), f"{vid}: re-encoded frame")

    variant = step.get("encrypted_variant")
    if variant is not None:
        vcipher = _cipher(variant["cipher"])
        vframe = bytes.fromhex(variant["frame_hex"])
        vpacket = _decode_one(test, vframe, vid + " encrypted variant")
        _check_header(test, vpacket, variant["header"], vid + " encrypted variant")
        test.assertEqual(decode_body(vpacket, vcipher), plain, f"{vid}: encrypted variant body")
        vours = make_packet(packet.cmd, message, packet.session_id, vcipher)
        test.assertEqual(encode_packet(vours).hex(), vframe.hex(), f"{vid}: encrypted variant")

    ack = step.get("ack_frame_hex")
    if ack is not None:
        ack_packet = make_raw_packet(Command.ACK, AckMessage(), packet.session_id)
        test.assertEqual(encode_packet(ack_packet).hex(), ack, f"{vid}: ack frame")


def check_exchange(test, vector):
    vid, i = vector["id"], vector["input"]
    steps = vector["expected"]["steps"]
    test.assertTrue(steps, vid)
    for step in steps:
        where = f"{vid} step {step['step']} ({step['what']})"
        if "session_key" in step:
            got = mix_key(bytes.fromhex(i["client_key"]), bytes.fromhex(i["server_key"]))
            test.assertEqual(got.hex(), step["session_key"], where)
            test.assertEqual(step["iv"], i["iv"], where)
        elif "frame_hex_sample" in step:
            _check_rsa_handshake_step(test, step, bytes.fromhex(step["frame_hex_sample"]), where)
        elif step.get("frame_hex") == "df":
            test.assertEqual(encode_packet(HEARTBEAT), b"\xdf", where)
            test.assertEqual(_decode_one(test, b"\xdf", where), HEARTBEAT, where)
        else:
            test.assertIn("frame_hex", step, f"{where}: unknown step shape")
            _check_frame_step(test, step, where)
        after = step.get("session_cipher_after")
        if after is not None:
            test.assertEqual(after["key"], i["session_key"], where)
            test.assertEqual(after["iv"], i["iv"], where)


def check_capture(test, vector):
    vid, e = vector["id"], vector["expected"]
    frame = bytes.fromhex(e["frame_hex"])
    _check_rsa_handshake_step(test, e, frame, vid)
    test.assertEqual(
        HandshakeMessage.decode(bytes.fromhex(e["plain_body_hex"])).device_id,
        vector["input"]["device_id_used"],
        vid,
    )


CHECKERS = {
    "frame_encode": check_frame_encode,
    "frame_decode_stream": check_frame_decode_stream,
    "field_codec": check_field_codec,
    "message_body": check_message_body,
    "aes": check_aes,
    "session_key": check_session_key,
    "rsa": check_rsa,
    "compression": check_compression,
    "exchange": check_exchange,
    "capture": check_capture,
}


class JavaVectorTests(SynchronousTestCase):
    """test_vector_<id> methods are added below, one per vector in the file."""

    def test_vectors_file_loaded(self):
        if LOAD_ERROR is not None:
            self.fail(LOAD_ERROR)
        self.assertGreaterEqual(len(DOCUMENT["vectors"]), 26)

    def test_every_vector_has_a_test(self):
        if LOAD_ERROR is not None:
            self.fail(LOAD_ERROR)
        ids = [v["id"] for v in DOCUMENT["vectors"]]
        self.assertEqual(len(ids), len(set(ids)), "duplicate vector ids")
        for vid in ids:
            self.assertTrue(hasattr(self, _method_name(vid)), f"no test for vector {vid}")

    def test_keys_are_the_builtin_demo_pair(self):
        if LOAD_ERROR is not None:
            self.fail(LOAD_ERROR)
        keys = DOCUMENT["keys"]
        self.assertEqual(keys["rsa_public_key_x509_b64"], MPUSH_DEMO_PUBLIC_KEY)
        self.assertEqual(keys["rsa_private_key_pkcs8_b64"], MPUSH_DEMO_PRIVATE_KEY)
        self.assertEqual(int(keys["rsa_modulus_hex"], 16), MPUSH_DEMO_MODULUS)
        self.assertEqual(keys["rsa_public_exponent"], 65537)


def _method_name(vid):
    return "test_vector_" + "".join(c if c.isalnum() else "_" for c in vid)


def _make_test(vector):
    checker = CHECKERS.get(vector["kind"])

    def test(self):
        if checker is None:
            self.fail(f"vector {vector['id']}: no checker for kind {vector['kind']!r}")
        checker(self, vector)

    test.__doc__ = f"{vector['id']} ({vector['kind']}): {vector.get('description', '')[:120]}"
    return test


if DOCUMENT is not None:
    for _vector in DOCUMENT["vectors"]:
        setattr(JavaVectorTests, _method_name(_vector["id"]), _make_test(_vector))
