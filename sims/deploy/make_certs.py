"""TLS certificates and SuperNode keys for a fish-fl deployment (flwr 1.41 to 1.42).

Pure Python (the ``cryptography`` package Flower already depends on), so it
works on a fresh machine without openssl or ssh-keygen::

    python -m sims.deploy.make_certs tls OUT --host superlink.lan --host 10.0.0.5
    python -m sims.deploy.make_certs node-keys OUT --count 2

``tls`` writes

===============  ===============================================================
``ca.crt``       the certificate authority: ``--ssl-ca-certfile`` of the SuperLink,
                 ``--root-certificates`` of every SuperNode, ``root-certificates``
                 of the ``flwr`` connection
``ca.key``       the authority's private key: only needed to sign again, keep it
                 off the devices
``server.pem``   the SuperLink's certificate (``--ssl-certfile``), valid for every
                 ``--host`` and always for ``localhost`` and ``127.0.0.1``: the
                 SuperLink's own SuperExec reaches the Runtime API on 127.0.0.1
                 with the same certificate
``server.key``   its private key (``--ssl-keyfile``)
===============  ===============================================================

``node-keys`` writes one ECDSA P-384 key pair per SuperNode in OpenSSH format,
the format flwr 1.41 reads: ``NAME.key`` for ``flower-supernode
--auth-supernode-private-key`` and ``NAME.pub`` for ``flwr supernode register``.
Run it on the device itself to keep the private key there; only ``NAME.pub``
travels to the operator.

Private keys are written with mode 0600; nothing is overwritten without
``--force``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["NodeKey", "TlsFiles", "make_node_key", "make_tls"]

ALWAYS_HOSTS = ("localhost", "127.0.0.1")
"""Names every SuperLink certificate holds (the SuperLink talks to itself on 127.0.0.1)."""

_TLS_CURVE = ec.SECP256R1()  # the most widely supported curve for TLS
_NODE_CURVE = ec.SECP384R1()  # a NIST curve, as `flwr supernode register` requires


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the files written by :func:`make_tls`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    """Paths of one SuperNode's key pair written by :func:`make_node_key`."""

    name: str
    private_key: Path
    public_key: Path


def _write(path: Path, data: bytes, *, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (use --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in [*hosts, *ALWAYS_HOSTS]:
        host = host.strip()
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if any(c in host for c in " /:@"):
                raise ValueError(
                    f"--host {host!r} is neither a host name nor an IP address"
                ) from None
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_tls(
    out: Path,
    hosts: Sequence[str] = (),
    *,
    days: int = 365,
    force: bool = False,
) -> TlsFiles:
    """Write a certificate authority and a SuperLink certificate signed by it.

    Parameters
    ----------
    out
        Folder for ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key``.
    hosts
        Host names and IP addresses under which SuperNodes and the ``flwr`` CLI
        reach the SuperLink; ``localhost`` and ``127.0.0.1`` are always added.
    days
        Validity of both certificates.
    force
        Replace existing files.
    """
    if days < 1:
        raise ValueError(f"days={days} must be >= 1")
    files = TlsFiles(out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key")
    if not force:
        for path in (files.ca_cert, files.ca_key, files.server_cert, files.server_key):
            if path.exists():
                raise FileExistsError(f"{path} exists (use --force to replace it)")
    san = _san(hosts)
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # small clock skew
    end = start + dt.timedelta(days=days)

    # 1. The authority: self-signed, allowed to sign end-entity certificates only.
    ca_key = ec.generate_private_key(_TLS_CURVE)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fish-fl deployment CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    # 2. The SuperLink's certificate, for every name it is reached under.
    server_key = ec.generate_private_key(_TLS_CURVE)
    first = san.get_values_for_type(x509.DNSName) or ["localhost"]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    _write(files.ca_cert, ca_cert.public_bytes(pem), private=False, force=force)
    _write(files.ca_key, _pem_key(ca_key), private=True, force=force)
    _write(files.server_cert, server_cert.public_bytes(pem), private=False, force=force)
    _write(files.server_key, _pem_key(server_key), private=True, force=force)
    return files


def make_node_key(out: Path, name: str, *, force: bool = False) -> NodeKey:
    """Write one SuperNode's ECDSA P-384 key pair in OpenSSH format.

    ``out/NAME.key`` is the private key (``--auth-supernode-private-key``),
    ``out/NAME.pub`` the public key to register with ``flwr supernode register``.
    """
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ValueError(f"node name {name!r} must be a plain file name")
    key = ec.generate_private_key(_NODE_CURVE)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    result = NodeKey(name, out / f"{name}.key", out / f"{name}.pub")
    if not force:
        for path in (result.private_key, result.public_key):
            if path.exists():
                raise FileExistsError(f"{path} exists (use --force to replace it)")
    _write(result.private_key, private, private=True, force=force)
    _write(result.public_key, public + f" {name}\n".encode(), private=False, force=force)
    return result


# -- command line ---------------------------------------------------------------------

app = typer.Typer(
    name="make_certs",
    help="TLS certificates and SuperNode keys for a fish-fl deployment.",
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

OutArg = Annotated[Path, typer.Argument(help="Folder to write into.", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace existing files.")]


@app.command("tls")
def tls_command(
    out: OutArg,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="Host name or IP address the SuperLink is reached under (repeatable); "
            "localhost and 127.0.0.1 are always included.",
            show_default=False,
        ),
    ] = None,
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 365,
    force: ForceOpt = False,
) -> None:
    """A certificate authority and the SuperLink's certificate (ca.crt, server.pem, ...)."""
    files = make_tls(out, host or [], days=days, force=force)
    names = ", ".join(dict.fromkeys([*(host or []), *ALWAYS_HOSTS]))
    typer.echo(f"wrote {files.ca_cert}, {files.server_cert} (for {names}) and their keys")


@app.command("node-keys")
def node_keys_command(
    out: OutArg,
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="SuperNode name (repeatable).", show_default=False),
    ] = None,
    count: Annotated[
        int,
        typer.Option(
            "--count", help="Without --name: this many keys, supernode-0, supernode-1, ..."
        ),
    ] = 1,
    force: ForceOpt = False,
) -> None:
    """One SuperNode key pair per name: NAME.key (private) and NAME.pub (to register)."""
    if count < 1:
        raise ValueError(f"--count={count} must be >= 1")
    names = name or [f"supernode-{i}" for i in range(count)]
    for n in names:
        key = make_node_key(out, n, force=force)
        typer.echo(f"wrote {key.private_key} and {key.public_key}")


def main() -> None:
    """Entry point: errors become one line on stderr and exit status 1."""
    try:
        app(standalone_mode=False)
    except (ValueError, OSError) as e:
        typer.echo(f"make_certs: error: {e}", err=True)
        sys.exit(1)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
