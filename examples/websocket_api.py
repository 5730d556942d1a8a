"""Chat over the WebSocket: tokens print as they stream.

    python examples/websocket_api.py "Hello!" [--url ws://127.0.0.1:8000]

A non-browser client must send an Origin header naming one of ALLOWED_HOSTS
(browsers always send one; the server refuses handshakes without it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from urllib.parse import urlsplit

import websockets


async def chat(url: str, prompt: str) -> None:
    origin = "http://" + urlsplit(url).netloc
    # Servers with DEBUG off want a key (manage.py create_api_key NAME), on the handshake.
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
    asyncio.run(chat(args.url, args.prompt))


if __name__ == "__main__":
    main()
