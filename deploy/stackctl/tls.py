"""TLS at nginx: the certificate and key nginx serves, the local CA `make up` creates when none is given,
the checks `make check` and `make up` run on them, and how a client on this host trusts the result.

Everything goes through the `openssl` command of the OS (like nginx itself; no Python dependency). The
generated CA may only vouch for localhost, 127.0.0.0/8 and ::1 (a critical nameConstraints extension):
trusting it cannot make a certificate for any other name valid. Its key never leaves `<run dir>/tls`.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from deploy.stackctl.rules import Finding, Severity
from service.settings import Settings

RENEW_DAYS = 30  # a given certificate warns below this many days left; a generated one is renewed
CA_DAYS = 3650
LEAF_DAYS = 365
# How containers on the compose network reach nginx by a name the certificate carries (the TLS overlay
# gives the nginx service this alias; stackctl/docker.py). Under localhost: within the CA's limits.
CONTAINER_NAME = "nginx.localhost"
NAMES = f"DNS:localhost,DNS:{CONTAINER_NAME},IP:127.0.0.1,IP:::1"
LOOPBACK_ADDRESSES = ("127.0.0.1", "0.0.0.0")  # listen addresses a client of this host reaches as 127.0.0.1
# The extensions of both certificates: a config file of our own, so the system's openssl.cnf adds nothing.
OPENSSL_CONFIG = f"""# written by deploy/stackctl/tls.py
[req]
distinguished_name = dn
prompt = no
[dn]
CN = localhost
[ca]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
nameConstraints = critical,@constraints
[constraints]
permitted;DNS.1 = localhost
permitted;IP.1 = 127.0.0.0/255.0.0.0
permitted;IP.2 = ::1/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff
[leaf]
subjectAltName = {NAMES}
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
NEW_KEY = "-new -config openssl.cnf -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"


class TlsError(Exception):
    """A TLS input nginx cannot use, or openssl failing; the message is one line naming the knob."""


@dataclass(frozen=True)
class Files:
    cert: Path
    key: Path
    ca: Path | None  # the local CA a client must trust; None for a given certificate

    @property
    def generated(self) -> bool:
        return self.ca is not None

    def named(self) -> tuple[str, str]:
        """How findings name the certificate and the key: by knob, and for generated files as such."""
        if self.generated:
            return (
                f"NGINX_TLS_CERT empty: generated {self.cert}",
                f"NGINX_TLS_KEY empty: generated {self.key}",
            )
        return f"NGINX_TLS_CERT={self.cert}", f"NGINX_TLS_KEY={self.key}"


def generated_dir(settings: Settings) -> Path:
    """`<run dir>/tls`: a runtime pins NGINX_RUN_DIR to `<run dir>/nginx`."""
    return Path(settings.nginx_run_dir).parent / "tls"


def files(settings: Settings) -> Files:
    """What nginx serves: the given certificate and key (absolute paths), else the generated ones."""
    if settings.nginx_tls_cert or settings.nginx_tls_key:
        given = [Path(p).expanduser().absolute() for p in (settings.nginx_tls_cert, settings.nginx_tls_key)]
        return Files(given[0], given[1], ca=None)
    where = generated_dir(settings)
    return Files(where / "cert.pem", where / "key.pem", where / "ca.pem")


def client_host(listen_address: str) -> str:
    """Where a client of this host reaches a server listening on `listen_address`."""
    return "127.0.0.1" if listen_address in LOOPBACK_ADDRESSES else listen_address


def https_url(settings: Settings) -> str:
    return f"https://{client_host(settings.nginx_listen_address)}:{settings.https_port}"


# --- openssl -------------------------------------------------------------------------------------------


def openssl(binary: str, *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise TlsError(f"openssl {args[0]} failed: {last}")
    return done.stdout


def not_after(binary: str, cert: Path) -> float:
    """The certificate's notAfter as a Unix time (the first certificate of the file: the leaf)."""
    out = openssl(binary, "x509", "-in", str(cert), "-noout", "-enddate")
    return ssl.cert_time_to_seconds(out.strip().removeprefix("notAfter="))


def key_mismatch(cert: Path, key: Path) -> str | None:
    """None when the key belongs to the certificate, else why not (Python's ssl, as nginx would load them)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key), password=lambda: b"")
    except ssl.SSLError as error:
        if "KEY_VALUES_MISMATCH" in str(error) or "key values mismatch" in str(error):
            return "the key does not belong to the certificate"
        return f"cannot load them ({error.reason or error}; an encrypted key is not supported)"
    return None


def day(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


# --- the local CA and its certificate --------------------------------------------------------------------


def ensure(settings: Settings, binary: str) -> Files:
    """The files nginx will serve, usable: generated ones created (or renewed), given ones checked. Raises
    TlsError naming the knob when nginx could not serve them."""
    served = files(settings)
    if served.generated:
        generate(served, binary)
    errors = [f for f in findings(settings, binary) if f.severity == "error"]
    if errors:
        raise TlsError(f"{errors[0].claim}; {errors[0].fix}")
    return served


def generate(served: Files, binary: str) -> None:
    """A local CA (kept while valid, so a client trusts it once) and a certificate for NAMES signed by it,
    re-issued when missing, mismatched, near its end or issued under another OPENSSL_CONFIG."""
    assert served.ca is not None  # generated files always have their CA
    where = served.cert.parent
    where.mkdir(parents=True, exist_ok=True)
    config = where / "openssl.cnf"
    renew_leaf = not config.is_file() or config.read_text() != OPENSSL_CONFIG  # e.g. NAMES grew
    config.write_text(OPENSSL_CONFIG)
    ca_key = where / "ca.key"
    if not usable(binary, served.ca, ca_key):
        subject = f"/CN=blueprint local CA {socket.gethostname()[:32]} {day(time.time())}"
        new_ca = f"req -x509 {NEW_KEY} -extensions ca -keyout ca.key.new -out ca.pem.new -days {CA_DAYS}"
        openssl(binary, *new_ca.split(), "-subj", subject, cwd=where)
        os.replace(where / "ca.key.new", ca_key)
        os.replace(where / "ca.pem.new", served.ca)
        renew_leaf = True
    if renew_leaf or not usable(binary, served.cert, served.key, served.ca):
        request = f"req {NEW_KEY} -keyout key.pem.new -out cert.csr -subj /CN=localhost"
        openssl(binary, *request.split(), cwd=where)
        sign = (
            f"x509 -req -in cert.csr -CA ca.pem -CAkey ca.key -set_serial 0x{secrets.token_hex(16)} "
            f"-days {LEAF_DAYS} -extfile openssl.cnf -extensions leaf -out cert.pem.new"
        )
        openssl(binary, *sign.split(), cwd=where)
        (where / "cert.csr").unlink()
        os.replace(where / "key.pem.new", served.key)
        os.replace(where / "cert.pem.new", served.cert)


def usable(binary: str, cert: Path, key: Path, ca: Path | None = None) -> bool:
    """Both files there, the key the certificate's, issued by `ca` (when given), RENEW_DAYS left at least."""
    if not (cert.is_file() and key.is_file()) or key_mismatch(cert, key):
        return False
    try:
        if ca is not None:
            openssl(binary, "verify", "-CAfile", str(ca), str(cert))
        return not_after(binary, cert) - time.time() > RENEW_DAYS * 86400
    except (TlsError, ValueError):
        return False


# --- checks ----------------------------------------------------------------------------------------------


def tls_finding(aspect: str, severity: Severity, claim: str, why: str, fix: str, **values: str) -> Finding:
    return Finding(f"tls ({aspect})", severity, claim, why, fix, values=values)


def findings(settings: Settings, binary: str | None) -> list[Finding]:
    """`make check`'s verdicts on the TLS inputs, each naming its knob. `binary`: openssl, None if absent."""
    if not settings.nginx_tls:
        return without_tls(settings)
    first = verdict(settings, binary)
    if first.severity == "error" or binary is None:
        return [first]
    return [first, *chain_findings(settings, files(settings), binary)]


PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def subject_and_issuer(binary: str, pem: str) -> tuple[str, str]:
    done = subprocess.run(
        [binary, "x509", "-noout", "-subject", "-issuer", "-nameopt", "RFC2253"],
        input=pem, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return lines.get("subject", "").strip(), lines.get("issuer", "").strip()


def chain_findings(settings: Settings, served: Files, binary: str) -> list[Finding]:
    """A given certificate file must hold the chain clients need: its leaf's issuer, unless the leaf is
    self-signed. NGINX_OCSP_STAPLING needs that chain and a CA that answers OCSP: the local CA does not."""
    stapling = {"NGINX_OCSP_STAPLING": str(settings.nginx_ocsp_stapling)}
    if served.generated:
        if not settings.nginx_ocsp_stapling:
            return []
        return [
            tls_finding(
                "ocsp",
                "error",
                "NGINX_OCSP_STAPLING=1 with NGINX_TLS_CERT empty (the generated local CA)",
                "the local CA runs no OCSP responder: there is nothing to staple",
                "set NGINX_OCSP_STAPLING=0, or give NGINX_TLS_CERT from a CA that answers OCSP",
                **stapling,
            )
        ]
    blocks = PEM_CERTIFICATE.findall(served.cert.read_text(errors="replace"))
    named = [subject_and_issuer(binary, block) for block in blocks]
    (subject, issuer), others = named[0], {name for name, _ in named[1:]}
    cert_named, _ = served.named()
    found: list[Finding] = []
    if issuer != subject and issuer not in others:
        found.append(
            tls_finding(
                "chain",
                "error" if settings.nginx_ocsp_stapling else "warning",
                f"{cert_named}: holds the certificate of {subject} but not its issuer {issuer}",
                "nginx sends only what the file holds, and a client that lacks that intermediate "
                "certificate refuses the connection (browsers may fetch it, curl and Python do not)",
                "append the intermediate certificate(s) after the leaf (the CA's fullchain.pem)",
                NGINX_TLS_CERT=str(served.cert),
            )
        )
    elif settings.nginx_ocsp_stapling and issuer == subject:
        found.append(
            tls_finding(
                "ocsp",
                "error",
                f"NGINX_OCSP_STAPLING=1 with a self-signed {cert_named}",
                "no CA answers OCSP for a self-signed certificate",
                "set NGINX_OCSP_STAPLING=0",
                **stapling,
            )
        )
    elif (
        settings.nginx_ocsp_stapling
        and not openssl(binary, "x509", "-in", str(served.cert), "-noout", "-ocsp_uri").strip()
    ):
        found.append(
            tls_finding(
                "ocsp",
                "warning",
                f"NGINX_OCSP_STAPLING=1 but {cert_named} names no OCSP responder",
                "nginx staples nothing (some CAs, Let's Encrypt among them, no longer run OCSP)",
                "set NGINX_OCSP_STAPLING=0",
                **stapling,
            )
        )
    return found


def verdict(settings: Settings, binary: str | None) -> Finding:
    """The first problem of the TLS inputs, or that they are fine."""
    ports = {"HTTP_PORT": str(settings.http_port), "HTTPS_PORT": str(settings.https_port)}
    if settings.https_port == settings.http_port or settings.https_listen_port == settings.listen_port:
        return tls_finding(
            "ports",
            "error",
            f"HTTPS_PORT={settings.https_port} equals HTTP_PORT={settings.http_port}",
            "nginx cannot serve HTTPS and the redirecting plain HTTP on one port",
            "choose another HTTPS_PORT",
            **ports,
        )
    if bool(settings.nginx_tls_cert) != bool(settings.nginx_tls_key):
        given = "NGINX_TLS_CERT" if settings.nginx_tls_cert else "NGINX_TLS_KEY"
        missing = "NGINX_TLS_KEY" if settings.nginx_tls_cert else "NGINX_TLS_CERT"
        return tls_finding(
            "inputs",
            "error",
            f"{given} is set but {missing} is empty",
            "nginx needs a certificate and its key; both empty means generate both",
            f"set {missing} too, or unset {given}",
        )
    served = files(settings)
    if served.generated and settings.nginx_listen_address not in LOOPBACK_ADDRESSES:
        address = settings.nginx_listen_address
        return tls_finding(
            "inputs",
            "error",
            f"NGINX_LISTEN_ADDRESS={address} with NGINX_TLS_CERT empty (generated)",
            "the generated certificate names only localhost, nginx.localhost (compose), 127.0.0.1 and ::1: "
            f"no client that connects to {address} can verify it",
            "give NGINX_TLS_CERT and NGINX_TLS_KEY for a name of that address, or listen on 0.0.0.0",
            NGINX_LISTEN_ADDRESS=address,
        )
    if binary is None:
        return tls_finding(
            "openssl",
            "error",
            "NGINX_TLS=1 but the openssl command is not installed",
            "it creates the local CA and reads certificate dates",
            "install openssl (apt-get install openssl, brew install openssl)",
        )
    if served.generated and not served.cert.exists():
        return tls_finding(
            "inputs",
            "ok",
            f"NGINX_TLS_CERT and NGINX_TLS_KEY empty: `make up` creates a local CA "
            f"and a certificate for localhost, 127.0.0.1, ::1 in {served.cert.parent}",
            "",
            "",
        )
    return pair_verdict(served, binary)


def pair_verdict(served: Files, binary: str) -> Finding:
    cert_named, key_named = served.named()
    for knob, named, path in (
        ("NGINX_TLS_CERT", cert_named, served.cert),
        ("NGINX_TLS_KEY", key_named, served.key),
    ):
        try:
            path.read_bytes()
        except OSError as error:
            return tls_finding(
                "inputs",
                "error",
                f"{named}: cannot read it ({error.strerror})",
                "nginx loads it at start and refuses to run without it",
                f"point {knob} at a readable PEM file",
            )
    try:
        expires = not_after(binary, served.cert)
    except (TlsError, ValueError) as error:
        return tls_finding(
            "certificate",
            "error",
            f"{cert_named}: not a PEM certificate ({error})",
            "nginx cannot load it",
            "give a PEM file that starts with -----BEGIN CERTIFICATE-----",
        )
    mismatch = key_mismatch(served.cert, served.key)
    if mismatch:
        return tls_finding(
            "key",
            "error",
            f"{key_named} and {cert_named}: {mismatch}",
            "nginx refuses a key that does not match its certificate",
            "set the key the certificate was issued for",
        )
    left = (expires - time.time()) / 86400
    renewal = "`make up` renews it" if served.generated else "renew the certificate"
    if left < 0:
        return tls_finding(
            "expiry",
            "error",
            f"{cert_named}: expired on {day(expires)}",
            "clients refuse an expired certificate",
            renewal,
        )
    if left < RENEW_DAYS:
        return tls_finding(
            "expiry",
            "warning",
            f"{cert_named}: expires on {day(expires)}, in {left:.0f} days",
            f"under {RENEW_DAYS} days left; clients refuse it once it expires",
            renewal,
        )
    trust = f"; clients trust {served.ca}" if served.ca else ""
    return tls_finding(
        "certificate",
        "ok",
        f"{cert_named}: valid until {day(expires)} ({left:.0f} days), key matches{trust}",
        "",
        "",
    )


def without_tls(settings: Settings) -> list[Finding]:
    unused = [
        f"{name}={value}"
        for name, value in (
            ("NGINX_TLS_CERT", settings.nginx_tls_cert),
            ("NGINX_TLS_KEY", settings.nginx_tls_key),
            ("NGINX_HSTS_MAX_AGE", settings.nginx_hsts_max_age or ""),
            ("NGINX_OCSP_STAPLING", settings.nginx_ocsp_stapling or ""),
        )
        if value
    ]
    if not unused:
        return []
    return [
        tls_finding(
            "no effect",
            "warning",
            f"{', '.join(unused)} set while NGINX_TLS=0",
            "they apply only with TLS on",
            "set NGINX_TLS=1, or unset them",
        )
    ]


# --- clients on this host --------------------------------------------------------------------------------


def client_context(served: Files) -> ssl.SSLContext:
    """How this host's own probes verify the stack's HTTPS: against the local CA (names checked) for a
    generated certificate; for a given one, against that very certificate (a pin: it is what nginx was told
    to serve, whatever name it carries — the probe connects to 127.0.0.1)."""
    if served.ca is not None:
        return ssl.create_default_context(cafile=str(served.ca))
    context = ssl.create_default_context(cafile=str(served.cert))
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = False
    return context


def trust_hint(served: Files, url: str, plain_url: str) -> list[str]:
    """What `make up` prints after the URL: where the CA is and how clients trust it."""
    lines = [f"{plain_url} redirects to {url} (308)"]
    if served.ca is None:
        return [f"TLS: {url} serves NGINX_TLS_CERT={served.cert}", *lines]
    return [
        f"TLS: {url} serves a certificate for localhost, nginx.localhost (compose), 127.0.0.1 and ::1 "
        f"from a local CA made for this stack (it can vouch for no other name): {served.ca}",
        f"  trust it: curl --cacert {served.ca} {url}/api/ping",
        f"            SSL_CERT_FILE={served.ca} (Python ssl, httpx, websocket-client; "
        f"REQUESTS_CA_BUNDLE for requests); make loadtest does this itself",
        *lines,
    ]
