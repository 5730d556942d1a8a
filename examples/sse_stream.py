"""Submit over REST, then follow the tokens as Server-Sent Events, resuming
with Last-Event-ID if the connection drops.

    python examples/sse_stream.py "Hi" [--url http://127.0.0.1:8000]

The server's address may be given as http(s):// or ws(s)://; keys come from
ORCHESTRATOR_API_KEY (servers with DEBUG off want one: manage.py create_api_key NAME).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import httpx

RECONNECTS = 5  # in a row, a second apart, before giving up


def http_url(url: str) -> str:
    """The server's base URL for HTTP, whichever scheme it was given with."""
    for ws, http in (("ws://", "http://"), ("wss://", "https://")):
        if url.startswith(ws):
            return http + url.removeprefix(ws)
    return url.rstrip("/")


def refused(response: httpx.Response) -> str:
    try:
        return f"HTTP {response.status_code}: {response.json()['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def stream(client: httpx.Client, request_id: str) -> None:
    last_id = None
    failures = 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with client.stream("GET", f"/api/v1/stream/{request_id}", headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                    sys.exit(f"\nstream refused: {refused(response)}")
                event = ""
                for line in response.iter_lines():
                    failures = 0
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("id: "):
                        last_id = line[4:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        if event == "token":
                            print(data["data"], end="", flush=True)
                        elif event == "complete":
                            print("\n[done]")
                            return
                        elif event == "error":
                            print(f"\n[error] {data['error']['message']}")
                            return
        except httpx.TransportError as error:
            failures += 1
            if failures > RECONNECTS:
                sys.exit(f"\nlost the stream: {error or type(error).__name__}")
        time.sleep(1 if failures else 0)  # then reconnect and resume after last_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prompt")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    url = http_url(args.url)
    key = os.environ.get("ORCHESTRATOR_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url, timeout=None, headers=headers) as client:
        try:
            submitted = client.post("/api/v1/infer", json={"prompt": args.prompt})
        except httpx.TransportError as error:
            sys.exit(f"cannot reach {url}: {error or type(error).__name__}")
        if submitted.status_code != 202:
            sys.exit(f"submit refused: {refused(submitted)}")
        stream(client, submitted.json()["request_id"])


if __name__ == "__main__":
    main()
