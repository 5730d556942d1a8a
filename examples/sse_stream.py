"""Submit over REST, then follow the tokens as Server-Sent Events, resuming
with Last-Event-ID if the connection drops.

    python examples/sse_stream.py "Hi" [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import json
import os

import httpx


def stream(client: httpx.Client, request_id: str) -> None:
    last_id = None
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with client.stream("GET", f"/api/v1/stream/{request_id}", headers=headers) as response:
                event = ""
                for line in response.iter_lines():
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
        except httpx.TransportError:
            continue  # reconnect and resume after last_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prompt")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    # Servers with DEBUG off want a key: manage.py create_api_key NAME.
    key = os.environ.get("ORCHESTRATOR_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=args.url, timeout=None, headers=headers) as client:
        submitted = client.post("/api/v1/infer", json={"prompt": args.prompt})
        submitted.raise_for_status()
        stream(client, submitted.json()["request_id"])


if __name__ == "__main__":
    main()
