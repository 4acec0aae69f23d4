"""
Start-up warnings about configurations that load but are unsafe or do
nothing (the gateway's are in test_gateway_allow).
"""

import dataclasses

from twisted.trial.unittest import SynchronousTestCase

from mpush.config import HttpConfig, TlsConfig, load_config
from mpush.config_warnings import MIN_TOKEN_LENGTH, config_warnings


def with_http(**changes):
    return load_config(None).replace(http=HttpConfig(**changes))


class TokenLengthTests(SynchronousTestCase):
    def test_short_token_warned(self):
        [warning] = config_warnings(with_http(api_token="s3cret"), "127.0.0.1")
        self.assertIn("[http] api-token is 6 characters", warning)
        self.assertIn(str(MIN_TOKEN_LENGTH), warning)

    def test_long_enough_or_no_token_is_quiet(self):
        self.assertEqual(config_warnings(with_http(api_token="x" * MIN_TOKEN_LENGTH), "127.0.0.1"), [])
        self.assertEqual(config_warnings(with_http(api_token=""), "127.0.0.1"), [])

    def test_no_http_port_no_warning(self):
        config = with_http(api_token="short")
        config = config.replace(net=dataclasses.replace(config.net, http_server_port=0))
        self.assertEqual(config_warnings(config, "127.0.0.1"), [])


def with_tls(**changes):
    return load_config(None).replace(tls=TlsConfig(**changes))


class TlsTests(SynchronousTestCase):
    def test_certificate_no_port_uses(self):
        [warning] = config_warnings(with_tls(cert_file="/etc/c.pem", key_file="/etc/k.pem"), "127.0.0.1")
        self.assertIn("no port uses them", warning)

    def test_tls_on_a_disabled_port(self):
        config = with_tls(cert_file="c", key_file="k", connect_server=True, ws_server=True)
        self.assertEqual(config_warnings(config, "127.0.0.1"),
                         ["[tls] ws-server = true but its port is disabled ([net] ws-server-port = 0)"])

    def test_tls_in_use_is_quiet(self):
        config = with_tls(cert_file="c", key_file="k", connect_server=True)
        self.assertEqual(config_warnings(config, "127.0.0.1"), [])
