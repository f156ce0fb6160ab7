"""A CRI caller built on Python's grpcio, for the interposer's caller tests: one unary call with
raw request bytes (no generated types), the result printed as one JSON line.

grpcio's default :authority for a `unix:` target is the percent-encoded socket path; with
--authority localhost it sends `localhost`, as `grpc.default_authority` sets it.

With --session it keeps one channel (one connection) and makes the calls it reads from
standard input, one JSON line each ({"id", "method", "request" hex, "timeout_ms"}), each at
once and concurrently, answering each with a JSON line ({"id", "code", "message", "response",
"ms"}) as it ends.
"""
import argparse
import json
import sys
import threading
import time

import grpc


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--authority", choices=["default", "localhost"], default="default")
    p.add_argument("--method", default="")
    p.add_argument("--request", default="", help="request message, hex")
    p.add_argument("--timeout-ms", type=int, default=30000)
    p.add_argument("--cancel-after-ms", type=int, default=0)
    p.add_argument("--traceparent", default="")
    p.add_argument("--session", action="store_true")
    a = p.parse_args()
    options = [
        ("grpc.max_receive_message_length", 16 << 20),
        ("grpc.max_send_message_length", 16 << 20),
    ]
    if a.authority == "localhost":
        options.append(("grpc.default_authority", "localhost"))
    if a.session:
        return session(a.socket, options)
    out = {"code": 0, "message": "", "response": ""}
    with grpc.insecure_channel("unix:" + a.socket, options=options) as channel:
        call = channel.unary_unary(a.method)  # no serializers: bytes in, bytes out
        metadata = [("traceparent", a.traceparent)] if a.traceparent else None
        try:
            future = call.future(
                bytes.fromhex(a.request), timeout=a.timeout_ms / 1000, metadata=metadata
            )
            if a.cancel_after_ms:
                time.sleep(a.cancel_after_ms / 1000)
                future.cancel()
            out["response"] = future.result().hex()
        except grpc.FutureCancelledError:
            out["code"], out["message"] = 1, "canceled by the caller"
        except grpc.RpcError as e:
            out["code"], out["message"] = e.code().value[0], e.details() or ""
    print(json.dumps(out))


def session(socket, options):
    lock = threading.Lock()

    def one(channel, c):
        start = time.monotonic()
        out = {"id": c["id"], "code": 0, "message": "", "response": ""}
        try:
            call = channel.unary_unary(c["method"])
            out["response"] = call(
                bytes.fromhex(c.get("request", "")),
                timeout=c.get("timeout_ms", 60000) / 1000,
            ).hex()
        except grpc.RpcError as e:
            out["code"], out["message"] = e.code().value[0], e.details() or ""
        out["ms"] = (time.monotonic() - start) * 1000
        with lock:
            print(json.dumps(out), flush=True)

    with grpc.insecure_channel("unix:" + socket, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        threads = []
        for line in sys.stdin:
            try:
                c = json.loads(line)
            except ValueError:
                continue
            t = threading.Thread(target=one, args=(channel, c))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()


if __name__ == "__main__":
    main()
