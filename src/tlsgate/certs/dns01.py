"""DNS-01 through RFC 2136 dynamic updates, signed with TSIG (RFC 8945).

How this works: the certificate manager publishes a dns-01 answer by calling
:meth:`Rfc2136Updater.add_txt` and takes it back with
:meth:`Rfc2136Updater.remove_txt`. Each call sends one UPDATE message for the
configured zone to the configured primary server, over TCP (no truncation, and
the usual transport for updates), with dnspython. The update touches exactly one
resource record:

- add: "add to an RRset" (RFC 2136 §2.5.1), TTL 60 s. Records already at the
  name stay, so the TXT values of ``example.com`` and ``*.example.com``, which
  share ``_acme-challenge.example.com``, can coexist while both are validated;
- remove: "delete an RR from an RRset" (§2.5.4), only the value we added.

With a TSIG key the update is signed, and dnspython checks the signature of the
answer too (an unsigned or badly signed answer is an error). Every failure --
no connection, no answer in time, an answer whose RCODE is not NOERROR, a
TSIG rejection -- becomes one :class:`~tlsgate.errors.CertificateError` naming
the server, the zone, the RCODE (and TSIG error) and what usually causes it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import socket

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update

from tlsgate.config.model import DnsUpdateConfig
from tlsgate.errors import CertificateError

log = logging.getLogger("tlsgate.certs")

TXT_TTL = 60  # seconds: the record lives minutes at most, and a short TTL limits caching
DEFAULT_TIMEOUT = 10.0  # seconds for connecting, sending and reading one update

# The config's algorithm names -> the names on the wire (RFC 8945 §6). HMAC-MD5
# keeps its historical name "HMAC-MD5.SIG-ALG.REG.INT".
_ALGORITHMS: dict[str, dns.name.Name] = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}

# What an RCODE of an update's answer usually means (RFC 2136 §2.2, RFC 8945 §5).
_RCODE_HINTS: dict[int, str] = {
    dns.rcode.REFUSED: (
        "the server does not allow this update: check its allow-update / update-policy "
        "for the zone, and that tlsgate signs with the key it names"
    ),
    dns.rcode.NOTAUTH: (
        "the server is not authoritative for the zone (is the zone name right, and is "
        "this the zone's primary server?)"
    ),
    dns.rcode.NOTZONE: "the record is not inside the zone",
    dns.rcode.SERVFAIL: "the server failed to apply the update; see its log",
    dns.rcode.FORMERR: "the server could not parse the update",
    dns.rcode.NOTIMP: "the server does not implement dynamic updates",
}

# dnspython raises these when the answer carries a TSIG error. RFC 8945 §5.2 has
# the server send them with RCODE NOTAUTH: "the server MUST generate an error
# response with RCODE 9 (NOTAUTH) and TSIG ERROR 17 (BADKEY)" (unknown key or
# algorithm), "... TSIG ERROR 16 (BADSIG)" (MAC mismatch), "... TSIG ERROR 18
# (BADTIME)" (clock skew beyond fudge), "... TSIG ERROR 22 (BADTRUNC)".
_TSIG_ERRORS: dict[type[dns.tsig.PeerError], tuple[str, str]] = {
    dns.tsig.PeerBadKey: (
        "BADKEY",
        "the server does not know the TSIG key name or algorithm "
        "(check tsig_key_name and tsig_algorithm against its key statement)",
    ),
    dns.tsig.PeerBadSignature: (
        "BADSIG",
        "the signature did not verify: tsig_secret differs from the server's secret",
    ),
    dns.tsig.PeerBadTime: (
        "BADTIME",
        "the server's clock and this machine's differ by more than the allowed fudge",
    ),
    dns.tsig.PeerBadTruncation: ("BADTRUNC", "the server rejected a truncated MAC"),
}


class Rfc2136Updater:
    """Adds and removes TXT records on an authoritative server with signed updates.

    Args:
        config: the ``[acme.dns]`` table: ``server`` ("host:port", "[v6]:port"),
            ``zone``, and optionally the TSIG key.
        timeout: seconds allowed for one update (connect, send, answer).
    """

    def __init__(self, config: DnsUpdateConfig, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.config = config
        self.timeout = timeout
        self.zone = dns.name.from_text(config.zone)
        self.host, self.port = _split_server(config.server)
        self._key: dns.tsig.Key | None = None
        if config.tsig_key_name:
            algorithm = _ALGORITHMS.get(config.tsig_algorithm.lower())
            if algorithm is None:
                raise CertificateError(
                    f"unknown TSIG algorithm {config.tsig_algorithm!r} in [acme.dns]; "
                    f"valid: {', '.join(_ALGORITHMS)}"
                )
            try:
                secret = base64.b64decode(config.tsig_secret, validate=True)
            except (binascii.Error, ValueError):
                raise CertificateError(
                    "the tsig_secret of [acme.dns] is not base64 (copy it from the key file)"
                ) from None
            self._key = dns.tsig.Key(config.tsig_key_name, secret, algorithm)

    def __repr__(self) -> str:
        # Never the secret (dnspython's Key repr shows it).
        key = f", key {self.config.tsig_key_name!r}" if self._key else ""
        return f"<Rfc2136Updater {self.config.server} zone {self.config.zone}{key}>"

    async def add_txt(self, fqdn: str, value: str) -> None:
        """Add ``fqdn TXT "value"`` (TTL 60), leaving other records at ``fqdn`` alone.

        Raises:
            CertificateError: ``fqdn`` is outside the zone, or the server could not be
                reached or did not apply the update.
        """
        name, rdata = self._record(fqdn, value)
        update = self._message()
        # RFC 2136 §2.5.1: "RRs are added to the Update Section whose NAME, TYPE,
        # TTL, RDLENGTH and RDATA are those being added, and CLASS is the same as
        # the zone class. Any duplicate RRs will be silently ignored by the
        # primary master."
        update.add(name, TXT_TTL, rdata)
        await self._send(update, f"adding TXT {value!r} at {name}")
        log.info("dns-01: added TXT %r at %s through %s", value, name, self.config.server)

    async def remove_txt(self, fqdn: str, value: str) -> None:
        """Delete exactly ``fqdn TXT "value"``; other values at ``fqdn`` stay.

        Deleting a record that is not there succeeds: "If no such RRs exist, then
        this Update RR will be silently ignored by the primary master" (RFC 2136 §2.5.4).

        Raises:
            CertificateError: as for :meth:`add_txt`.
        """
        name, rdata = self._record(fqdn, value)
        update = self._message()
        # RFC 2136 §2.5.4: "RRs to be deleted are added to the Update Section. The
        # NAME, TYPE, RDLENGTH and RDATA must match the RR being deleted. TTL must
        # be specified as zero (0) and will otherwise be ignored by the primary
        # master. CLASS must be specified as NONE".
        update.delete(name, rdata)
        await self._send(update, f"removing TXT {value!r} at {name}")
        log.info("dns-01: removed TXT %r at %s through %s", value, name, self.config.server)

    # ---- internals -----------------------------------------------------------------------------

    def _record(self, fqdn: str, value: str) -> tuple[dns.name.Name, dns.rdtypes.ANY.TXT.TXT]:
        try:
            name = dns.name.from_text(fqdn)
        except dns.exception.DNSException as exc:
            raise CertificateError(f"{fqdn!r} is not a DNS name: {exc}") from exc
        # The server would answer NOTZONE (RFC 2136 §3.4.1.3, update prescan: a
        # record whose name is outside the zone section's zone); say so before asking.
        if not name.is_subdomain(self.zone):
            raise CertificateError(
                f"the dns-01 record {fqdn} is outside the zone {self.config.zone} that "
                f"[acme.dns] updates at {self.config.server}: set acme.dns.zone to a zone "
                f"that contains it"
            )
        data = value.encode()
        if len(data) > 255:
            # RFC 1035 §3.3: a <character-string> is at most 255 octets.
            raise CertificateError(f"TXT value for {fqdn} is longer than 255 bytes")
        rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [data])
        return name, rdata

    def _message(self) -> dns.update.UpdateMessage:
        update = dns.update.UpdateMessage(self.zone)
        if self._key is not None:
            update.use_tsig(self._key)
        return update

    def _fail(self, what: str, problem: str) -> CertificateError:
        return CertificateError(
            f"DNS update to {self.config.server} for zone {self.config.zone} failed "
            f"({what}): {problem}"
        )

    async def _addresses(self, what: str) -> list[str]:
        """The server's addresses: itself when it is an IP, else what the resolver says."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            pass
        else:
            return [self.host]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except OSError as exc:
            raise self._fail(what, f"cannot resolve {self.host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise self._fail(what, f"{self.host} has no address")
        return addresses

    async def _send(self, update: dns.update.UpdateMessage, what: str) -> None:
        addresses = await self._addresses(what)
        for i, where in enumerate(addresses):
            try:
                response = await dns.asyncquery.tcp(
                    update, where, timeout=self.timeout, port=self.port
                )
            except dns.exception.Timeout as exc:
                # Not retried on the next address: the update may have been applied.
                raise self._fail(what, f"no answer from {where} within {self.timeout:g}s") from exc
            except dns.tsig.PeerError as exc:
                tsig_error, hint = _TSIG_ERRORS.get(type(exc), ("?", str(exc)))
                raise self._fail(
                    what,
                    f"rcode NOTAUTH, TSIG error {tsig_error} for key "
                    f"{self.config.tsig_key_name!r}: {hint}",
                ) from exc
            except dns.exception.DNSException as exc:
                # e.g. an unsigned or wrongly signed answer to a signed update, or garbage
                raise self._fail(what, f"unusable answer from {where}: {exc}") from exc
            except OSError as exc:
                if i + 1 < len(addresses):
                    # a host name with several addresses (localhost: 127.0.0.1 and ::1)
                    log.debug("dns-01: %s unreachable (%s); trying the next address", where, exc)
                    continue
                raise self._fail(what, f"cannot talk to the server: {exc}") from exc
            rcode = response.rcode()
            if rcode != dns.rcode.NOERROR:
                hint = _RCODE_HINTS.get(rcode, "the server did not apply the update")
                raise self._fail(what, f"rcode {dns.rcode.to_text(rcode)}: {hint}")
            return


def _split_server(server: str) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or ``"host"`` (port 53) -> (host, port).

    Raises:
        CertificateError: the text is none of these.
    """
    host, port = server, 53
    if server.startswith("["):
        inner, sep, rest = server[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise CertificateError(f"acme.dns.server {server!r} is not '[IPv6]:PORT'")
        host, port_text = inner, rest[1:]
    elif server.count(":") == 1:
        host, _, port_text = server.partition(":")
    else:  # a host alone, or a bare IPv6 address
        return server, 53
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            raise CertificateError(f"acme.dns.server {server!r} has a bad port") from None
    if not host or not 0 < port < 65536:
        raise CertificateError(f"acme.dns.server {server!r} is not 'HOST:PORT'")
    return host, port
