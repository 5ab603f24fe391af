"""A server that answers S3 requests without doing anything: PUTs are read and thrown
away, a GET answers the bytes the last PUT of that size sent (4 KiB or 64 MiB, kept in
memory, one of each). bench/s3.sh measures boto3 against it to show where the client
itself is the limit. Not S3: no signatures are checked, no XML is answered.

    python3 bench/null_s3.py PORT_FILE   # listens on 127.0.0.1, writes its port there
"""

import hashlib
import http.server
import sys

LAST = {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go in separate writes: without this, delayed ACKs add 40 ms.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_PUT(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        LAST[len(body)] = body
        self._answer(200, headers=[("ETag", '"%s"' % hashlib.md5(body).hexdigest())])

    def do_GET(self):
        large = "/large/" in self.path
        body = LAST.get(64 << 20 if large else 4096, b"")
        self._answer(200, body, headers=[("Content-Type", "binary/octet-stream")])

    do_HEAD = do_GET


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    server = Server(("127.0.0.1", 0), Handler)
    with open(sys.argv[1], "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()
