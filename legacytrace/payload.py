"""What a peeked payload says: the fields an event gets from the first bytes of user data.

Backends read the first N bytes of the buffer a process hands to the kernel (manifest
`peek`) in their own encoding (bpftrace's buf() escapes, hex from stap's C, ftrace's u8
arrays), decode them to bytes and call `fields()`. An HTTP/1.x request line becomes
`request` ("GET /index.html HTTP/1.1"); anything else is kept as `peek`, escaped text,
so that a binary payload never reaches a terminal raw.
"""
import re

#: RFC 9112 section 3: method SP request-target SP HTTP-version; a method is a token.
_REQUEST_LINE_RE = re.compile(
    br"^([!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}) ([!-~]{1,4096}) (HTTP/1\.[01])(?:\r\n|\r|\n|\Z)")
#: The start of a request line cut short by the peek size (no version yet).
_PARTIAL_RE = re.compile(br"^([A-Z]{3,10}) (/[!-~]*|\*|[a-z]+://[!-~]*)\Z")


def request_line(data):
    """The HTTP/1.x request line at the start of `data` (bytes), or None.

    A request line cut by the peek size keeps what was read, with "..." appended.
    """
    match = _REQUEST_LINE_RE.match(data)
    if match:
        return b" ".join(match.groups()).decode("ascii", "replace")
    match = _PARTIAL_RE.match(data.split(b"\r", 1)[0].split(b"\n", 1)[0])
    if match and b"\n" not in data and b"\r" not in data:
        return data.decode("ascii", "replace") + "..."
    return None


def escape(data):
    """Printable ASCII kept, every other byte as \\xNN (backslash itself as \\\\)."""
    out = []
    for byte in bytearray(data):
        if byte == 0x5c:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7f:
            out.append(chr(byte))
        else:
            out.append("\\x{:02x}".format(byte))
    return "".join(out)


def fields(data):
    """Event fields for peeked bytes: {"request": ...} for HTTP/1.x, else {"peek": escaped}."""
    line = request_line(data)
    if line is not None:
        return {"request": line}
    return {"peek": escape(data)}
