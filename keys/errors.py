"""Exceptions of the ``keys`` package."""

from __future__ import annotations


class KeysError(Exception):
    """Base of the key and token errors."""


class NoSigningKey(KeysError):
    """No signing key is configured, or a configured key cannot be loaded."""


class InvalidToken(KeysError):
    """A token that is refused: bad signature, unknown ``kid``, expired, wrong audience...

    The message is safe to show a client; it never contains the token.

    Attributes:
        lasting: ``True`` when the same token can only fail again (a bad signature, an
            expiry); ``False`` when it may pass later ("not yet valid").
    """

    def __init__(self, message: str, *, lasting: bool = True) -> None:
        super().__init__(message)
        self.lasting = lasting
