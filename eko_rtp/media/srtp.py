"""SRTP and SRTCP (RFC 3711, RFC 7714) for one call, on libsrtp through pylibsrtp.

Theory of operation: a :class:`CallSrtp` is made from the :class:`SrtpKeys` that
SDES negotiated (``media/sdes.py``) and holds two libsrtp contexts: an outbound
one keyed with our master key (any SSRC we send), an inbound one keyed with the
peer's (any SSRC it sends; libsrtp makes a stream per SSRC only once a packet
under it has authenticated). Each context protects or checks both RTP and RTCP:
libsrtp derives the SRTCP session keys from the same master (RFC 3711 §4.3).

The packet layouts this module cares about (RFC 3711 §3.1 and §3.4, RFC 7714
§8.1 and §9.1; the MKI only when the peer's key has one)::

    SRTP,  AES-CM:  RTP header | encrypted payload | MKI | tag (10 or 4 octets)
    SRTP,  AEAD:    RTP header | encrypted payload + tag (16)      | MKI
    SRTCP, AES-CM:  RTCP header | encrypted | E+index (4) | MKI | tag (10)
    SRTCP, AEAD:    RTCP header | encrypted + tag (16) | E+index (4) | MKI

The MKI is outside the authenticated portion in every case, so a peer key with a
fixed MKI is handled here: the MKI is compared with the negotiated one and cut
out while the datagram is copied into libsrtp's buffer, and libsrtp (keyed
without MKI, which pylibsrtp cannot configure) checks the rest.

Copies and allocations: libsrtp transforms a packet in place in a buffer with
room for the trailer, so the plaintext is copied into a buffer once whatever
we do. pylibsrtp's ``Session.protect`` takes only ``bytes``, so a call would
first join the cached frame's header and payload into a new ``bytes``, then copy
them into its buffer, then copy the result out into another new ``bytes``. Here
the contexts are driven through pylibsrtp's own cffi binding (``pylibsrtp.ffi``
and ``pylibsrtp.lib``, the layer its classes wrap) so that :meth:`protect_frame`
writes the preallocated header and the memoryview of the cached audio straight
into a send buffer and hands back a memoryview of the result for ``sendto``: no
``bytes`` object per packet on the send path. Inbound, :meth:`unprotect_view`
copies the datagram in once and hands back a (writable) memoryview of the
plaintext in place; :meth:`unprotect` copies it out into a new ``bytes`` for a
caller that keeps the packet. Per packet this costs one cffi call and no cffi
object: the session pointers, the buffers and their length cells are made once.

The buffers are per thread, not per call: the server is single-threaded and
every packet is protected or unprotected and handed on synchronously, so one
send buffer and one receive buffer serve every call (two buffers of
:data:`_BUFFER_SIZE` less per call, and the one buffer stays in the CPU's cache).
The price is that a view is valid only until the next ``protect*`` (send buffer)
or ``unprotect*`` (receive buffer) on the same thread, by any call: hand it to
``sendto`` at once, or read it before returning and copy what is kept (the
reorder buffer copies writable buffers, see ``media/reorder.py``). A
:class:`CallSrtp` takes the buffers of the thread that makes it: use it there
(the server's calls all live on the event loop's thread).
The figures are in docs/BENCHMARKS.md (``python -m eko_bench.srtp_measure``).

Failures: a packet that fails authentication, a replayed one (RFC 3711 §3.3.2:
its index already seen, or older than the replay window), one with the wrong
MKI and one too short or too long to be SRTP are dropped: the ``unprotect*``
methods return ``None`` and count the drop by :class:`DropReason`, per call and
in the optional server-wide :class:`SrtpCounters`. Nothing from the network
raises. A failure to protect is our own bug (a packet too long) or an exhausted
key (2^48 packets): :class:`SrtpError`.

Keys: a context must never be made twice from the same master key for the same
direction while the first may have sent (the second would restart the rollover
counter and reuse the keystream, RFC 3711 §9.1). Keep the :class:`CallSrtp` as
long as :attr:`CallSrtp.keys` is unchanged (``sdes.choose_answer(previous=...)``
keeps the keys across a re-INVITE that does not rekey); make a new one only for
new keys.
"""

from __future__ import annotations

import enum
import threading

from pylibsrtp import ERRORS, ffi, lib

from eko_rtp.media.sdes import CryptoSuite, SrtpKeys

__all__ = ["SrtpError", "DropReason", "SrtpCounters", "CallSrtp", "MAX_PACKET", "SUITE_PROFILES"]

MAX_PACKET = 2048  # the receive hub's datagram size (media/receiver.py MAX_DATAGRAM)
_RTP_HEADER = 12
_RTCP_HEADER = 8
_SRTCP_INDEX = 4
# libsrtp writes at most this past the plaintext: a 16-octet tag, the SRTCP index
# and an MKI of up to 128 octets (pylibsrtp's SRTP_MAX_SRTCP_TRAILER_LEN).
_TRAILER_ROOM = 16 + _SRTCP_INDEX + 128
_BUFFER_SIZE = MAX_PACKET + _TRAILER_ROOM

SUITE_PROFILES = {
    CryptoSuite.AES_CM_128_HMAC_SHA1_80: lib.srtp_profile_aes128_cm_sha1_80,
    CryptoSuite.AES_CM_128_HMAC_SHA1_32: lib.srtp_profile_aes128_cm_sha1_32,
    CryptoSuite.AEAD_AES_128_GCM: lib.srtp_profile_aead_aes_128_gcm,
}

# libsrtp's srtp_err_status_t (include/srtp.h; pylibsrtp.ERRORS is indexed by it).
_STATUS_OK = lib.srtp_err_status_ok
_STATUS_BAD_PARAM = 2
_STATUS_AUTH_FAIL = 7
_STATUS_CIPHER_FAIL = 8
_STATUS_REPLAY_FAIL = 9
_STATUS_REPLAY_OLD = 10
_STATUS_PARSE_ERR = 21
_STATUS_BAD_MKI = 25
_STATUS_PKT_IDX_OLD = 26


class SrtpError(Exception):
    """We could not protect a packet of ours, or libsrtp refused our keys."""


class DropReason(enum.Enum):
    AUTHENTICATION = "authentication"  # wrong tag: forged, corrupted, or keyed otherwise
    REPLAY = "replay"  # index already seen or older than the window
    MKI = "mki"  # not the MKI the peer's key was negotiated with
    MALFORMED = "malformed"  # too short or too long to be SRTP/SRTCP
    OTHER = "other"  # anything else libsrtp reports


_DROP_BY_STATUS = {
    _STATUS_AUTH_FAIL: DropReason.AUTHENTICATION,
    _STATUS_CIPHER_FAIL: DropReason.AUTHENTICATION,  # AEAD: the tag check is the decryption
    _STATUS_REPLAY_FAIL: DropReason.REPLAY,
    _STATUS_REPLAY_OLD: DropReason.REPLAY,
    _STATUS_PKT_IDX_OLD: DropReason.REPLAY,
    _STATUS_BAD_PARAM: DropReason.MALFORMED,
    _STATUS_PARSE_ERR: DropReason.MALFORMED,
    _STATUS_BAD_MKI: DropReason.MKI,
}


class SrtpCounters:
    """Server-wide SRTP drops (read by metrics): ``rtp[reason]``, ``rtcp[reason]``."""

    def __init__(self) -> None:
        self.rtp = dict.fromkeys(DropReason, 0)
        self.rtcp = dict.fromkeys(DropReason, 0)


def _status_text(status: int) -> str:
    return ERRORS[status] if 0 <= status < len(ERRORS) else f"libsrtp status {status}"


class _Buffer:
    """A packet buffer libsrtp transforms in place, with its length cell (``int *``)."""

    __slots__ = ("buffer", "view", "length")

    def __init__(self) -> None:
        self.buffer = ffi.new("unsigned char[]", _BUFFER_SIZE)
        self.view = memoryview(ffi.buffer(self.buffer))
        self.length = ffi.new("int *")


_thread = threading.local()


def _thread_buffers() -> tuple[_Buffer, _Buffer]:
    """This thread's (send, receive) buffers, shared by all its calls (see above)."""
    buffers = getattr(_thread, "buffers", None)
    if buffers is None:
        buffers = _thread.buffers = (_Buffer(), _Buffer())
    return buffers


def _session(*, suite: CryptoSuite, master: bytes, outbound: bool, window: int):
    """One libsrtp session (``srtp_t``) for one direction: its owning ``srtp_t *``."""
    profile = SUITE_PROFILES[suite]
    policy = ffi.new("srtp_policy_t *")  # zeroed: no next policy, default options
    for set_profile, crypto_policy in (
        (lib.srtp_crypto_policy_set_from_profile_for_rtp, policy.rtp),
        (lib.srtp_crypto_policy_set_from_profile_for_rtcp, policy.rtcp),
    ):
        status = set_profile(ffi.addressof(crypto_policy), profile)
        if status != _STATUS_OK:
            raise SrtpError(f"libsrtp cannot run {suite.value}: {_status_text(status)}")
    key = ffi.new("unsigned char[]", len(master))
    key[0:len(master)] = master
    policy.key = key
    policy.ssrc.type = lib.ssrc_any_outbound if outbound else lib.ssrc_any_inbound
    policy.window_size = window
    srtp = ffi.new("srtp_t *")
    status = lib.srtp_create(srtp, policy)
    # libsrtp derived its session keys from the master: wipe our C copy of it.
    key[0:len(master)] = bytes(len(master))
    if status != _STATUS_OK:
        raise SrtpError(f"libsrtp refused the {suite.value} keys: {_status_text(status)}")
    return ffi.gc(srtp, _dealloc)


def _dealloc(srtp) -> None:
    lib.srtp_dealloc(srtp[0])


# The four per-packet functions, looked up once (a ``lib`` attribute is a lookup per call).
_protect = lib.srtp_protect
_protect_rtcp = lib.srtp_protect_rtcp
_unprotect = lib.srtp_unprotect
_unprotect_rtcp = lib.srtp_unprotect_rtcp
# What a closed CallSrtp passes for its sessions: cffi refuses it (TypeError), where
# None would pass as NULL into libsrtp, or a kept pointer would reach freed memory.
_CLOSED = object()


class CallSrtp:
    """One call's SRTP: an outbound context with our key, an inbound one with the peer's."""

    __slots__ = ("keys", "rtp_drops", "rtcp_drops", "counters", "_owners", "_send_session", "_receive_session",
                 "_send", "_receive", "_mki", "_rtp_trailing", "_rtcp_trailing", "_rtp_minimum", "_rtcp_minimum")

    def __init__(self, keys: SrtpKeys, *, counters: SrtpCounters | None = None):
        if not isinstance(keys, SrtpKeys):
            raise TypeError(f"keys must be SrtpKeys, not {type(keys).__name__}")
        suite = keys.suite
        self.keys = keys
        self.counters = counters
        self.rtp_drops = dict.fromkeys(DropReason, 0)
        self.rtcp_drops = dict.fromkeys(DropReason, 0)
        outbound = _session(suite=suite, master=keys.send_master, outbound=True, window=keys.replay_window)
        inbound = _session(suite=suite, master=keys.receive_master, outbound=False, window=keys.replay_window)
        self._owners: tuple | None = (outbound, inbound)  # freeing them frees the sessions
        # The srtp_t values, read once: ``owner[0]`` would make a cdata object per packet.
        self._send_session = outbound[0]
        self._receive_session = inbound[0]
        self._send, self._receive = _thread_buffers()
        self._mki = keys.receive_mki.octets if keys.receive_mki is not None else None
        # What follows the MKI (see the layouts above): the tag for AES-CM, nothing for AEAD.
        self._rtp_trailing = 0 if suite.is_aead else suite.rtp_tag_length
        self._rtcp_trailing = 0 if suite.is_aead else suite.rtcp_tag_length
        mki_length = len(self._mki) if self._mki is not None else 0
        self._rtp_minimum = _RTP_HEADER + suite.rtp_tag_length + mki_length
        self._rtcp_minimum = _RTCP_HEADER + suite.rtcp_tag_length + _SRTCP_INDEX + mki_length

    # -- sending -----------------------------------------------------------------

    def protect_frame(self, header, payload) -> memoryview:
        """SRTP of ``header`` + ``payload`` (any buffers), as a view of the thread's send buffer.

        The view is valid until the next ``protect*`` call on this thread (any
        call's): hand it to ``sendto`` at once, never keep it.
        """
        send = self._send
        view = send.view
        header_length = len(header)
        total = header_length + len(payload)
        if total > MAX_PACKET:
            raise SrtpError(f"an RTP packet of {total} octets exceeds {MAX_PACKET}")
        view[:header_length] = header
        view[header_length:total] = payload
        length = send.length
        length[0] = total
        status = _protect(self._send_session, send.buffer, length)
        if status:
            raise SrtpError(f"cannot protect an RTP packet: {_status_text(status)}")
        return view[: length[0]]

    def protect(self, packet) -> bytes:
        """SRTP of a whole RTP packet (bytes, bytearray or memoryview), as new ``bytes``."""
        return bytes(self.protect_frame(packet, b""))

    def protect_rtcp(self, packet) -> bytes:
        """SRTCP of a (compound) RTCP packet, as new ``bytes``."""
        send = self._send
        total = len(packet)
        if total > MAX_PACKET:
            raise SrtpError(f"an RTCP packet of {total} octets exceeds {MAX_PACKET}")
        send.view[:total] = packet
        length = send.length
        length[0] = total
        status = _protect_rtcp(self._send_session, send.buffer, length)
        if status:
            raise SrtpError(f"cannot protect an RTCP packet: {_status_text(status)}")
        return bytes(send.view[: length[0]])

    # -- receiving ---------------------------------------------------------------

    def unprotect_view(self, datagram) -> memoryview | None:
        """The RTP packet inside an SRTP datagram as a view of the thread's receive
        buffer, or None (counted in :attr:`rtp_drops`).

        The view is writable and valid until the next ``unprotect*`` on this thread
        (any call's): read it now, copy what is kept (or use :meth:`unprotect`).
        """
        receive = self._receive
        view = receive.view
        length = receive.length
        total = len(datagram)
        if self._mki is None and self._rtp_minimum <= total <= MAX_PACKET:
            view[:total] = datagram  # the common case inline: no MKI to cut out
            length[0] = total
            reason = None
        else:
            reason = self._load(datagram, self._rtp_minimum, self._rtp_trailing)
        if reason is None:
            status = _unprotect(self._receive_session, receive.buffer, length)
            if not status:
                return view[: length[0]]
            reason = _DROP_BY_STATUS.get(status, DropReason.OTHER)
        self.rtp_drops[reason] += 1
        if self.counters is not None:
            self.counters.rtp[reason] += 1
        return None

    def unprotect(self, datagram) -> bytes | None:
        """The RTP packet inside an SRTP datagram as new ``bytes``, or None (counted in
        :attr:`rtp_drops`)."""
        packet = self.unprotect_view(datagram)
        return bytes(packet) if packet is not None else None

    def unprotect_rtcp(self, datagram) -> bytes | None:
        """The RTCP packet inside an SRTCP datagram, or None (counted in :attr:`rtcp_drops`)."""
        reason = self._load(datagram, self._rtcp_minimum, self._rtcp_trailing)
        if reason is None:
            receive = self._receive
            status = _unprotect_rtcp(self._receive_session, receive.buffer, receive.length)
            if not status:
                return bytes(receive.view[: receive.length[0]])
            reason = _DROP_BY_STATUS.get(status, DropReason.OTHER)
        self.rtcp_drops[reason] += 1
        if self.counters is not None:
            self.counters.rtcp[reason] += 1
        return None

    def _load(self, datagram, minimum: int, trailing: int) -> DropReason | None:
        """Copy ``datagram`` into the receive buffer, its MKI checked and cut out."""
        total = len(datagram)
        if not minimum <= total <= MAX_PACKET:
            return DropReason.MALFORMED
        receive = self._receive
        view = receive.view
        mki = self._mki
        if mki is None:
            view[:total] = datagram
            receive.length[0] = total
            return None
        mki_end = total - trailing
        mki_start = mki_end - len(mki)
        if datagram[mki_start:mki_end] != mki:
            return DropReason.MKI
        view[:mki_start] = datagram[:mki_start]
        view[mki_start: mki_start + trailing] = datagram[mki_end:]
        receive.length[0] = mki_start + trailing
        return None

    def close(self) -> None:
        """Free both sessions now (libsrtp zeroes its keys); the object is unusable after."""
        owners, self._owners = self._owners, None
        self._send_session = self._receive_session = _CLOSED
        if owners is not None:
            for owner in owners:
                ffi.release(owner)  # runs _dealloc now, which zeroes libsrtp's keys
