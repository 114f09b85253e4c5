#!/usr/bin/env python3
"""A webhook receiver and a feeder of unread events, beside a benchmark run
(deploy/bench-compare.sh's WEBHOOK=off|slow|silent), so that the unread
webhook works while the message path is measured.

  deploy/webhook-bench.py MODE PORT URL KEY

- MODE slow: a receiver on 127.0.0.1:PORT answers every request 200 after
  1 s; silent: it accepts connections and never answers (the notifier's
  timeout ends each attempt); off: no receiver.
- In every mode the feeder (the same load whatever the mode) opens
  PAIRS direct conversations through the server API at URL with KEY, between
  a "site" user and a user who never connects, and posts a message in each
  every PERIOD seconds, so each pair has an unread event due again and
  again (with notify.delay_ms shorter than PERIOD).

Runs until killed. Standard library only.
"""

import http.server
import json
import random
import socket
import sys
import threading
import time
import urllib.request

PAIRS = 100
PERIOD = 5.0


def receiver(mode: str, port: int) -> None:
    if mode == "slow":
        class Slow(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(1.0)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 1024  # the notifier opens many at once

        server = Server(("127.0.0.1", port), Slow)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    elif mode == "silent":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1024)
        held = []

        def accept():
            while True:
                conn, _ = listener.accept()
                held.append(conn)  # never read, never answered

        threading.Thread(target=accept, daemon=True).start()


def call(url: str, key: str, method: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{url}{path}", data=json.dumps(body).encode(), method=method,
        headers={"Authorization": f"ApiKey {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read() or b"{}")


def feeder(url: str, key: str) -> None:
    base = 900_000_000 + random.randrange(1_000_000) * 1000
    pairs = []
    for i in range(PAIRS):
        site, away = base + 2 * i, base + 2 * i + 1
        conversation = call(url, key, "POST", "/api/server/conversations", {"member_ids": [site, away]})
        pairs.append((site, conversation["id"]))
    n = 0
    while True:
        started = time.monotonic()
        for site, conversation in pairs:
            n += 1
            try:
                call(url, key, "POST", f"/api/server/conversations/{conversation}/messages",
                     {"client_msg_id": f"feed-{base}-{n}", "sender_id": site, "body": "còn căn này không?"})
            except OSError as e:
                print(f"[webhook-bench] post failed: {e}", file=sys.stderr)
        time.sleep(max(0.0, PERIOD - (time.monotonic() - started)))


def main() -> None:
    mode, port, url, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    receiver(mode, port)
    feeder(url, key)


if __name__ == "__main__":
    main()
