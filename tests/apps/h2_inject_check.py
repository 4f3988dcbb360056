#!/usr/bin/env python3
"""Byte-level check of what reaches an HTTP/2 server when the agent injects
traceparent: an h2 (hyper-h2) client sends requests over plain TCP, in sends
cut in chosen ways, to a raw TCP server in this same process that records
every byte. Then:

- every frame that arrived is the frame the client sent, byte for byte,
  except request HEADERS frames that may carry one more field at the end of
  their header block (their length grown by exactly that field);
- that field is a literal without indexing, new name `traceparent`, no
  Huffman, with a well-formed W3C value;
- a strict HPACK decoder (hpack) reading every received header block in
  order gets the client's fields, plus traceparent where it was added.

Prints, per connection, `connection NAME` and one line per request stream:
`stream N injected VALUE` or `stream N unchanged`; then `ok`. Any mismatch raises (exit code 1).
Starts once a line arrives on stdin. No tracing code."""
import re
import socket
import sys
import threading

import h2.config
import h2.connection
import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FIELD_PREFIX = b"\x00\x0btraceparent\x37"
VALUE = re.compile(rb"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
HEADERS, CONTINUATION = 1, 9


def frames(data):
    """(header bytes, type, flags, stream id, payload) of each frame."""
    assert data.startswith(PREFACE), data[:24]
    at, out = len(PREFACE), []
    while at < len(data):
        header = data[at : at + 9]
        length = int.from_bytes(header[:3], "big")
        payload = data[at + 9 : at + 9 + length]
        assert len(payload) == length, "a frame was cut short"
        out.append((header, header[3], header[4], int.from_bytes(header[5:9], "big") & 0x7FFFFFFF, payload))
        at += 9 + length
    return out


def record(listener, connections, closed):
    """Records every byte of `len(connections)` connections in turn,
    setting the matching event as each one closes."""
    for into, done in zip(connections, closed):
        conn, _ = listener.accept()
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                into.append(chunk)
        done.set()


def fields(i, extra=()):
    """A request's header list. They share fields, so the encoder's
    dynamic table is in use (indexed fields on later requests)."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", "/sonde.test.Echo/Unary"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "h2-inject-check/1"),
        ("x-request", str(i)),
        ("x-shared", "same-value-every-time"),
        *extra,
    ]


def first_connection(conn, send):
    """Requests in sends cut in chosen ways; returns {stream: fields}."""
    lists = {}
    conn.initiate_connection()
    # 1: preface, SETTINGS and the first request in one send.
    lists[1] = fields(1)
    conn.send_headers(1, lists[1])
    conn.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    send(conn.data_to_send())
    # 3, 5: two requests in one send.
    for stream in (3, 5):
        lists[stream] = fields(stream)
        conn.send_headers(stream, lists[stream], end_stream=True)
    send(conn.data_to_send())
    # 7, 9: a large DATA frame cut over two sends, 9 after the cut.
    lists[7], lists[9] = fields(7), fields(9)
    conn.send_headers(7, lists[7])
    conn.send_data(7, b"x" * 12000, end_stream=True)
    conn.send_headers(9, lists[9], end_stream=True)
    data = conn.data_to_send()
    cut = len(data) - 3000
    send(data[:cut])
    send(data[cut:])
    # 11: a request with trailers (the trailers' HEADERS are not a request).
    lists[11] = fields(11)
    conn.send_headers(11, lists[11])
    conn.send_data(11, b"body")
    conn.send_headers(11, [("x-trailer", "t")], end_stream=True)
    send(conn.data_to_send())
    # 13: a request whose frame header is cut after 2 bytes, then 5: left
    # alone, and as its block went by unread, so is every later request.
    lists[13] = fields(13)
    conn.send_headers(13, lists[13], end_stream=True)
    data = conn.data_to_send()
    send(data[:2])
    send(data[2:7])
    send(data[7:])
    # 15: a header block too big for one frame: HEADERS + CONTINUATION.
    lists[15] = fields(15, [(f"x-big-{i}", "v" * 200) for i in range(100)])
    conn.send_headers(15, lists[15], end_stream=True)
    send(conn.data_to_send())
    # 17: a plain request, after those.
    lists[17] = fields(17)
    conn.send_headers(17, lists[17], end_stream=True)
    send(conn.data_to_send())
    return lists


def own_context_connection(conn, send):
    """The application propagates on its own: its first traceparent is a
    literal, the next one indexed from the dynamic table; neither request,
    nor one without it after them, gets a second one."""
    lists = {}
    conn.initiate_connection()
    for stream, value in ((1, "01"), (3, "02"), (5, None)):
        extra = [("traceparent", f"00-0af7651916cd43dd8448eb211c80319c-00000000000000{value}-01")] if value else []
        lists[stream] = fields(stream, extra)
        conn.send_headers(stream, lists[stream], end_stream=True)
        send(conn.data_to_send())
    return lists


def check(sent, received, lists, out):
    """Compares what arrived with what was sent; appends one line per
    request stream to `out`."""
    sent_frames = frames(sent)
    got_frames = frames(received)
    assert len(sent_frames) == len(got_frames), (len(sent_frames), len(got_frames))
    decoder = hpack.Decoder()
    seen, block, block_stream = set(), b"", None
    for (s_header, s_type, s_flags, s_stream, s_payload), (g_header, g_type, g_flags, g_stream, g_payload) in zip(
        sent_frames, got_frames
    ):
        assert (s_type, s_flags, s_stream) == (g_type, g_flags, g_stream), (s_header, g_header)
        value = None
        if g_payload != s_payload:
            assert s_type == HEADERS, f"a type {s_type} frame changed"
            assert g_payload[: len(s_payload)] == s_payload, "HEADERS changed before its end"
            field = g_payload[len(s_payload) :]
            assert field.startswith(FIELD_PREFIX) and len(field) == len(FIELD_PREFIX) + 55, field
            value = field[len(FIELD_PREFIX) :]
            assert VALUE.match(value), value
        if s_type not in (HEADERS, CONTINUATION):
            continue
        block += g_payload
        if s_type == HEADERS:
            block_stream = s_stream
        if not g_flags & 0x4:
            continue
        decoded = decoder.decode(block)
        block = b""
        if block_stream in seen:
            assert decoded == [("x-trailer", "t")], decoded
            assert value is None, "trailers got a traceparent"
            continue
        seen.add(block_stream)
        expected = list(lists[block_stream])
        if value is not None:
            expected.append(("traceparent", value.decode()))
        assert decoded == expected, (block_stream, decoded)
        out.append(f"stream {block_stream} " + (f"injected {value.decode()}" if value else "unchanged"))


def main():
    # Waits for the test's go: the agent must select this process first.
    sys.stdin.readline()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)
    received = [[], []]
    closed = [threading.Event(), threading.Event()]
    server = threading.Thread(target=record, args=(listener, received, closed))
    server.start()
    out = []
    for plan, into, done in zip((first_connection, own_context_connection), received, closed):
        client = socket.create_connection(listener.getsockname())
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        sent = []

        def send(data):
            sent.append(data)
            client.sendall(data)

        lists = plan(conn, send)
        client.close()
        assert done.wait(30), "the server never saw the connection close"
        out.append(f"connection {plan.__name__}")
        check(b"".join(sent), b"".join(into), lists, out)
    server.join(timeout=30)
    listener.close()
    print("\n".join(out))
    print("ok", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"mismatch: {error!r}", file=sys.stderr)
        sys.exit(1)
