"""TLS for the receivers (``ServerTls``) and for Callscope's own clients (``ClientTls``: health, simulate, doctor).

Server: with ``tls_cert_file`` and ``tls_key_file`` set, gRPC and HTTP both serve TLS only (TLS 1.2+); with
``tls_client_ca_file`` too, a client must present a certificate signed by that CA (mutual TLS). Renewed
certificate and key files (cert-manager, certbot) are picked up without a restart: gRPC checks the files'
modification times on each new connection, HTTP every ``RELOAD_CHECK_S``; connections already open keep the
certificate they started with.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any, Mapping

import grpc

__all__ = ["ServerTls", "ClientTls", "TlsProblem", "RELOAD_CHECK_S"]

log = logging.getLogger("callscope.tls")
RELOAD_CHECK_S = 10.0


class TlsProblem(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file and what is wrong."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise TlsProblem(f"{what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise TlsProblem(f"{what} {path}: not a PEM file (expected -----BEGIN …-----)")
    return data


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


class ServerTls:
    """Certificate, key and optional client CA of both receivers."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = "") -> None:
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self._context = self._new_context()   # fails here, at start, with a clear message
        self._stamp = self._files_stamp()
        self._grpc_stamp = self._stamp

    @classmethod
    def from_settings(cls, settings: Any) -> "ServerTls | None":
        if not settings.tls_cert_file:
            return None
        return cls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca_file)

    def _files_stamp(self) -> tuple[float, ...]:
        return tuple(_mtime(p) for p in (self.cert_file, self.key_file, self.client_ca_file) if p)

    def _load_chain(self, context: ssl.SSLContext) -> None:
        _read(self.cert_file, "tls_cert_file")
        _read(self.key_file, "tls_key_file")
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            raise TlsProblem(f"tls_cert_file {self.cert_file} / tls_key_file {self.key_file}: {exc.reason or exc} "
                             f"(is the key the certificate's, both PEM, the key unencrypted?)") from None

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_chain(context)
        if self.client_ca_file:
            _read(self.client_ca_file, "tls_client_ca_file")
            try:
                context.load_verify_locations(cafile=self.client_ca_file)
            except ssl.SSLError as exc:
                raise TlsProblem(f"tls_client_ca_file {self.client_ca_file}: {exc.reason or exc}") from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    # --- HTTP (aiohttp) -----------------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        return self._context

    def reload_if_changed(self) -> bool:
        """Load renewed files into the HTTP context (new connections use them); False if unchanged or bad."""
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return False
        try:
            self._new_context()   # the files load together (key matches certificate) before the live context sees them
            self._load_chain(self._context)
            if self.client_ca_file:
                self._context.load_verify_locations(cafile=self.client_ca_file)
        except (TlsProblem, ssl.SSLError) as exc:
            # Half-written files during a renewal: keep the old certificate, try again at the next check.
            log.warning("tls.reload_failed", extra={"receiver": "http", "error": str(exc)})
            return False
        self._stamp = stamp
        log.info("tls.reloaded", extra={"receiver": "http", "cert_file": self.cert_file})
        return True

    # --- gRPC ------------------------------------------------------------------------------------------------

    def _grpc_configuration(self) -> Any:
        chain = _read(self.cert_file, "tls_cert_file")
        key = _read(self.key_file, "tls_key_file")
        roots = _read(self.client_ca_file, "tls_client_ca_file") if self.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)

    def _grpc_fetch(self) -> Any:
        """Called by grpc for each new connection: a new configuration when the files changed, else None."""
        stamp = self._files_stamp()
        if stamp == self._grpc_stamp:
            return None
        try:
            configuration = self._grpc_configuration()
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.cert_file, self.key_file)
        except (TlsProblem, ssl.SSLError) as exc:
            log.warning("tls.reload_failed", extra={"receiver": "grpc", "error": str(exc)})
            return None
        self._grpc_stamp = stamp
        log.info("tls.reloaded", extra={"receiver": "grpc", "cert_file": self.cert_file})
        return configuration

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._grpc_configuration(), self._grpc_fetch,
                                                   require_client_authentication=self.mutual)


@dataclass(frozen=True)
class ClientTls:
    """How a Callscope client talks TLS to a collector: trusted CA (None: the system's), the name to check in the
    server's certificate (None: the endpoint's host), and a client certificate for mutual TLS."""

    ca_file: str | None = None
    server_name: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_options(cls, *, tls: bool = False, ca_file: str | None = None, server_name: str | None = None,
                     cert_file: str | None = None, key_file: str | None = None,
                     environ: Mapping[str, str] | None = None, server_cert_fallback: bool = False
                     ) -> "ClientTls | None":
        """Flags first, then ``CALLSCOPE_TLS_CA_FILE`` / ``_SERVER_NAME`` / ``_CLIENT_CERT_FILE`` /
        ``_CLIENT_KEY_FILE``; None (plaintext) unless one of them asks for TLS.

        ``server_cert_fallback``: a client beside the collector (the container's health check) also turns TLS on
        when ``CALLSCOPE_TLS_CERT_FILE`` is set and trusts that certificate itself.
        """
        environ = os.environ if environ is None else environ
        ca_file = ca_file or environ.get("CALLSCOPE_TLS_CA_FILE") or None
        server_name = server_name or environ.get("CALLSCOPE_TLS_SERVER_NAME") or None
        cert_file = cert_file or environ.get("CALLSCOPE_TLS_CLIENT_CERT_FILE") or None
        key_file = key_file or environ.get("CALLSCOPE_TLS_CLIENT_KEY_FILE") or None
        own = environ.get("CALLSCOPE_TLS_CERT_FILE") if server_cert_fallback else None
        if not (tls or ca_file or cert_file or own):
            return None
        if bool(cert_file) != bool(key_file):
            raise TlsProblem("a client certificate needs both --tls-client-cert-file and --tls-client-key-file")
        return cls(ca_file=ca_file or own or None, server_name=server_name, cert_file=cert_file, key_file=key_file)

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        roots = _read(self.ca_file, "CA file") if self.ca_file else None
        chain = _read(self.cert_file, "client certificate") if self.cert_file else None
        key = _read(self.key_file, "client key") if self.key_file else None
        return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)

    def grpc_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def ssl_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsProblem(f"client TLS files: {exc}") from None
        return context

    def grpc_channel(self, target: str, options: list[tuple[str, Any]] | None = None, *, aio: bool = True) -> Any:
        """A gRPC channel to ``target`` over TLS (``aio``: grpc.aio, else the blocking API)."""
        factory = grpc.aio.secure_channel if aio else grpc.secure_channel
        return factory(target, self.grpc_credentials(), options=[*(options or []), *self.grpc_options()])
