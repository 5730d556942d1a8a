"""Submit a prompt over REST and long-poll for its result.

python examples/rest_api.py "What is Rust?" [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import os

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prompt")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()

    # Servers with DEBUG off want a key: manage.py create_api_key NAME.
    key = os.environ.get("ORCHESTRATOR_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=args.url, timeout=60, headers=headers) as client:
        submitted = client.post("/api/v1/infer", json={"prompt": args.prompt})
        submitted.raise_for_status()
        request_id = submitted.json()["request_id"]
        print(f"submitted {request_id} ({submitted.status_code})")
        while True:  # 202 while running, 200 once finished
            result = client.get(f"/api/v1/result/{request_id}", params={"wait": 30})
            if result.status_code == 200:
                break
        body = result.json()
        print(
            f"{body['status']}: {body['result'] if body['result'] is not None else body['error']}"
        )


if __name__ == "__main__":
    main()
