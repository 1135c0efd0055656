"""The ACME client side (RFC 8555, RFC 8737 TLS-ALPN-01, RFC 8738 IP identifiers, RFC 9773 ARI).

A leaf package: it speaks to an ACME server and computes challenge answers,
and knows nothing of listeners, stores or schedules (``tlsgate.certs`` drives
it). Written on httpx + cryptography rather than certbot's ``acme`` package,
which is synchronous, no longer ships TLS-ALPN-01 helpers and cannot send
RFC 9773's ``replaces``.

- :mod:`.client`: :class:`AcmeClient` and the ACME objects it returns;
- :mod:`.challenges`: key authorizations, http-01 / dns-01 / tls-alpn-01
  answers, CSRs;
- :mod:`.ari`: certIDs, renewal windows, the fallback renewal rule;
- :mod:`.jws`: JWS signing, JWK thumbprints, external account binding;
- :mod:`.errors`: the ``AcmeError`` subtree.
"""

from tlsgate.acme.ari import (
    RenewalInfo,
    ari_cert_id,
    choose_renewal_time,
    default_renewal_time,
)
from tlsgate.acme.challenges import (
    ACME_TLS_ALPN_PROTOCOL,
    ID_PE_ACME_IDENTIFIER,
    dns01_record_name,
    dns01_txt_value,
    http01_response,
    key_authorization,
    make_csr,
    tls_alpn01_certificate,
    tls_alpn01_server_name,
)
from tlsgate.acme.client import (
    Account,
    AcmeClient,
    Authorization,
    Challenge,
    Directory,
    Order,
)
from tlsgate.acme.errors import (
    AcmeConnectionError,
    AcmeError,
    AcmeProblem,
    AcmeProtocolError,
    AcmeTimeout,
    Identifier,
)

__all__ = [
    "ACME_TLS_ALPN_PROTOCOL",
    "ID_PE_ACME_IDENTIFIER",
    "Account",
    "AcmeClient",
    "AcmeConnectionError",
    "AcmeError",
    "AcmeProblem",
    "AcmeProtocolError",
    "AcmeTimeout",
    "Authorization",
    "Challenge",
    "Directory",
    "Identifier",
    "Order",
    "RenewalInfo",
    "ari_cert_id",
    "choose_renewal_time",
    "default_renewal_time",
    "dns01_record_name",
    "dns01_txt_value",
    "http01_response",
    "key_authorization",
    "make_csr",
    "tls_alpn01_certificate",
    "tls_alpn01_server_name",
]
