"""The benchmark: a load generator that plays the SIP trunk against Eko RTP (or the pjsua2
reference bot) on loopback and reports what a trunk would see. A tool beside the server:
the server package never imports it.
"""
