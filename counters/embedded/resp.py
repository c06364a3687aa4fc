"""A minimal RESP client (one command per connection) to probe the embedded Valkey
without the redis package."""

from __future__ import annotations

import socket

from counters.embedded.process import HOST


def _resp_command(port: int, *args: str, timeout: float = 1.0) -> str | None:
    """Send one RESP command to 127.0.0.1:port; return the reply text (errors as '-...').

    None when nothing answers.  Only simple strings, errors, integers and bulk strings
    are understood, which is all PING / INFO need.
    """
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        raw = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(payload)
            with sock.makefile("rb") as reader:
                header = reader.readline()
                if not header.endswith(b"\r\n"):
                    return None
                kind, rest = header[:1], header[1:-2].decode("utf-8", errors="replace")
                if kind in (b"+", b":"):
                    return rest
                if kind == b"-":
                    return "-" + rest
                if kind == b"$":
                    length = int(rest)
                    if length < 0:
                        return ""
                    body = reader.read(length + 2)
                    return body[:length].decode("utf-8", errors="replace")
                return None
    except (OSError, ValueError):
        return None
