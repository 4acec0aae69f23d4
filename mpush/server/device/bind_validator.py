"""
Who may bind a user: MPush's C{BindValidator} hook, chosen in C{[bind]}.

The default accepts everyone, as MPush does.  "hmac" is a ready token check:
the back-end gives each device C{hex(HMAC-SHA256(secret, userId))} to send as
the bind's data.  Anything else is an operator's own validator, named as
C{package.module:name}.
"""

import hashlib
import hmac
import importlib
from typing import Any

from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from mpush.config import ConfigError


class IBindValidator(Interface):
    """
    Decides whether a device may bind a user.
    """

    def validate(user_id, data, context):
        """
        @param user_id: the user the device asks for.
        @param data: the bind's data field (MPush: "data"; the Java client's
            "alias"), C{None} when the client sends none.
        @param context: the connection's L{mpush.server.device.context.SessionContext}.
        @return: C{bool}, or a Deferred firing one.
        """


@implementer(IBindValidator)
class AcceptAll:
    """
    MPush's default: every bind is accepted.
    """

    def validate(self, user_id: str, data: str | None, context: Any) -> bool:
        return True


@implementer(IBindValidator)
class HmacTokenValidator:
    """
    Accept a bind whose data is the lowercase hex HMAC-SHA256 of the user id.
    """

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode("utf-8")

    def token_for(self, user_id: str) -> str:
        return hmac.new(self._secret, user_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def validate(self, user_id: str, data: str | None, context: Any) -> bool:
        if not data or not isinstance(data, str):
            return False
        # As bytes: compare_digest raises TypeError on a non-ASCII str, and
        # any device can send one.
        return hmac.compare_digest(self.token_for(user_id).encode("ascii"), data.encode("utf-8"))


def load_bind_validator(config: Any) -> Any:
    """
    The validator C{config.bind} names.

    @raise ConfigError: the named validator cannot be imported or does not
        provide L{IBindValidator}.
    """
    spec = config.bind.validator
    if not spec:
        return AcceptAll()
    if spec == "hmac":
        return HmacTokenValidator(config.bind.hmac_secret)
    module_name, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"cannot load {spec!r}: {error}", key="[bind] validator") from None
    validator = factory(config) if callable(factory) else factory
    try:
        verifyObject(IBindValidator, validator)
    except Exception as error:
        raise ConfigError(
            f"{spec!r} does not give an IBindValidator: {error}", key="[bind] validator"
        ) from None
    return validator
