"""TLS and mutual TLS for servers and client channels, from PEM files named in the config.

A server with ``tls.cert_file`` set listens with TLS only; ``tls.ca_file`` plus
``tls.require_client_cert`` make it refuse clients without a certificate signed
by that CA (mutual TLS). The files are re-read when they change (checked at
each new connection's handshake), so a renewed certificate (cert-manager
rotating a Secret) is served without a restart; connections already open keep
the certificate they started with.

A client channel with ``tls.ca_file`` set verifies the server against that CA
and presents ``tls.cert_file``/``tls.key_file`` when given. With no files set
both sides stay plaintext (the local mesh on loopback).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from services.common.config import ClientTlsConfig, ConfigError, ServerTlsConfig

log = logging.getLogger(__name__)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path!r} cannot be read: {exc.strerror}") from None


def _validate_server(tls: ServerTlsConfig) -> None:
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("server.tls needs both cert_file and key_file (or neither)")
    if tls.require_client_cert and not tls.ca_file:
        raise ConfigError("server.tls.require_client_cert needs server.tls.ca_file")
    if tls.ca_file and not tls.cert_file:
        raise ConfigError("server.tls.ca_file is set but cert_file/key_file are not")


class _ReloadingCertificates:
    """Hands gRPC a new certificate configuration whenever one of the files changes."""

    def __init__(self, tls: ServerTlsConfig) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._stamp = self._mtimes()
        self.initial = self._configuration()

    def _paths(self) -> list[str]:
        return [p for p in (self.tls.cert_file, self.tls.key_file, self.tls.ca_file) if p]

    def _mtimes(self) -> tuple[int, ...]:
        stamps = []
        for path in self._paths():
            try:
                stamps.append(os.stat(path).st_mtime_ns)
            except OSError:
                stamps.append(-1)
        return tuple(stamps)

    def _configuration(self) -> Any:
        key = _read(self.tls.key_file, "server.tls.key_file")
        cert = _read(self.tls.cert_file, "server.tls.cert_file")
        ca = _read(self.tls.ca_file, "server.tls.ca_file") if self.tls.ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> Any:
        # Called by gRPC core at each handshake; None keeps the current configuration.
        with self._lock:
            stamp = self._mtimes()
            if stamp == self._stamp:
                return None
            try:
                configuration = self._configuration()
            except ConfigError as exc:  # mid-rotation: keep serving the old files
                log.warning("TLS files changed but cannot be read yet: %s", exc)
                return None
            self._stamp = stamp
            log.info("TLS certificate files changed: reloaded")
            return configuration


def server_credentials(tls: ServerTlsConfig) -> grpc.ServerCredentials | None:
    """Credentials for ``add_secure_port``, or None when TLS is off."""
    _validate_server(tls)
    if not tls.cert_file:
        return None
    certificates = _ReloadingCertificates(tls)
    return grpc.dynamic_ssl_server_credentials(
        certificates.initial,
        certificates.fetch,
        require_client_authentication=tls.require_client_cert,
    )


def channel_credentials(tls: ClientTlsConfig) -> grpc.ChannelCredentials | None:
    """Credentials for a client channel, or None for plaintext."""
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("client tls needs both cert_file and key_file (or neither)")
    if not tls.ca_file:
        if tls.cert_file:
            raise ConfigError("client tls.cert_file is set but tls.ca_file is not")
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file, "tls.ca_file"),
        private_key=_read(tls.key_file, "tls.key_file") if tls.key_file else None,
        certificate_chain=_read(tls.cert_file, "tls.cert_file") if tls.cert_file else None,
    )


def _options(tls: ClientTlsConfig, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    extra = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return [*options, *extra]


def aio_channel(
    target: str,
    tls: ClientTlsConfig,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to ``target``: TLS when ``tls.ca_file`` is set, else plaintext."""
    credentials = channel_credentials(tls)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, credentials, options=_options(tls, options), interceptors=interceptors
    )


def channel(
    target: str, tls: ClientTlsConfig, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A blocking channel to ``target``: TLS when ``tls.ca_file`` is set, else plaintext."""
    credentials = channel_credentials(tls)
    if credentials is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, credentials, options=_options(tls, options))
