"""An OTLP/HTTP trace receiver on 127.0.0.1 that keeps the spans it is sent: what the
service exports when OTEL_EXPORTER_OTLP_ENDPOINT names it (tests, and the bench)."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class Sink:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint  # the value for OTEL_EXPORTER_OTLP_ENDPOINT
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    def receive(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        spans = [
            span
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]
        with self._lock:
            self.spans.extend(spans)


@contextmanager
def otlp_sink() -> Iterator[Sink]:
    sink: Sink

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            sink.receive(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    sink = Sink(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
