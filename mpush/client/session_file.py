"""
The client's persisted session: one small text file, like the Java client's
C{token.dat} (spec 9.2).

It holds the key of a live AES session, so it is written atomically (a crash
never leaves half a key behind for the next fast connect) and with mode 0600
(nobody else may read it).  Failing to read it is not an error: the client
simply handshakes again, as the Java client does.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["SessionFile", "SessionFileError", "write_private_text"]


class SessionFileError(OSError):
    """
    The session file could not be written or cleared; the message names the
    path and the reason.
    """


def write_private_text(path: str, text: str) -> None:
    """
    Replace C{path} with C{text} (UTF-8) atomically, readable by the owner
    only: write a temporary file in the same directory, fsync it, rename it
    over the target.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".mpush-", suffix=".tmp", dir=directory)
    try:
        # mkstemp already creates the file 0600; fchmod makes it explicit
        # whatever the platform default.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class SessionFile:
    """
    Read, write and clear the C{encode_client_session} string at one path.
    """

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)

    def read(self) -> str | None:
        """
        The stored text, or C{None} when there is no readable file.  Bytes
        that are not UTF-8 are replaced, so the decoder rejects them and the
        caller clears the file (a corrupt file must not survive).
        """
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except OSError:
            return None
        return data.decode("utf-8", errors="replace")

    def write(self, text: str) -> None:
        """
        Store C{text} atomically with mode 0600.
        @raise SessionFileError: the file could not be written.
        """
        try:
            write_private_text(self.path, text)
        except OSError as exc:
            raise SessionFileError(
                f"cannot write session file {self.path}: {exc.strerror or exc}"
            ) from exc

    def clear(self) -> None:
        """
        Forget the stored session (a missing file is already clear).
        @raise SessionFileError: the file exists but could not be removed.
        """
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SessionFileError(
                f"cannot clear session file {self.path}: {exc.strerror or exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"SessionFile({self.path!r})"
