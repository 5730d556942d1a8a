"""The container's HEALTHCHECK: GET a URL on this host, exit 0 on 200.

    python -m orchestrator_site.healthcheck [URL]   # default: the web liveness probe

The slim image has no curl; this needs nothing but the standard library (and
imports no Django, so it costs a probe ~30 ms, not the app's start-up).
"""

from __future__ import annotations

import http.client
import sys
from urllib.parse import urlsplit

WEB_LIVENESS = "http://127.0.0.1:8000/health/live"


def healthy(url: str) -> bool:
    """GET ``url`` (plain HTTP: a probe of this container) answers 200."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=3)
    try:
        connection.request("GET", parts.path or "/", headers={"Host": "localhost"})
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


if __name__ == "__main__":
    sys.exit(0 if healthy(sys.argv[1] if len(sys.argv) > 1 else WEB_LIVENESS) else 1)
