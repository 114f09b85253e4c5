#!/usr/bin/env python3
"""Receives the unread webhook by hand: prints each event and whether its
signature is right, and answers 200 (docs/integration.md).

  deploy/webhook-receiver.py PORT SECRET

The check is the one a site should make: X-Chat-Signature is
"t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<raw body>' with SECRET>",
compared in constant time, and t within 5 minutes of now. Standard library
only.
"""

import hashlib
import hmac
import http.server
import json
import sys
import time


def verified(secret: bytes, header: str, body: bytes) -> bool:
    try:
        parts = dict(part.split("=", 1) for part in header.split(","))
        t, v1 = parts["t"], parts["v1"]
    except (KeyError, ValueError):
        return False
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, v1) and abs(time.time() - int(t)) < 300


def main() -> None:
    port, secret = int(sys.argv[1]), sys.argv[2].encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            ok = verified(secret, self.headers.get("X-Chat-Signature", ""), body)
            event = json.loads(body or b"{}")
            print(f"{self.headers.get('X-Chat-Event-Id')} signature {'ok' if ok else 'WRONG'}:")
            print(json.dumps(event, ensure_ascii=False, indent=2), flush=True)
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    print(f"[webhook-receiver] listening on 127.0.0.1:{port}", flush=True)
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
