"""Small signals a device gives away with every HTTPS answer: its clock and its certificate's end.

* The HTTP ``Date`` header (RFC 7231 section 7.1.1.2) is stamped by the device's own clock when
  it answers. Whether Yealink bars send a trustworthy one is not documented (ASSUMED); a device
  that sends none simply yields no clock reading.
* The peer certificate's ``notAfter`` comes from the DER the TLS handshake presented (the same
  bytes the TOFU pin hashes).

Pure functions, no I/O: the transport calls them with what it saw.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from cryptography import x509

#: the Date header counts whole seconds: the device's clock was somewhere in [Date, Date + 1 s)
DATE_RESOLUTION_S = 1.0


def parse_http_date(value: str | None) -> datetime | None:
    """Parse an HTTP ``Date`` header (IMF-fixdate, or the obsolete RFC 850 / asctime forms).

    Returns a timezone-aware UTC datetime, or None for a missing or unreadable header. A date
    without a zone (asctime) is UTC, as RFC 7231 says every HTTP date is.
    """
    if not value or not value.strip():
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def clock_offset_s(date_header: str | None, sent_at: float, received_at: float) -> float | None:
    """How far the device's clock is ahead of ours (negative: behind), from one answer's ``Date``.

    ``sent_at``/``received_at`` are our wall-clock (:func:`time.time`) readings just before the
    request left and when its headers arrived. The device stamped the header somewhere in that
    round trip, so its reading is compared with the round trip's midpoint; the header's whole
    seconds are truncated, so half a second is added back. The estimate is good to about
    ±(0.5 s + round trip / 2): far below any sensible skew threshold.
    """
    device = parse_http_date(date_header)
    if device is None or received_at < sent_at:
        return None
    midpoint = (sent_at + received_at) / 2
    return device.timestamp() + DATE_RESOLUTION_S / 2 - midpoint


def cert_not_after(der: bytes | None) -> datetime | None:
    """The ``notAfter`` of a DER-encoded X.509 certificate (UTC), or None when it does not parse."""
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        return cert.not_valid_after_utc
    except ValueError:
        return None
