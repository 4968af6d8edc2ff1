"""Live TTS: text spoken into a call as 160-byte µ-law frames while it is synthesised.

Modules: ``settings`` (:class:`TtsSettings`), ``errors`` (:class:`TtsError` and its
kinds), ``framer`` (sans-I/O frame assembly), ``dynamic_cache`` (completed renders on
disk, content-addressed, LRU), ``accounting`` (characters, cost, hit ratio),
``backend`` (the synthesiser seam), ``elevenlabs`` and ``espeak`` (the two backends),
``elevenlabs_api`` (the ElevenLabs HTTP API as data: requests, failures, retry policy)
and ``elevenlabs_client`` (its trio shell, the one client of that API, shared with
``eko-rtp cache build``), ``engine`` (:class:`TtsEngine`, what a call uses). Nothing is imported here, so the
sans-I/O modules stay importable without trio or httpx.
"""
