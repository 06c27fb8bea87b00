"""Opening an xapi session with the PyPI ``xenapi`` package, locally or remotely.

``unix:/path`` talks HTTP over a Unix socket as ``XenAPI.xapi_local()`` does (dom0's is
``unix:/var/lib/xcp/xapi``); ``http(s)://host`` is a remote pool master. XenAPI's UDS transport
encodes the socket path as the URL host with '/' written as '_', so such paths must not contain
'_' themselves.
"""

import logging
from typing import Any

import XenAPI

LOG = logging.getLogger("veil.xapi")

LOCAL_XAPI = "unix:/var/lib/xcp/xapi"
ORIGINATOR = "veil"


class XapiUriError(ValueError):
    """The --xapi value is neither unix:/path nor an http(s) URL."""


class SessionRenewed(Exception):
    """xapi answered SESSION_INVALID and the session has just logged in again: whatever call
    was under way is abandoned instead of retried, so a follower of event.from takes its new
    full snapshot now rather than after a whole long poll with the new session."""


class _RenewalReportingSession(XenAPI.Session):  # type: ignore[misc]  # XenAPI is untyped
    """XenAPI.Session whose transparent re-login (its ``_login``, called by ``xenapi_request``
    on SESSION_INVALID; the same in dom0's XenAPI.py) ends the call with SessionRenewed."""

    def _login(self, method: str, params: "Any") -> None:
        renewing = self._session is not None
        super()._login(method, params)
        if renewing:
            raise SessionRenewed("xapi invalidated the session; logged in again")


def make_session(uri: str, report_renewal: bool = False) -> "Any":
    """A not-yet-logged-in ``XenAPI.Session`` for ``uri``; with ``report_renewal`` a call
    during which it had to log in again raises SessionRenewed instead of being retried."""
    cls = _RenewalReportingSession if report_renewal else XenAPI.Session
    if uri.startswith("unix:"):
        path = uri[len("unix:"):]
        if not path.startswith("/") or "_" in path:
            raise XapiUriError(f"{uri}: need an absolute socket path without '_' (XenAPI maps '_' to '/')")
        return cls("http://" + path.replace("/", "_") + "/", transport=XenAPI.UDSTransport())
    if uri.startswith(("http://", "https://")):
        return cls(uri)
    raise XapiUriError(f"{uri}: expected unix:/path/to/socket or http(s)://host")


MAX_MASTER_HOPS = 3  # a pool that names members as its master would otherwise loop


def master_uri(uri: str, address: str) -> str:
    """The master's URL, same scheme as ``uri``, from HOST_IS_SLAVE's master address."""
    scheme = uri.partition("://")[0]
    ipv6 = address.count(":") > 1 and not address.startswith("[")
    host = "[" + address + "]" if ipv6 else address
    return "{}://{}".format(scheme, host)


def login(uri: str, user: str = "root", password: str = "", report_renewal: bool = False) -> "Any":
    """A logged-in session (dom0's local socket accepts root with any password). A pool
    member that is not the master refuses an https login with HOST_IS_SLAVE [master address]:
    the login follows it (the local Unix socket forwards to the master by itself)."""
    for _hop in range(MAX_MASTER_HOPS + 1):
        session = make_session(uri, report_renewal)
        try:
            session.login_with_password(user, password, "1.0", ORIGINATOR)
            return session
        except XenAPI.Failure as exc:
            details = getattr(exc, "details", None)
            if not (is_failure(exc, "HOST_IS_SLAVE") and isinstance(details, list) and len(details) > 1
                    and uri.startswith(("http://", "https://"))):
                raise
            new = master_uri(uri, str(details[1]))
            LOG.info("xapi at %s: HOST_IS_SLAVE, the pool master is %s: logging in there", uri, new)
            uri = new
    raise XapiUriError("{}: HOST_IS_SLAVE more than {} times: the pool names no master".format(uri, MAX_MASTER_HOPS))


def is_failure(exc: "BaseException", code: str) -> bool:
    """Whether ``exc`` is an xapi failure with error code ``code`` (e.g. UUID_INVALID)."""
    details: "Any" = getattr(exc, "details", None)
    return isinstance(exc, XenAPI.Failure) and isinstance(details, list) and bool(details) and details[0] == code
