"""Locate and load the Java client's byte vectors (shared/vectors/).

The vectors live outside the repository, next to it:
<repo>/../shared/vectors/mpush-java-vectors.json. MPUSH_VECTORS may point
elsewhere. A missing file is a test FAILURE, never a skip: without it the
byte-for-byte compatibility claim is unchecked.
"""

import json
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PATH = os.path.join(
    REPO_ROOT, "..", "shared", "vectors", "mpush-java-vectors.json"
)


class VectorsMissing(Exception):
    """The vectors file cannot be found or read."""


def vectors_path():
    return os.environ.get("MPUSH_VECTORS") or os.path.normpath(DEFAULT_PATH)


_cache = {}


def load_vectors():
    """Return the parsed JSON document; raise VectorsMissing with a clear message."""
    path = vectors_path()
    if path in _cache:
        return _cache[path]
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as exc:
        raise VectorsMissing(
            f"Java vectors file not found at {path} ({exc.strerror}). It is expected at "
            f"<repo>/../shared/vectors/mpush-java-vectors.json, or set MPUSH_VECTORS."
        ) from None
    except ValueError as exc:
        raise VectorsMissing(f"Java vectors file {path} is not valid JSON: {exc}") from None
    if document.get("schema") != "mpush-java-vectors/1":
        raise VectorsMissing(
            f"Java vectors file {path} has schema {document.get('schema')!r}, "
            f"expected 'mpush-java-vectors/1'"
        )
    _cache[path] = document
    return document


def try_load_vectors():
    """(document, None) or (None, error message) - for building tests at import time."""
    try:
        return load_vectors(), None
    except VectorsMissing as exc:
        return None, str(exc)


def demo_keys():
    """The `keys` object of the vectors file (MPush's published demo RSA pair)."""
    return load_vectors()["keys"]
