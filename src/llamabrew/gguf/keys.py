"""GGUF metadata keys, declared once for the writer and the reader (as gguf-py does for llama.cpp's own).

Standard keys come from ``gguf.Keys``; these are llamabrew's additions, which stock llama.cpp ignores: the name
of the trained chat template (so a runtime can pick the same built-in format) and its stop strings.
"""

from __future__ import annotations

TEMPLATE_NAME = "llamabrew.template"
STOP_STRINGS = "llamabrew.stop"
