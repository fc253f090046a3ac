"""legacytrace.payload: request lines and escaping of peeked bytes."""
from hypothesis import given, settings, strategies as st

from legacytrace import payload


def test_full_request_line():
    data = b"GET /index.html HTTP/1.1\r\nHost: 10.0.2.15\r\nUser-Agent: curl/7.88.1\r\n"
    assert payload.fields(data) == {"request": "GET /index.html HTTP/1.1"}


def test_python_http_client_request_line():
    # http.client sends "POST /x HTTP/1.1\r\nHost: ...": same rule, another method
    assert payload.request_line(b"POST /api/v1?q=1 HTTP/1.0\r\nHost: x\r\n") == "POST /api/v1?q=1 HTTP/1.0"


def test_request_line_cut_by_peek_size():
    assert payload.request_line(b"GET /a/very/long/path/that/goes/on") == "GET /a/very/long/path/that/goes/on..."


def test_not_http_is_escaped():
    assert payload.fields(b"\x16\x03\x01\x02\x00\\ok") == {"peek": "\\x16\\x03\\x01\\x02\\x00\\\\ok"}


def test_response_is_not_a_request():
    assert payload.request_line(b"HTTP/1.1 200 OK\r\n") is None


@settings(deadline=None)     # no timing in tests: a loaded CI host must not fail it
@given(st.binary(max_size=128))
def test_any_bytes_give_one_printable_field(data):
    out = payload.fields(data)
    assert len(out) == 1
    value = next(iter(out.values()))
    assert all(0x20 <= ord(c) < 0x7f for c in value)


def test_non_ascii_target_is_not_a_request_line():
    assert payload.fields(b"GET /\xff HTTP/1.1\r\n") == {"peek": "GET /\\xff HTTP/1.1\\x0d\\x0a"}
