"""The passwords of the embedded servers: one 0600 JSON file per data dir.

``<data_dir>/secrets.json`` holds the Valkey ``requirepass``, the Postgres superuser
password (admin: creating databases) and the password of the service's own non-superuser
role.  It is created with ``os.open(..., 0o600)`` and published with ``link()``, so it is
never readable by anyone else, not even briefly, and concurrent first starts agree on one
file.  Whoever can read it owns the servers; nobody else gets in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from counters.embedded.process import EmbeddedServerError

SECRETS_FILE = "secrets.json"
_SCRAM_ITERATIONS = 4096


@dataclass(frozen=True)
class EmbeddedSecrets:
    """Generated passwords (URL-safe characters only)."""

    valkey_password: str
    postgres_admin_password: str
    postgres_password: str


def secrets_path(data_dir: Path) -> Path:
    return data_dir / SECRETS_FILE


def _tighten(data_dir: Path) -> None:
    """Drop read/write for group and others on the data dir (keep x: Postgres as
    `nobody` must still traverse it to PGDATA)."""
    st = data_dir.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o066:
        os.chmod(data_dir, st.st_mode & 0o7711)


def read_secrets(data_dir: Path) -> EmbeddedSecrets | None:
    """The secrets of data_dir, or None when there is no (readable, valid) file."""
    try:
        data = json.loads(secrets_path(data_dir).read_text())
        return EmbeddedSecrets(
            valkey_password=str(data["valkey_password"]),
            postgres_admin_password=str(data["postgres_admin_password"]),
            postgres_password=str(data["postgres_password"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_secrets(data_dir: Path) -> EmbeddedSecrets:
    """The secrets of data_dir, generating the file (mode 0600) on first use.

    Guarantees: the file is never world- or group-readable, an existing file is never
    replaced, and processes racing on a fresh data dir all return the same secrets.
    """
    data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    _tighten(data_dir)
    path = secrets_path(data_dir)
    found = read_secrets(data_dir)
    if found is not None:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return found
    if path.exists():
        raise EmbeddedServerError(f"{path} exists but cannot be read or parsed; fix or remove it")
    generated = {
        "valkey_password": secrets.token_urlsafe(32),
        "postgres_admin_password": secrets.token_urlsafe(32),
        "postgres_password": secrets.token_urlsafe(32),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(generated, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # never overwrites: a racing creator's file wins
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    found = read_secrets(data_dir)
    if found is None:
        raise EmbeddedServerError(f"could not create {path}")
    return found


def scram_verifier(password: str) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for password (computed here, so the
    plain password never reaches the server or its log)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
