#!/usr/bin/env python3
"""Lambda function init time, measured locally: from process start to the function's first
poll of the Lambda Runtime API (GET /2018-06-01/runtime/invocation/next), which is when Lambda
considers init done. Each binary is started against a stand-in Runtime API on loopback with the
environment Lambda gives it (plus the project's own variables), N times; prints the median, min
and max per binary, and its size.

    bench/lambda_init.py target/release/planner target/release/streamer ... [--runs 20]

Nothing is invoked: the binaries only read their configuration and build their clients (no
network call is made at init with the variables below), so no emulator is needed.
"""

import argparse
import http.server
import os
import socketserver
import statistics
import subprocess
import sys
import threading
import time

ENV = {
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "AWS_LAMBDA_LOG_FORMAT": "JSON",
    "AWS_LAMBDA_LOG_LEVEL": "INFO",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "TABLE_NAME": "orchestrator-bench",
    "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:bench-runs",
    "SPECIALIST_FUNCTIONS": "strategy=strategy,generation=generation,qa=qa,finalize=finalize",
    # The template's default provider: its client is built at init, like on AWS.
    "MODEL_PROVIDER": "bedrock",
    "MODEL_ID": "us.amazon.nova-lite-v1:0",
}


class Poll(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        if self.path.startswith("/2018-06-01/runtime/invocation/next"):
            self.server.first_poll.set()
        # Hold the poll open; the process is killed once the time is taken.
        time.sleep(5)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def once(binary):
    server = Server(("127.0.0.1", 0), Poll)
    server.first_poll = threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ)
    env.update(ENV)
    env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{server.server_address[1]}"
    env["AWS_LAMBDA_FUNCTION_NAME"] = os.path.basename(binary)
    env.pop("AWS_ENDPOINT_URL", None)
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    polled = server.first_poll.wait(timeout=10)
    elapsed = (time.perf_counter() - start) * 1000
    proc.kill()
    _, err = proc.communicate()
    server.shutdown()
    if not polled:
        sys.exit(f"{binary} never polled the runtime API; its stderr:\n{err.decode(errors='replace')[-2000:]}")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binaries", nargs="+")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(f"{'function':<12} {'init median':>12} {'min':>8} {'max':>8} {'size':>10}")
    for binary in args.binaries:
        if not os.access(binary, os.X_OK):
            sys.exit(f"{binary}: not an executable (build it first, e.g. cargo build --release)")
        once(binary)  # warm the page cache: Lambda's first start reads the image from its cache too
        times = [once(binary) for _ in range(args.runs)]
        size = os.path.getsize(binary) / 1e6
        print(
            f"{os.path.basename(binary):<12} {statistics.median(times):>9.1f} ms"
            f" {min(times):>5.1f} ms {max(times):>5.1f} ms {size:>7.1f} MB"
        )


if __name__ == "__main__":
    main()
