"""From settings to a listening port: TLS credentials, the token interceptor, the checks.

:meth:`ServerAccess.from_settings` checks the transport and auth settings
together (README, "Access control", lists what is refused), reads and
verifies every file they name, and returns what a server needs: its
credentials, its interceptors (:class:`pretrade.api.access.AccessInterceptor`
with the loaded tokens) and a one-line summary for the banner.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from pretrade.api.access import AccessInterceptor, load_tokens
from pretrade.app.config import Settings, is_loopback
from pretrade.engine.errors import ConfigError

log = logging.getLogger("pretrade.access")


def _read_file(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{name}={path!r}: cannot read it: {error.strerror}") from None


def _check_pem(settings: Settings) -> None:
    """Let OpenSSL read the files now, so a bad one stops the start, not the first client."""
    assert settings.tls_cert is not None and settings.tls_key is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=b"")
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(
            f"tls_cert={settings.tls_cert!r}, tls_key={settings.tls_key!r}: not a PEM "
            f"certificate chain and the unencrypted PEM private key that matches it "
            f"({error})") from None
    if settings.tls_client_ca is not None:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca)
        except (ssl.SSLError, OSError) as error:
            raise ConfigError(f"tls_client_ca={settings.tls_client_ca!r}: not PEM CA "
                              f"certificates ({error})") from None


def _combination_problems(settings: Settings) -> list[str]:
    """Every way the transport and auth settings are contradictory or incomplete."""
    problems = []
    tls_given = [name for name in ("tls_cert", "tls_key", "tls_client_ca")
                 if getattr(settings, name) is not None]
    if settings.tls_require_client_cert:
        tls_given.append("tls_require_client_cert")
    if settings.insecure and tls_given:
        problems.append(f"insecure (plaintext) contradicts {', '.join(tls_given)}: choose "
                        "TLS or plaintext")
    elif not settings.insecure and not tls_given:
        problems.append("no transport security: set tls_cert and tls_key for TLS, or "
                        "insecure = true (--insecure) for plaintext local development")
    elif not settings.insecure:
        if (settings.tls_cert is None) != (settings.tls_key is None):
            missing = "tls_key" if settings.tls_key is None else "tls_cert"
            problems.append(f"TLS needs both tls_cert and tls_key; {missing} is not set")
        if settings.tls_require_client_cert and settings.tls_client_ca is None:
            problems.append("tls_require_client_cert needs tls_client_ca, the CA that "
                            "issues client certificates")
        if settings.tls_client_ca is not None and not settings.tls_require_client_cert:
            problems.append("tls_client_ca is set but tls_require_client_cert is not: "
                            "pretrade does not take optional client certificates; set "
                            "tls_require_client_cert = true for mutual TLS")
    if settings.auth == "tokens" and settings.tokens_file is None:
        problems.append("auth = 'tokens' needs tokens_file (make entries with `pretrade "
                        "token`), or auth = 'none' (--auth none) for local development")
    if settings.auth == "none":
        if settings.tokens_file is not None:
            problems.append("tokens_file is set but auth = 'none' would ignore it")
        if not is_loopback(settings.listen_host):
            problems.append(f"auth = 'none' lets anyone who can connect call Halt; it is "
                            f"refused on the non-loopback address {settings.listen}")
    return problems


@dataclass(frozen=True)
class ServerAccess:
    """What a server needs from the access settings: credentials and interceptors.

    Build it with :meth:`from_settings`, which reads and checks every file.
    """

    credentials: grpc.ServerCredentials | None
    interceptors: tuple[grpc.aio.ServerInterceptor, ...]
    summary: str
    plaintext: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerAccess:
        """Check the transport and auth settings together and load their files.

        Raises
        ------
        ConfigError
            Listing every contradiction or omission (TLS and ``insecure``
            both or neither, a certificate without its key, a client CA
            without ``tls_require_client_cert`` or the reverse, tokens
            without a tokens file, ``auth = "none"`` off loopback), or the
            first file that cannot be read or parsed.
        """
        problems = _combination_problems(settings)
        if problems:
            raise ConfigError("access settings: " + "; ".join(problems))
        interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()
        if settings.tokens_file is not None:
            tokens = load_tokens(settings.tokens_file)
            interceptors = (AccessInterceptor(tokens),)
            auth = f"bearer tokens ({len(tokens)} principals)"
        else:
            auth = "NO authentication (local development)"
        if settings.insecure:
            return cls(None, interceptors, f"plaintext, {auth}", plaintext=True)
        assert settings.tls_cert is not None and settings.tls_key is not None
        _check_pem(settings)
        client_ca = (_read_file("tls_client_ca", settings.tls_client_ca)
                     if settings.tls_client_ca is not None else None)
        credentials = grpc.ssl_server_credentials(
            [(_read_file("tls_key", settings.tls_key), _read_file("tls_cert", settings.tls_cert))],
            root_certificates=client_ca, require_client_auth=settings.tls_require_client_cert)
        transport = "mutual TLS" if settings.tls_require_client_cert else "TLS"
        return cls(credentials, interceptors, f"{transport}, {auth}", plaintext=False)

    def bind(self, server: grpc.aio.Server, listen: str) -> int:
        """Add the listening port with these credentials; return the port (0: failed)."""
        if self.credentials is None:
            return server.add_insecure_port(listen)
        return server.add_secure_port(listen, self.credentials)

    def warn_if_exposed(self, settings: Settings) -> None:
        """Log a WARNING when plaintext is served beyond this machine."""
        if self.plaintext and not is_loopback(settings.listen_host):
            log.warning("serving plaintext on %s: bearer tokens cross the network in clear "
                        "text; set tls_cert and tls_key, or terminate TLS in front of pretrade",
                        settings.listen)

