"""Turning received RTP packets back into the µ-law byte stream a caller would play."""

from __future__ import annotations


def payload_audio(packets) -> bytes:
    """Payloads of PCMU packets in sequence order (duplicates dropped), as one byte string."""
    seen = {}
    first = packets[0].sequence if packets else 0
    for packet in packets:
        if packet.payload_type != 0:
            continue
        offset = (packet.sequence - first) & 0xFFFF
        seen.setdefault(offset, packet.payload)
    return b"".join(seen[key] for key in sorted(seen))
