"""Hostile clients against a real ``manage.py serve`` (uvicorn) process with keys
required, over real sockets: what an independent probe found, pinned. Nothing a
client without a key sends may cost the server more than a bounded read; bad data
is a 400 at the edge on every transport; a revoked key reaches open connections.
(runserver's daphne guards: tests/test_embedded_server.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from harness.processes import ROOT, create_api_key, embedded_env, serving
from tests.conftest import start_of_a_fresh_window

LIMITS = {
    "ORCHESTRATOR_AUTH_REQUIRED": "true",
    "ORCHESTRATOR_MAX_BODY_BYTES": "65536",
    "ORCHESTRATOR_MAX_HEADER_BYTES": "8192",
    "ORCHESTRATOR_HEADER_READ_SECONDS": "1",
    "ORCHESTRATOR_BODY_READ_SECONDS": "1",
    "ORCHESTRATOR_CREDENTIAL_RECHECK_SECONDS": "0.5",
    "ORCHESTRATOR_UNAUTHENTICATED_PER_MINUTE": "0",
    "ORCHESTRATOR_REQUESTS_PER_MINUTE": "0",
    "ORCHESTRATOR_MAX_IN_FLIGHT": "0",
    "ORCHESTRATOR_ECHO_TOKEN_DELAY": "0.05",
}


class Server:
    def __init__(self, url: str, env: dict[str, str], log: Path) -> None:
        self.url, self.env, self.log = url, env, log
        self.port = int(url.rsplit(":", 1)[1])
        self.origin = url

    def key(self, *args: str) -> str:
        return create_api_key(self.env, *args)

    def manage(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            check=True,
            capture_output=True,
        )

    def raw(self, data: bytes, *, read_timeout: float = 5) -> bytes:
        """Send ``data`` on a fresh connection; everything the server answers."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=read_timeout) as conn:
            conn.sendall(data)
            return read_all(conn)


def read_all(conn: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := conn.recv(65536):
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def start(tmp_path_factory: pytest.TempPathFactory, *command: str) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("hostile")
    env = embedded_env(data_dir, **LIMITS)
    with serving(env, data_dir / "server.log", *command) as url:
        yield Server(url, env, data_dir / "server.log")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``manage.py serve`` (uvicorn), as in production."""
    yield from start(tmp_path_factory)


@pytest.fixture(scope="module", params=["serve", "runserver"])
def any_server(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    """Both servers: the read limits hold under ``runserver`` (daphne) too."""
    command = ("runserver", "--noreload") if request.param == "runserver" else ()
    yield from start(tmp_path_factory, *command)


def post(server: Server, key: str, body: bytes, **headers: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers}
    return httpx.post(f"{server.url}/api/v1/infer", content=body, headers=headers)


# --- before any check: size and time -------------------------------------------------------


def test_an_oversized_body_is_refused_before_a_byte_of_it_is_read(any_server: Server) -> None:
    head = (
        b"POST /api/v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 419430400\r\n\r\n"
    )
    started = time.monotonic()
    answer = any_server.raw(head)  # the 400 MiB never follow
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"request_too_large"' in answer
    assert time.monotonic() - started < 1  # not the body-read deadline: at once


def test_a_chunked_body_stops_being_read_at_the_cap(any_server: Server) -> None:
    chunk = b"x" * 16384
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8))  # 128 KiB
    head = (
        b"POST /api/v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert any_server.raw(head + body).startswith(b"HTTP/1.1 413")


def test_a_valid_body_sent_chunked_is_read_whole(any_server: Server) -> None:
    key = any_server.key()

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": '
        yield b'"sent in pieces"}'

    response = httpx.post(
        f"{any_server.url}/api/v1/infer",
        content=chunks(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    rid = response.json()["request_id"]
    done = httpx.get(f"{any_server.url}/api/v1/result/{rid}?wait=10", headers=bearer(key)).json()
    assert done["result"] == "sent in pieces"


def test_oversized_headers_are_refused(any_server: Server) -> None:
    head = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Junk: " + b"a" * 20000 + b"\r\n\r\n"
    started = time.monotonic()
    answer = any_server.raw(head)
    # uvicorn: ours, 431. daphne: Twisted's header cap (set to ours) answers 400,
    # and a single line over its 16 KiB line limit drops the connection at once.
    refused = answer.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400"))
    assert refused or (answer == b"" and time.monotonic() - started < 0.5), answer[:100]


@pytest.mark.parametrize(
    "partial",
    [
        b"",  # connects and says nothing
        b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow",  # headers stall
        b"POST /api/v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{",
    ],
    ids=["silent", "stalled-headers", "stalled-body"],
)
def test_a_stalled_request_is_cut_off_by_the_read_deadline(
    any_server: Server, partial: bytes
) -> None:
    started = time.monotonic()
    answer = any_server.raw(partial, read_timeout=10)
    assert time.monotonic() - started < 5, "the connection was held open"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


# --- bad data: a 400 at the edge, never a 500 or a 503 -------------------------------------

BAD_METADATA = [
    (b'{"prompt": "hi", "metadata": {"x": "\\ud800"}}', "metadata", "unstorable"),
    (b'{"prompt": "hi", "metadata": {"\\ud800": 1}}', "metadata", "unstorable"),
    (b'{"prompt": "hi", "metadata": {"x": 1e400}}', "metadata", "not_finite"),
    (b'{"prompt": "hi", "metadata": {"x": "nul\\u0000"}}', "metadata", "unstorable"),
    (b'{"prompt": "hi", "metadata": ' + b'{"a": ' * 900 + b"1" + b"}" * 901, "metadata", None),
    (b'{"prompt": "lone \\udc00"}', "prompt", "unstorable"),
    (b'{"prompt": "hi", "stop": ["\\u0000"]}', "stop", "unstorable"),
    (b'{"prompt": "hi", "rag": {"documents": [99999999999999999999999]}}', "rag", "invalid"),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD_METADATA)
def test_data_that_cannot_be_stored_is_a_400_naming_the_field(
    server: Server, body: bytes, param: str, code: str | None
) -> None:
    response = post(server, server.key(), body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] and error["param"].startswith(param)
    if code:
        assert error["code"] == code


def test_nan_literals_are_not_json(server: Server) -> None:
    response = post(server, server.key(), b'{"prompt": "hi", "metadata": {"x": NaN}}')
    assert response.status_code == 400


def test_a_long_idempotency_key_is_a_400_not_an_outage(server: Server) -> None:
    response = post(server, server.key(), b'{"prompt": "hi"}', **{"Idempotency-Key": "k" * 256})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Idempotency-Key"
    assert "Retry-After" not in response.headers


def test_a_forged_cursor_is_a_400(server: Server) -> None:
    key = server.key()
    import base64

    for raw in (b"p=not-a-time", b"o=1&p=2024-13-45T99:00:00"):
        cursor = base64.b64encode(raw).decode()
        response = httpx.get(f"{server.url}/api/v1/requests/?cursor={cursor}", headers=bearer(key))
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "cursor"


def test_api_answers_are_not_cached(server: Server) -> None:
    key = server.key()
    for path in ("/api/v1/requests/", "/api/v1/status/00000000-0000-0000-0000-000000000000"):
        response = httpx.get(server.url + path, headers=bearer(key))
        assert response.headers["Cache-Control"] == "no-store"


def test_bad_data_over_the_websocket_is_an_error_message_not_a_dropped_socket(
    server: Server,
) -> None:
    async def scenario() -> list[dict]:
        async with connect(server, server.key()) as ws:
            replies = []
            for raw in (
                '{"prompt": "hi", "metadata": ' + '{"a": ' * 900 + "1" + "}" * 901,
                '{"prompt": "hi", "metadata": {"x": NaN}}',
                '{"prompt": "hi", "metadata": {"x": "\\ud800"}}',
            ):
                await ws.send(raw)
                replies.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"prompt": "still here", "stream": False}))
            replies.append(json.loads(await ws.recv()))
            return replies

    *errors, ack = asyncio.run(scenario())
    assert [e["type"] for e in errors] == ["error"] * 3
    assert all(e["error"]["param"] == "metadata" for e in errors)
    assert ack["type"] == "ack"


# --- who may connect -----------------------------------------------------------------------


def test_the_sse_route_checks_the_host_header(server: Server) -> None:
    key = server.key()
    response = httpx.get(
        f"{server.url}/api/v1/stream/00000000-0000-0000-0000-000000000000",
        headers={**bearer(key), "Host": "evil.example"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "disallowed_host"


@pytest.mark.parametrize(
    "origin", ["https://127.0.0.1:{port}", "http://127.0.0.1:1", "http://127.0.0.1"]
)
def test_a_websocket_origin_must_match_scheme_host_and_port(server: Server, origin: str) -> None:
    async def scenario() -> None:
        url = f"ws://127.0.0.1:{server.port}/api/v1/ws"
        async with websockets.connect(url, origin=origin.format(port=server.port)):
            pass

    with pytest.raises(websockets.InvalidStatus):
        asyncio.run(scenario())


# --- revocation reaches open connections ---------------------------------------------------


def connect(server: Server, key: str):  # type: ignore[no-untyped-def]
    return websockets.connect(
        f"ws://127.0.0.1:{server.port}/api/v1/ws",
        origin=server.origin,
        additional_headers={"Authorization": f"Bearer {key}"},
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def revoke(server: Server, key: str) -> None:
    server.manage("revoke_api_key", key.partition(".")[0])


def test_a_revoked_key_closes_an_idle_socket_with_4401(server: Server) -> None:
    key = server.key()

    async def scenario() -> int:
        async with connect(server, key) as ws:
            await asyncio.to_thread(revoke, server, key)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), timeout=5)
            return closed.value.rcvd.code

    assert asyncio.run(scenario()) == 4401


def test_a_deleted_key_refuses_the_next_submit_with_4401(server: Server) -> None:
    key = server.key()
    prefix = key.partition(".")[0]
    delete = (
        f"from inference.models import ApiKey; ApiKey.objects.filter(prefix='{prefix}').delete()"
    )

    async def scenario() -> int:
        async with connect(server, key) as ws:
            await asyncio.to_thread(server.manage, "shell", "-v", "0", "-c", delete)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                # The submit is refused, unless the idle re-check closed it first.
                await ws.send(json.dumps({"prompt": "after deletion"}))
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), timeout=5))
                    assert message.get("error", {}).get("code") != "service_unavailable"
            return closed.value.rcvd.code

    assert asyncio.run(scenario()) == 4401


def test_a_revoked_key_ends_an_open_sse_stream_with_an_error_event(server: Server) -> None:
    key = server.key()
    submitted = post(server, key, json.dumps({"prompt": "word " * 200}).encode()).json()
    url = f"{server.url}/api/v1/stream/{submitted['request_id']}?token={submitted['stream_token']}"
    with httpx.stream("GET", url, timeout=10) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        revoke(server, key)
        rest = list(lines)
    events = [line for line in rest if line.startswith("event:")]
    assert events[-1] == "event: error"
    assert "api_key_revoked" in rest[rest.index("event: error") + 1]
    assert "event: complete" not in events


def test_a_socket_ends_at_its_lifetime_with_4408(tmp_path: Path) -> None:
    env = embedded_env(tmp_path, **LIMITS, ORCHESTRATOR_CONNECTION_MAX_SECONDS="1")
    with serving(env, tmp_path / "server.log") as url:
        server = Server(url, env, tmp_path / "server.log")
        key = server.key()

        async def scenario() -> int:
            async with connect(server, key) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), timeout=5)
                return closed.value.rcvd.code

        assert asyncio.run(scenario()) == 4408


# --- floods --------------------------------------------------------------------------------


def test_resumes_count_against_the_per_minute_limit(tmp_path: Path) -> None:
    env = embedded_env(tmp_path, **{**LIMITS, "ORCHESTRATOR_REQUESTS_PER_MINUTE": "5"})
    with serving(env, tmp_path / "server.log") as url:
        start_of_a_fresh_window()
        server = Server(url, env, tmp_path / "server.log")
        key = server.key()
        rid = post(server, key, b'{"prompt": "x"}').json()["request_id"]

        async def scenario() -> list[str]:
            async with connect(server, key) as ws:  # the connect is call 2 of 5
                codes = []
                for _ in range(6):
                    await ws.send(json.dumps({"type": "resume", "request_id": rid}))
                    reply = json.loads(await ws.recv())
                    codes.append(reply.get("error", {}).get("code", reply["type"]))
                    while reply["type"] not in ("result", "error"):
                        reply = json.loads(await ws.recv())
                return codes

        codes = asyncio.run(scenario())
    assert codes[:3] != ["rate_limit_exceeded"] * 3
    assert codes[-1] == "rate_limit_exceeded"


def test_calls_without_a_key_are_limited_per_address(tmp_path: Path) -> None:
    env = embedded_env(tmp_path, **{**LIMITS, "ORCHESTRATOR_UNAUTHENTICATED_PER_MINUTE": "5"})
    with serving(env, tmp_path / "server.log") as url:
        start_of_a_fresh_window()
        statuses = [httpx.get(f"{url}/api/v1/requests/").status_code for _ in range(8)]
        bad_key = {"Authorization": "Bearer abcdefgh.wrongwrongwrongwrongwrongwrongwr"}
        refused = httpx.get(f"{url}/api/v1/requests/", headers=bad_key)
    assert statuses == [401] * 5 + [429] * 3
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1


def test_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path: Path) -> None:
    """A trusted proxy appends the real client on the right: addresses a client
    put on the left are forgeries, and the limit counts the real one."""
    env = embedded_env(
        tmp_path,
        **{
            **LIMITS,
            "ORCHESTRATOR_AUTH_REQUIRED": "false",
            "ORCHESTRATOR_REQUESTS_PER_MINUTE": "10",
        },
        ORCHESTRATOR_TRUSTED_PROXIES="127.0.0.1",
    )
    log = tmp_path / "server.log"
    with serving(env, log, "--proxy-headers") as url:
        start_of_a_fresh_window()
        statuses = [
            httpx.get(
                f"{url}/api/v1/requests/",
                headers={"X-Forwarded-For": f"10.0.0.{n}, 198.51.100.7"},
            ).status_code
            for n in range(30)
        ]
        rid = httpx.post(
            f"{url}/api/v1/infer",
            json={"prompt": "who am I"},
            headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.8"},
        ).json()["request_id"]
        env_code = (
            "from inference.models import InferenceRequest as R; "
            f"print(R.objects.get(pk='{rid}').client_ip)"
        )
        stored = subprocess.run(
            [sys.executable, "manage.py", "shell", "-v", "0", "-c", env_code],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    assert statuses.count(200) == 10
    assert stored == "198.51.100.8"


def test_a_client_leaving_mid_stream_is_not_an_error_in_the_log(any_server: Server) -> None:
    key = any_server.key()
    submitted = post(any_server, key, json.dumps({"prompt": "word " * 100}).encode()).json()
    url = f"{any_server.url}/api/v1/stream/{submitted['request_id']}"
    for _ in range(3):
        with httpx.stream("GET", url, headers=bearer(key), timeout=10) as stream:
            for line in stream.iter_lines():
                if line.startswith("event: token"):
                    break  # and hang up

    async def socket_leaves() -> None:
        for _ in range(3):
            ws = await connect(any_server, key)
            await ws.send(json.dumps({"type": "resume", "request_id": submitted["request_id"]}))
            await ws.recv()
            ws.transport.abort()  # gone mid-stream, without a close frame

    asyncio.run(socket_leaves())
    time.sleep(0.5)
    log = any_server.log.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
