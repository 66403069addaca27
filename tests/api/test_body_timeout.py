"""A client that declares a body and never sends it gets 408 and loses its connection, instead of holding it;
uploads get an idle limit between chunks rather than a total one. Raw sockets against a real uvicorn server."""

from __future__ import annotations

import json
import select
import socket
import time

from tests.api.local_api import local_api, new_key

TIMEOUT = 1.0


def _request(port: int, key: str, request_line: str, headers: list[str], body: bytes) -> socket.socket:
    """Send the request line, Host and Authorization, `headers` and `body` (which may be less than declared)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "\r\n".join([request_line, "Host: test", f"Authorization: Bearer {key}", *headers])
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _problem(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_a_body_that_never_arrives_gets_408_and_the_connection_closes(backend: dict[str, str]) -> None:
    with local_api(body_timeout_seconds=TIMEOUT) as api:
        _, _, key = new_key()
        sock = _request(api.port, key, "POST /v1/jobs HTTP/1.1",
                        ["Content-Type: application/json", "Content-Length: 500"], b'{"kind": "test", ')
        with sock:
            raw = _read_all(sock)  # returns only because the server closed the connection
        status, headers, body = _problem(raw)
        assert status == 408 and headers["content-type"] == "application/problem+json"
        assert body["code"] == "request_timeout" and body["detail"].startswith("body:")
        assert "TUNEQ_BODY_TIMEOUT_SECONDS" in body["detail"]


def test_a_whole_body_in_time_is_served_as_usual(backend: dict[str, str]) -> None:
    with local_api(body_timeout_seconds=TIMEOUT) as api:
        _, _, key = new_key()
        body = b'{"kind": "test", "spec": {"steps": 1}}'
        sock = _request(api.port, key, "POST /v1/jobs HTTP/1.1", [
            "Connection: close", "Content-Type: application/json", f"Content-Length: {len(body)}"], body)
        with sock:
            raw = _read_all(sock)
        assert raw.startswith(b"HTTP/1.1 201")


def test_an_upload_may_be_slow_but_not_idle(backend: dict[str, str]) -> None:
    with local_api(body_timeout_seconds=TIMEOUT) as api:
        _, _, key = new_key()
        sock = _request(api.port, key, "POST /v1/files?name=slow.jsonl HTTP/1.1",
                        ["Content-Type: application/octet-stream", "Content-Length: 100000"], b"")
        with sock:
            started = time.monotonic()
            while time.monotonic() - started < 3 * TIMEOUT:  # longer than the limit in all, never idle that long
                sock.sendall(b'{"messages": []}\n')
                readable, _, _ = select.select([sock], [], [], TIMEOUT / 3)
                assert not readable, "the server answered a slow but live upload"
            raw = _read_all(sock)  # now idle: the server gives up after one more limit
        status, _, body = _problem(raw)
        assert status == 408 and "no part of the upload" in body["detail"]
