"""Chat over the WebSocket: tokens print as they stream.

    python examples/websocket_api.py "Hello!" [--url ws://127.0.0.1:8000]

The server's address may be given as ws(s):// or http(s)://; keys come from
ORCHESTRATOR_API_KEY (servers with DEBUG off want one: manage.py create_api_key NAME),
sent on the handshake. A non-browser client must send an Origin header naming one
of ALLOWED_HOSTS (browsers always send one; the server refuses handshakes without it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from urllib.parse import urlsplit

import websockets


def ws_url(url: str) -> str:
    """The server's base URL for the WebSocket, whichever scheme it was given with."""
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(http):
            return ws + url.removeprefix(http)
    return url.rstrip("/")


async def chat(url: str, prompt: str) -> None:
    parts = urlsplit(url)
    origin = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"
    key = os.environ.get("ORCHESTRATOR_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    connect = websockets.connect(f"{url}/api/v1/ws", origin=origin, additional_headers=headers)
    async with connect as socket:
        await socket.send(json.dumps({"prompt": prompt, "stream": True}))
        async for raw in socket:
            message = json.loads(raw)
            if message["type"] == "ack":
                print(f"[request {message['request_id']}]")
            elif message["type"] == "token":
                print(message["data"], end="", flush=True)
            elif message["type"] == "result":
                print(f"\n[{message['status']}]")
                return
            elif message["type"] == "error":
                print(f"\n[error] {message['error']['message']}")
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prompt")
    parser.add_argument("--url", default="ws://127.0.0.1:8000")
    args = parser.parse_args()
    url = ws_url(args.url)
    try:
        asyncio.run(chat(url, args.prompt))
    except websockets.ConnectionClosedError as closed:
        # 4401: no or bad key; 4403: not allowed; 4429: over a limit; 1012: restarting.
        reason = f" {closed.rcvd.reason}" if closed.rcvd and closed.rcvd.reason else ""
        code = closed.rcvd.code if closed.rcvd else "without a close frame"
        sys.exit(f"\nthe server closed the socket: {code}{reason}")
    except websockets.InvalidStatus as error:
        sys.exit(f"handshake refused: HTTP {error.response.status_code}")
    except (OSError, websockets.InvalidURI, websockets.InvalidHandshake) as error:
        sys.exit(f"cannot reach {url}: {error or type(error).__name__}")


if __name__ == "__main__":
    main()
