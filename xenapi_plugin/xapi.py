"""Opening an xapi session with the PyPI ``xenapi`` package, locally or remotely.

``unix:/path`` talks HTTP over a Unix socket as ``XenAPI.xapi_local()`` does (dom0's is
``unix:/var/lib/xcp/xapi``); ``http(s)://host`` is a remote pool master. XenAPI's UDS transport
encodes the socket path as the URL host with '/' written as '_', so such paths must not contain
'_' themselves.
"""

from typing import Any

import XenAPI

LOCAL_XAPI = "unix:/var/lib/xcp/xapi"
ORIGINATOR = "veil"


class XapiUriError(ValueError):
    """The --xapi value is neither unix:/path nor an http(s) URL."""


def make_session(uri: str) -> "Any":
    """A not-yet-logged-in ``XenAPI.Session`` for ``uri``."""
    if uri.startswith("unix:"):
        path = uri[len("unix:"):]
        if not path.startswith("/") or "_" in path:
            raise XapiUriError(f"{uri}: need an absolute socket path without '_' (XenAPI maps '_' to '/')")
        return XenAPI.Session("http://" + path.replace("/", "_") + "/", transport=XenAPI.UDSTransport())
    if uri.startswith(("http://", "https://")):
        return XenAPI.Session(uri)
    raise XapiUriError(f"{uri}: expected unix:/path/to/socket or http(s)://host")


def login(uri: str, user: str = "root", password: str = "") -> "Any":
    """A logged-in session (dom0's local socket accepts root with any password)."""
    session = make_session(uri)
    session.login_with_password(user, password, "1.0", ORIGINATOR)
    return session


def is_failure(exc: "BaseException", code: str) -> bool:
    """Whether ``exc`` is an xapi failure with error code ``code`` (e.g. UUID_INVALID)."""
    details: "Any" = getattr(exc, "details", None)
    return isinstance(exc, XenAPI.Failure) and isinstance(details, list) and bool(details) and details[0] == code
