"""Eko RTP: a trio-based SIP/RTP media server that speaks cached and live audio."""

__version__ = "0.1.0"
