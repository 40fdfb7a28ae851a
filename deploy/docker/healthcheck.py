#!/usr/bin/env python3
"""The service image's HEALTHCHECK: exit 0 when ``GET /health`` on this container's port answers 200 (the model is
loaded and warmed up), else 1 with the reason. The standard library only, so the image needs no curl."""

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0  # below the Dockerfile's HEALTHCHECK --timeout


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('KORASR_PORT') or '8000'}/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            print(f"{url}: {response.status}")
            return 0
    except urllib.error.HTTPError as e:  # 503 while the model loads
        print(f"{url}: {e.code} {e.read(200).decode('utf-8', 'replace')}")
    except OSError as e:  # refused, timed out
        print(f"{url}: {e}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
