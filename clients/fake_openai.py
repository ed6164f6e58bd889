"""A fake OpenAI embeddings provider for the client journeys: a real HTTPS server (Python's
standard library only) speaking `POST /v1/embeddings` as OpenAI's API reference describes it
(https://platform.openai.com/docs/api-reference/embeddings/create): a bearer key in
`Authorization`, a JSON body with `input` (a string or a list of strings), `model` and optional
`dimensions` / `encoding_format`, and a `list` of `embedding` objects with `usage` in return; a
missing key gets OpenAI's 401 `invalid_api_key` error object. It records the `Authorization`
header of every request, so a journey can check that the vaulted key reached the provider.

    python3 clients/fake_openai.py CERT KEY RECORD_FILE [DIMENSIONS]

prints `https://localhost:PORT/v1/embeddings` on its first line, then serves until killed,
appending one JSON line per request to RECORD_FILE. `serve_in_thread` does the same in-process.
"""

import hashlib
import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def vector(text, dimensions):
    """A deterministic vector for `text` (the same text always embeds the same)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i % len(digest)] - 128) / 128.0, 6) for i in range(dimensions)]


def handler_class(dimensions, record):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: the journey prints what matters
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            length = int(self.headers.get("content-length", "0"))
            raw = self.rfile.read(length)
            authorization = self.headers.get("authorization", "")
            record({"path": self.path, "authorization": authorization})
            if self.path != "/v1/embeddings":
                return self.reply(404, {"error": {"message": f"Unknown path {self.path}",
                                                  "type": "invalid_request_error",
                                                  "param": None, "code": None}})
            if not authorization.startswith("Bearer ") or len(authorization) <= 7:
                return self.reply(401, {"error": {
                    "message": "You didn't provide an API key.",
                    "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
            try:
                body = json.loads(raw)
                inputs = body["input"]
                model = body["model"]
            except (ValueError, KeyError, TypeError):
                return self.reply(400, {"error": {"message": "Invalid request body",
                                                  "type": "invalid_request_error",
                                                  "param": None, "code": None}})
            if isinstance(inputs, str):
                inputs = [inputs]
            size = body.get("dimensions") or dimensions
            data = [{"object": "embedding", "index": i, "embedding": vector(text, size)}
                    for i, text in enumerate(inputs)]
            tokens = sum(len(text.split()) for text in inputs)
            return self.reply(200, {"object": "list", "data": data, "model": model,
                                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    return Handler


def start(cert, key, dimensions, record):
    """Starts the server on 127.0.0.1, a free port; returns it (call `shutdown()` to stop)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class(dimensions, record))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def serve_in_thread(cert, key, dimensions=8):
    """Serves in a daemon thread; returns (server, endpoint, recorded requests list)."""
    recorded = []
    lock = threading.Lock()

    def record(entry):
        with lock:
            recorded.append(entry)

    server = start(cert, key, dimensions, record)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"https://localhost:{server.server_address[1]}/v1/embeddings"
    return server, endpoint, recorded


def main():
    cert, key, record_file = sys.argv[1:4]
    dimensions = int(sys.argv[4]) if len(sys.argv) > 4 else 8

    def record(entry):
        with open(record_file, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")

    server = start(cert, key, dimensions, record)
    print(f"https://localhost:{server.server_address[1]}/v1/embeddings", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
