"""Submit a prompt over REST and long-poll for its result.

    python examples/rest_api.py "What is Rust?" [--url http://127.0.0.1:8000]

The server's address may be given as http(s):// or ws(s)://; keys come from
ORCHESTRATOR_API_KEY (servers with DEBUG off want one: manage.py create_api_key NAME).
"""

from __future__ import annotations

import argparse
import os
import sys

import httpx


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prompt")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    url = http_url(args.url)

    key = os.environ.get("ORCHESTRATOR_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    # The long-poll waits up to 30 s on the server: the client allows more.
    with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
        try:
            submitted = client.post("/api/v1/infer", json={"prompt": args.prompt})
            if submitted.status_code != 202:
                sys.exit(f"submit refused: {refused(submitted)}")
            request_id = submitted.json()["request_id"]
            print(f"submitted {request_id} ({submitted.status_code})")
            while True:  # 202 while running, 200 once finished
                result = client.get(f"/api/v1/result/{request_id}", params={"wait": 30})
                if result.status_code == 200:
                    break
                if result.status_code != 202:
                    sys.exit(f"result refused: {refused(result)}")
        except httpx.TransportError as error:
            sys.exit(f"cannot reach {url}: {error or type(error).__name__}")
        body = result.json()
        print(
            f"{body['status']}: {body['result'] if body['result'] is not None else body['error']}"
        )


if __name__ == "__main__":
    main()
