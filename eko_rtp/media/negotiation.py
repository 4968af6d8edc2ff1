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
"""

from __future__ import annotations

import enum

import attrs

from eko_rtp.media import sdp

__all__ = ["MediaSession", "Negotiated", "NegotiationError", "NegotiationInput", "NegotiationState", "TRANSITIONS"]


class NegotiationState(enum.Enum):
    IDLE = "idle"  # nothing agreed yet
    OFFERED = "offered"  # our offer awaits its answer (in the ACK)
    ACTIVE = "active"  # an offer/answer exchange completed
    ERROR = "error"


class NegotiationInput(enum.Enum):
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


class MediaSession:
    """Our side of one call's offer/answer; see the module's theory of operation."""

    def __init__(self, *, local_address: str, local_port: int, session_id: int, preferred_codec: str | None = None):
        self.local_address = local_address
        self.local_port = local_port
        self.preferred_codec = preferred_codec
        self.origin = sdp.SdpOrigin(session_id=session_id, version=1, address=local_address)
        self.state = NegotiationState.IDLE
        self.plan = NO_MEDIA
        self.local_body = b""

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
            return None
        plan = sdp.apply_answer(sdp.parse_sdp_untrusted(body))
        self._move(NegotiationInput.ACK_WITH_ANSWER)
        return self._take(plan, b"")

    # -- internals -----------------------------------------------------------------

    def _answer(self, event: NegotiationInput, body: bytes, *, reoffer: bool) -> Negotiated:
        self._check(event)
        offer = sdp.parse_sdp_untrusted(body)  # SdpError: the state stays (RFC 3264 §8)
        if reoffer:
            # RFC 3264 §8: a changed description carries version + 1, an unchanged one the same.
            plan, answer, origin = sdp.negotiate_reanswer(
                offer, previous_answer=self.local_body, local_address=self.local_address,
                local_port=self.local_port, origin=self.origin, preferred_codec=self.plan.codec.name)
        else:
            plan, answer = sdp.negotiate_answer(offer, local_address=self.local_address, local_port=self.local_port,
                                                origin=self.origin, preferred_codec=self.preferred_codec)
            origin = self.origin
        self._move(event)
        self.origin = origin
        self.local_body = answer
        return self._take(plan, answer)

    def _offer(self, event: NegotiationInput, *, new_version: bool) -> Negotiated:
        self._check(event)
        if new_version:
            self.origin = self.origin.next_version()
        offer = sdp.build_offer(local_address=self.local_address, local_port=self.local_port, origin=self.origin)
        self._move(event)
        self.local_body = offer
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
