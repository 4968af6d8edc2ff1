"""One call's SDP offer/answer across its INVITE and re-INVITEs (RFC 3264), sans I/O.

Theory of operation: a call's media is agreed by offer and answer, and may be
agreed again any number of times (hold, resume, a codec change, a moved address)
by re-INVITEs, each of which may carry an offer or leave the offer to us (RFC 3261
§14.2: then our 2xx carries the offer and the ACK the answer). :class:`MediaSession`
keeps what that takes, which the shell would otherwise keep in loose fields: our
origin line (one session id for the whole call, a version that grows by one
exactly when our description changes, RFC 3264 §8), our last description, the
plan in force, and whether an offer of ours awaits its answer.

The states and what moves them, one table (``TRANSITIONS``):

- ``IDLE`` → the INVITE: with an offer we answer it (``ACTIVE``); without one we
  offer (``OFFERED``) and the ACK answers.
- ``OFFERED`` → the ACK's answer: ``ACTIVE``; an ACK without one leaves the call
  without a media plan it can send to, still ``ACTIVE``, (RFC 3264 §4 makes the
  answer mandatory; we do not end a call over it).
- ``ACTIVE`` → a re-INVITE with an offer: answered, ``ACTIVE``; without one:
  our new offer, ``OFFERED``.
- any state → an input the table lacks: ``ERROR`` and :class:`NegotiationError`
  (a shell bug, not bad input: bad SDP from the network raises
  :class:`~eko_rtp.media.sdp.SdpError` with the status to answer, and leaves the
  state as it was, RFC 3264 §8: a rejected re-offer keeps the old session).

The codec of a call stays the one first chosen while the peer keeps offering it
(a re-INVITE for hold must not flip PCMA to PCMU).

SRTP with SDES keys (RFC 4568), by the server's :class:`~eko_rtp.media.sdes.SrtpPolicy`:

- which offers are acceptable: ``off`` takes RTP/AVP only (as before SRTP);
  ``optional`` takes what the offer asks, RTP/AVP in clear or RTP/SAVP encrypted;
  ``required`` takes RTP/SAVP only. Once a call is encrypted, a re-offer must stay
  RTP/SAVP: a re-INVITE may not turn the encryption off (a downgrade).
- keys travel in the SDP in the clear, so they are taken (and sent) only when the
  INVITE came over TLS (RFC 4568 §8.3), unless the policy allows insecure
  signalling. The dialog's transport is the INVITE's for its whole life: a
  re-INVITE comes back over the same connection.
- the answer keeps the keys in force across a re-offer that still holds the
  attribute we accepted (``sdes.choose_answer(previous=...)``), so a hold or a
  resume leaves the SRTP contexts, their rollover counters and replay windows alone
  (``media/srtp.py``: never two contexts from one key for one direction).
- when we offer (an INVITE or a re-INVITE without SDP), the offer is RTP/SAVP with
  fresh keys if the call is already encrypted or the policy is ``required``, and
  the ACK's answer must accept one of our attributes.

Every refusal is :class:`~eko_rtp.media.sdp.SdpError` 488 with a message saying
why, for the shell's response.
"""

from __future__ import annotations

import attrs

from eko_rtp.media import sdes, sdp
from eko_rtp.state_enum import StateEnum

__all__ = ["MediaSession", "Negotiated", "NegotiationError", "NegotiationInput", "NegotiationState", "TRANSITIONS"]


class NegotiationState(StateEnum):
    IDLE = "idle"  # nothing agreed yet
    OFFERED = "offered"  # our offer awaits its answer (in the ACK)
    ACTIVE = "active"  # an offer/answer exchange completed
    ERROR = "error"


class NegotiationInput(StateEnum):
    INVITE_WITH_OFFER = "INVITE with SDP"
    INVITE_WITHOUT_OFFER = "INVITE without SDP"
    ACK_WITH_ANSWER = "ACK with SDP"
    ACK_WITHOUT_ANSWER = "ACK without SDP"
    REINVITE_WITH_OFFER = "re-INVITE with SDP"
    REINVITE_WITHOUT_OFFER = "re-INVITE without SDP"


_S, _I = NegotiationState, NegotiationInput
TRANSITIONS: dict[tuple[NegotiationState, NegotiationInput], NegotiationState] = {
    (_S.IDLE, _I.INVITE_WITH_OFFER): _S.ACTIVE,
    (_S.IDLE, _I.INVITE_WITHOUT_OFFER): _S.OFFERED,
    (_S.OFFERED, _I.ACK_WITH_ANSWER): _S.ACTIVE,
    (_S.OFFERED, _I.ACK_WITHOUT_ANSWER): _S.ACTIVE,
    (_S.ACTIVE, _I.ACK_WITHOUT_ANSWER): _S.ACTIVE,  # the ACK of a 2xx that answered their offer
    (_S.ACTIVE, _I.REINVITE_WITH_OFFER): _S.ACTIVE,
    (_S.ACTIVE, _I.REINVITE_WITHOUT_OFFER): _S.OFFERED,
}


class NegotiationError(Exception):
    """An input the offer/answer state does not allow: a bug in the caller of this module."""


@attrs.frozen(kw_only=True)
class Negotiated:
    """The result of one step: the plan the media shell applies, and what we send."""

    plan: sdp.MediaPlan
    body: bytes  # our SDP for the 2xx (answer or offer); empty for an ACK
    changed: bool  # whether ``plan`` differs from the plan in force before


# Until our offer is answered there is nowhere to send to (RFC 3264 §5: an offer
# only says where the offerer receives).
NO_MEDIA = sdp.MediaPlan(
    codec=sdp.Codec(name="PCMU", payload_type=0),
    telephone_event_payload_type=None,
    remote_rtp=None,
    remote_rtcp=None,
    rtcp_mux=False,
    send_audio=False,
    receive_audio=True,
)


# SRTP as it was before there was any: RTP/AVP only.
SRTP_OFF = sdes.SrtpPolicy(mode=sdes.SrtpMode.OFF)


class MediaSession:
    """Our side of one call's offer/answer; see the module's theory of operation."""

    def __init__(self, *, local_address: str, local_port: int, session_id: int, preferred_codec: str | None = None,
                 srtp: sdes.SrtpPolicy = SRTP_OFF, signalling: str = "udp"):
        """``signalling`` is the transport the INVITE came over ("udp", "tcp" or "tls")."""
        if signalling not in ("udp", "tcp", "tls"):
            raise ValueError(f"signalling must be 'udp', 'tcp' or 'tls', not {signalling!r}")
        self.local_address = local_address
        self.local_port = local_port
        self.preferred_codec = preferred_codec
        self.srtp = srtp
        self.signalling = signalling
        self.origin = sdp.SdpOrigin(session_id=session_id, version=1, address=local_address)
        self.state = NegotiationState.IDLE
        self.plan = NO_MEDIA
        self.local_body = b""
        self.crypto_answer: sdes.CryptoAnswer | None = None  # our a=crypto answer in force
        self.crypto_offer: sdes.CryptoOffer | None = None  # our a=crypto offer awaiting the ACK

    # -- inputs --------------------------------------------------------------------

    def invite(self, body: bytes | None) -> Negotiated:
        """The initial INVITE: our answer to its offer, or our offer when it had none."""
        if body:
            return self._answer(NegotiationInput.INVITE_WITH_OFFER, body, reoffer=False)
        return self._offer(NegotiationInput.INVITE_WITHOUT_OFFER, new_version=False)

    def reinvite(self, body: bytes | None) -> Negotiated:
        """A re-INVITE: our answer (origin version + 1 only if it changed), or a new offer."""
        if body:
            return self._answer(NegotiationInput.REINVITE_WITH_OFFER, body, reoffer=True)
        return self._offer(NegotiationInput.REINVITE_WITHOUT_OFFER, new_version=True)

    def ack(self, body: bytes | None) -> Negotiated | None:
        """The ACK: the answer to our offer, if we made one and it carries one.

        Returns None when nothing changes. Raises :class:`sdp.SdpError` for an
        unusable answer (an ACK cannot be refused: the shell hangs up).
        """
        if not body or self.state is not NegotiationState.OFFERED:
            self._move(NegotiationInput.ACK_WITHOUT_ANSWER)
            self.crypto_offer = None
            return None
        plan = sdp.apply_answer(sdp.parse_sdp_untrusted(body), crypto=self.crypto_offer)
        self._move(NegotiationInput.ACK_WITH_ANSWER)
        # We offered: the keys are ours and theirs from the exchange, no answer of ours is in force.
        self.crypto_offer = self.crypto_answer = None
        return self._take(plan, b"")

    # -- internals -----------------------------------------------------------------

    def _answer(self, event: NegotiationInput, body: bytes, *, reoffer: bool) -> Negotiated:
        self._check(event)
        offer = sdp.parse_sdp_untrusted(body)  # SdpError: the state stays (RFC 3264 §8)
        protocols, crypto = self._secure_answer(offer, reoffer=reoffer)
        if reoffer:
            # RFC 3264 §8: a changed description carries version + 1, an unchanged one the same.
            plan, answer, origin = sdp.negotiate_reanswer(
                offer, previous_answer=self.local_body, local_address=self.local_address,
                local_port=self.local_port, origin=self.origin, preferred_codec=self.plan.codec.name,
                protocols=protocols, crypto=crypto)
        else:
            plan, answer = sdp.negotiate_answer(offer, local_address=self.local_address, local_port=self.local_port,
                                                origin=self.origin, preferred_codec=self.preferred_codec,
                                                protocols=protocols, crypto=crypto)
            origin = self.origin
        self._move(event)
        self.origin = origin
        self.local_body = answer
        self.crypto_answer = crypto
        return self._take(plan, answer)

    def _secure_answer(
        self, offer: sdp.SessionDescription, *, reoffer: bool
    ) -> tuple[tuple[str, ...], sdes.CryptoAnswer | None]:
        """The profile of the stream we answer, and our crypto answer when it is RTP/SAVP."""
        mode = self.srtp.mode
        if reoffer and self.plan.srtp_keys is not None:
            acceptable = (sdp.SECURE_PROTOCOL,)
            refusal = "the call is encrypted (SRTP): a re-offer without an active RTP/SAVP audio stream is refused"
        elif mode is sdes.SrtpMode.REQUIRED:
            acceptable = (sdp.SECURE_PROTOCOL,)
            refusal = "media.srtp is required: the offer has no active RTP/SAVP audio stream"
        elif mode is sdes.SrtpMode.OFF:
            acceptable = (sdp.CLEAR_PROTOCOL,)
            refusal = "the offer's audio is RTP/SAVP (SRTP) and media.srtp is off"
        else:
            acceptable, refusal = (sdp.CLEAR_PROTOCOL, sdp.SECURE_PROTOCOL), None
        try:
            media = sdp.choose_audio_stream(offer, protocols=acceptable)
        except sdp.SdpError as error:
            # Say why when the offer has audio we could do under another policy.
            offered = {other.protocol for other in offer.media if other.media == "audio" and other.port != 0}
            if error.status != 488 or refusal is None or not offered & {sdp.CLEAR_PROTOCOL, sdp.SECURE_PROTOCOL}:
                raise
            raise sdp.SdpError(refusal, status=488) from None
        if media.protocol == sdp.CLEAR_PROTOCOL:
            return (sdp.CLEAR_PROTOCOL,), None
        if not self.srtp.keys_allowed_over(self.signalling):
            # RFC 4568 §8.3: whoever reads this signalling reads the keys. An RTP/AVP
            # stream later in the offer would do; else the offer is refused.
            if sdp.CLEAR_PROTOCOL in acceptable and any(
                    other.media == "audio" and other.protocol == sdp.CLEAR_PROTOCOL and other.port != 0
                    for other in offer.media):
                return (sdp.CLEAR_PROTOCOL,), None
            raise sdp.SdpError(self._insecure_refusal(), status=488)
        try:
            crypto = sdes.choose_answer(media.crypto, preference=self.srtp.preference, previous=self.crypto_answer)
        except sdes.SdesError as error:
            raise sdp.SdpError(f"SDP line {media.line}: {error}", status=error.status) from None
        return (sdp.SECURE_PROTOCOL,), crypto

    def _insecure_refusal(self) -> str:
        return (f"SDES keys over {self.signalling.upper()} refused (media.srtp_over_insecure_signalling is false):"
                " a=crypto keys travel only over TLS")

    def _offer(self, event: NegotiationInput, *, new_version: bool) -> Negotiated:
        self._check(event)
        crypto = None
        if self.plan.srtp_keys is not None or self.srtp.mode is sdes.SrtpMode.REQUIRED:
            if not self.srtp.keys_allowed_over(self.signalling):
                raise sdp.SdpError(self._insecure_refusal(), status=488)
            crypto = sdes.make_offer(preference=self.srtp.preference)  # fresh keys: a rekey
        if new_version:
            self.origin = self.origin.next_version()
        offer = sdp.build_offer(local_address=self.local_address, local_port=self.local_port, origin=self.origin,
                                crypto=crypto)
        self._move(event)
        self.local_body = offer
        self.crypto_offer = crypto
        # The plan in force stays until the answer comes (the first offer has none yet).
        return Negotiated(plan=self.plan, body=offer, changed=False)

    def _take(self, plan: sdp.MediaPlan, body: bytes) -> Negotiated:
        changed = plan != self.plan
        self.plan = plan
        return Negotiated(plan=plan, body=body, changed=changed)

    def _check(self, event: NegotiationInput) -> None:
        if (self.state, event) not in TRANSITIONS:
            self._fail(event)

    def _move(self, event: NegotiationInput) -> None:
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            self._fail(event)
        self.state = target

    def _fail(self, event: NegotiationInput) -> None:
        state = self.state
        self.state = NegotiationState.ERROR
        raise NegotiationError(f"offer/answer: {event.value} is not allowed in state {state.value}")
