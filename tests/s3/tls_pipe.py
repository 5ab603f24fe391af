"""A TLS terminator for tests: accepts TLS connections on 127.0.0.1 and pipes each one's
bytes, unchanged, to a plain TCP address (the S3 gateway). AWS clients send uploads as
aws-chunked with a trailing checksum only over https; this lets them, while the gateway
sees exactly the requests they sent (the Host header included, so signatures hold).

    python3 tests/s3/tls_pipe.py CERT KEY TARGET_HOST:PORT PORT_FILE
"""

import os
import socket
import ssl
import sys
import threading


def pipe(source, sink):
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(connection, context, target):
    try:
        secure = context.wrap_socket(connection, server_side=True)
        upstream = socket.create_connection(target, timeout=60)
    except OSError:
        connection.close()
        return
    upstream.settimeout(None)
    threading.Thread(target=pipe, args=(upstream, secure), daemon=True).start()
    pipe(secure, upstream)


def main():
    cert, key, target, port_file = sys.argv[1:5]
    host, port = target.rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    with open(port_file + ".tmp", "w") as f:
        f.write(str(listener.getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection, context, (host, int(port))), daemon=True).start()


if __name__ == "__main__":
    main()
