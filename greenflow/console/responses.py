"""What the console answers: ``(status, headers, body)`` triples for JSON, HTML,
redirects, errors, static files and server-sent events, and reading what a request sent
(headers, cookies, forms)."""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterator, Optional, Union
from urllib.parse import parse_qs, quote, unquote, urlsplit

from greenflow.rpc.limit_settings import LimitExceeded, parse_json_body
from greenflow.rpc.log_limits import clip


Body = Union[bytes, Iterator[bytes]]
Response = tuple[int, dict, Body]

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    """A request the console refuses, answered with ``status`` and the message."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


def json_answer(status: int, doc: Any) -> Response:
    return status, {"Content-Type": "application/json", "Cache-Control": "no-store",
                    "X-Content-Type-Options": "nosniff"}, \
        (json.dumps(doc, default=str) + "\n").encode("utf-8")


def html_answer(text: str, status: int = 200) -> Response:
    return status, {"Content-Type": "text/html; charset=utf-8", **SECURITY_HEADERS}, text.encode("utf-8")


#: What a redirect may carry unencoded: a path, a query and a fragment's punctuation.
_URL_SAFE = "/?&=%:@!$'()*+,;~#"
START_PAGE = "/console/flows"


def console_location(target: str, default: str = START_PAGE) -> str:
    """``target`` fit for a ``Location`` header if it is a path of this console, else
    ``default``. A login's ``next`` comes from the client: a control character in it
    would split the answer's headers, non-ASCII would break their encoding, and a scheme,
    a host, ``//``, a backslash or a dot segment could leave the console (or the site)."""
    if not target or any(c < " " or c in "\\\x7f" for c in target):
        return default
    target = quote(target, safe=_URL_SAFE)
    url = urlsplit(target)
    path = url.path
    if url.scheme or url.netloc or "//" in path \
            or not (path == "/console" or path.startswith("/console/")) \
            or any(unquote(seg) in (".", "..") for seg in path.split("/")):
        return default
    return target


def redirect(location: str) -> Response:
    return 303, {"Location": location, "Content-Type": "text/plain; charset=utf-8"}, b""


def sse_event(kind: str, doc: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(doc)}\n\n".encode("utf-8")


def header(headers: Any, name: str) -> str:
    try:
        v = headers.get(name)
    except AttributeError:
        v = None
    return v or ""


def cookie(headers: Any, name: str) -> Optional[str]:
    raw = header(headers, "Cookie")
    for part in raw.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name and v:
            return v
    return None


def form_fields(body: bytes, max_depth: int) -> dict:
    """The fields of a form (URL-encoded, or a JSON object), or `Refused` (400) naming
    what is wrong with the body: anyone may post the login form, so a malformed body is
    the client's error, never the node's, and JSON is parsed no deeper than the RPC's
    ``max_json_depth``."""
    if not body:
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "BadRequest", "the body is not UTF-8") from None
    if text.lstrip().startswith("{"):
        try:
            doc = parse_json_body(body, max_depth)  # starts with "{": an object if JSON
        except LimitExceeded as exc:
            raise Refused(exc.status, exc.type, exc.message) from None
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in doc.items()}
    return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}


def error_answer(path: str, status: int, type_: str, message: str) -> Response:
    hdrs: dict = {}
    if status == 401:
        hdrs["WWW-Authenticate"] = 'Basic realm="greenflow"' if path == "/metrics" else \
            'Form realm="greenflow", action="/console/login"'
    if path == "/metrics":
        return status, {"Content-Type": "text/plain; charset=utf-8", **hdrs}, \
            f"{type_}: {message}\n".encode("utf-8")
    st, h, b = json_answer(status, {"error": {"type": type_, "message": message}})
    h.update(hdrs)
    return st, h, b


@functools.lru_cache(maxsize=1)
def _static_names() -> frozenset:
    """The files that ship with the package: the only names served, so a client's name
    (a null byte, a device, a link) never reaches the file system."""
    return frozenset(n for n in os.listdir(STATIC_DIR)
                     if os.path.splitext(n)[1] in STATIC_TYPES and not n.startswith("."))


def static_file(name: str) -> Response:
    if name not in _static_names():
        raise Refused(404, "NotFound", f"no static file {clip(name)}")
    try:
        with open(os.path.join(STATIC_DIR, name), "rb") as fh:
            content = fh.read()
    except OSError:
        raise Refused(404, "NotFound", f"no static file {clip(name)}") from None
    return 200, {"Content-Type": STATIC_TYPES[os.path.splitext(name)[1]],
                 "Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}, content
