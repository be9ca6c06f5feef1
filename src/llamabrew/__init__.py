"""llamabrew: make your own instruction-following chat model and run it anywhere.

The stages are importable on their own: ``llamabrew.data``, ``llamabrew.train``, ``llamabrew.evaluate``,
``llamabrew.export`` and ``llamabrew.serve``; the ``llamabrew`` command is a thin layer over them.
"""

__version__ = "0.1.0"
