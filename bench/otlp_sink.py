#!/usr/bin/env python3
"""An OTLP/HTTP receiver that accepts every export at once and keeps nothing but counts: the
far end for measuring what exporting traces costs the orchestrator (bench/tracing.sh), without
a real receiver's own limits (Phoenix answers 503 under a bench's burst of spans).

    bench/otlp_sink.py PORT        # POST /v1/traces -> 200; GET / -> "<exports> <bytes>"
"""

import http.server
import socketserver
import sys

COUNTS = {"exports": 0, "bytes": 0}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        self.rfile.read(length)
        COUNTS["exports"] += 1
        COUNTS["bytes"] += length
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        body = f'{COUNTS["exports"]} {COUNTS["bytes"]}\n'.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
