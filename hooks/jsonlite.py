"""Minimal JSON encode/decode for the qemu hook's hot path.

The stdlib ``json`` package imports ``re`` and ``enum`` (about 7.5 ms on the lab machine, a
third of the hook's whole latency budget). OVSDB JSON-RPC messages and spool records only use
objects, arrays, strings, integers, floats, booleans and null, so a small exact codec suffices.
Long-running daemons keep using ``json``; tests check this codec against it.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeAlias  # novm: type checking only

    Json: "TypeAlias" = "None | bool | int | float | str | list[Json] | dict[str, Json]"

__all__ = ["dumps", "loads", "JsonLiteError", "MAX_DEPTH"]

MAX_DEPTH = 64
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_UNESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_WS = " \t\n\r"
_NUM_CHARS = frozenset("0123456789+-.eE")


class JsonLiteError(ValueError):
    """Input is not JSON this codec accepts (the message says where)."""


def _enc_str(s: str) -> str:
    out = []
    for c in s:
        esc = _ESCAPES.get(c)
        if esc is not None:
            out.append(esc)
        elif c < " " or "\x7f" <= c <= "\x9f" or "\u2028" <= c <= "\u2029":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def dumps(value: "Json") -> str:
    """Compact JSON text of ``value`` (dict keys must be strings)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _enc_str(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise JsonLiteError(f"cannot encode {value!r} as JSON")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise JsonLiteError(f"object keys must be strings, got {k!r}")
            parts.append(_enc_str(k) + ":" + dumps(v))
        return "{" + ",".join(parts) + "}"
    raise JsonLiteError(f"cannot encode {type(value).__name__} as JSON")


def loads(text: str) -> "Json":
    """Parse one JSON document; trailing non-space text is an error."""
    # A trailing space lets a bare top-level number end unambiguously.
    value, end = decode_prefix(text + " ", 0)
    end = _skip_ws(text, end)
    if end != len(text):
        raise JsonLiteError(f"extra data at offset {end}")
    return value


def decode_prefix(text: str, pos: int) -> "tuple[Json, int]":
    """Parse one JSON value starting at ``pos``; returns it and the offset after it.

    Raises ``JsonLiteError`` for malformed input, and ``IncompleteJson`` when the text ends in
    the middle of a value (a stream reader then waits for more bytes).
    """
    return _Parser(text).value(_skip_ws(text, pos), 0)


class IncompleteJson(JsonLiteError):
    """The text ended before the value did."""


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in _WS:
        pos += 1
    return pos


class _Parser:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def _at(self, pos: int) -> str:
        if pos >= len(self.text):
            raise IncompleteJson(f"unexpected end of JSON at offset {pos}")
        return self.text[pos]

    def value(self, pos: int, depth: int) -> "tuple[Json, int]":
        if depth > MAX_DEPTH:
            raise JsonLiteError(f"JSON nested deeper than {MAX_DEPTH} at offset {pos}")
        c = self._at(pos)
        if c == "{":
            return self._object(pos + 1, depth + 1)
        if c == "[":
            return self._array(pos + 1, depth + 1)
        if c == '"':
            return self._string(pos + 1)
        for word, val in (("true", True), ("false", False), ("null", None)):
            if c == word[0]:
                chunk = self.text[pos:pos + len(word)]
                if chunk == word:
                    return val, pos + len(word)
                if word.startswith(chunk) and pos + len(chunk) == len(self.text):
                    raise IncompleteJson(f"unexpected end of JSON at offset {len(self.text)}")
                raise JsonLiteError(f"invalid literal at offset {pos}")
        return self._number(pos)

    def _object(self, pos: int, depth: int) -> "tuple[Json, int]":
        out: "dict[str, Json]" = {}
        pos = _skip_ws(self.text, pos)
        if self._at(pos) == "}":
            return out, pos + 1
        while True:
            if self._at(pos) != '"':
                raise JsonLiteError(f"expected a string key at offset {pos}")
            key, pos = self._string(pos + 1)
            pos = _skip_ws(self.text, pos)
            if self._at(pos) != ":":
                raise JsonLiteError(f"expected ':' at offset {pos}")
            val, pos = self.value(_skip_ws(self.text, pos + 1), depth)
            out[key] = val
            pos = _skip_ws(self.text, pos)
            c = self._at(pos)
            if c == "}":
                return out, pos + 1
            if c != ",":
                raise JsonLiteError(f"expected ',' or '}}' at offset {pos}")
            pos = _skip_ws(self.text, pos + 1)

    def _array(self, pos: int, depth: int) -> "tuple[Json, int]":
        out: "list[Json]" = []
        pos = _skip_ws(self.text, pos)
        if self._at(pos) == "]":
            return out, pos + 1
        while True:
            val, pos = self.value(_skip_ws(self.text, pos), depth)
            out.append(val)
            pos = _skip_ws(self.text, pos)
            c = self._at(pos)
            if c == "]":
                return out, pos + 1
            if c != ",":
                raise JsonLiteError(f"expected ',' or ']' at offset {pos}")
            pos += 1

    def _string(self, pos: int) -> "tuple[str, int]":
        text = self.text
        out = []
        start = pos
        while True:
            end = pos
            while end < len(text) and text[end] not in '"\\' and text[end] >= " ":
                end += 1
            out.append(text[pos:end])
            c = self._at(end)
            if c == '"':
                return "".join(out), end + 1
            if c != "\\":
                raise JsonLiteError(f"control character in string at offset {end}")
            esc = self._at(end + 1)
            if esc == "u":
                code, pos = self._hex4(end + 2)
                if 0xD800 <= code < 0xDC00 and text[pos:pos + 2] == "\\u":
                    low, after = self._hex4(pos + 2)
                    if 0xDC00 <= low < 0xE000:
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                        pos = after
                out.append(chr(code))
            elif esc in _UNESCAPES:
                out.append(_UNESCAPES[esc])
                pos = end + 2
            else:
                raise JsonLiteError(f"invalid escape in string starting at offset {start}")

    def _hex4(self, pos: int) -> "tuple[int, int]":
        digits = self.text[pos:pos + 4]
        if len(digits) < 4:
            raise IncompleteJson(f"unexpected end of JSON at offset {len(self.text)}")
        try:
            return int(digits, 16), pos + 4
        except ValueError:
            raise JsonLiteError(f"invalid \\u escape at offset {pos}") from None

    def _number(self, pos: int) -> "tuple[Json, int]":
        end = pos
        while end < len(self.text) and self.text[end] in _NUM_CHARS:
            end += 1
        token = self.text[pos:end]
        if not token or token[0] == "+":
            raise JsonLiteError(f"unexpected character {self.text[pos]!r} at offset {pos}")
        if end == len(self.text):
            raise IncompleteJson(f"number may continue past offset {end}")
        try:
            if any(c in token for c in ".eE"):
                return float(token), end
            if token.lstrip("-").startswith("0") and token.lstrip("-") != "0":
                raise ValueError(token)
            return int(token), end
        except ValueError:
            raise JsonLiteError(f"invalid number {token!r} at offset {pos}") from None
