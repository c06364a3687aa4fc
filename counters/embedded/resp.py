"""A minimal RESP client (one command per connection) to probe the embedded Valkey
without the redis package."""

from __future__ import annotations

import socket

from counters.embedded.process import HOST


def _encode(args: tuple[str, ...]) -> bytes:
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        raw = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
    return payload


def _resp_command(
    port: int, *args: str, password: str | None = None, timeout: float = 1.0
) -> str | None:
    """Send one RESP command to 127.0.0.1:port (after AUTH when password is given);
    return the reply text (errors as '-...', a failed AUTH's error included).

    None when nothing answers.  Only simple strings, errors, integers and bulk strings
    are understood, which is all AUTH / PING / INFO need.
    """
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            with sock.makefile("rb") as reader:
                if password is not None:
                    sock.sendall(_encode(("AUTH", password)))
                    auth = reader.readline()
                    if not auth.startswith(b"+"):
                        return auth[:-2].decode("utf-8", errors="replace") or None
                sock.sendall(_encode(args))
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
