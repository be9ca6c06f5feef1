"""The GGUF file format and the llama.cpp runtime, below every stage that writes, reads or runs a GGUF.

``keys`` declares the metadata keys once (llama.cpp's standard ones come from ``gguf.Keys``; llamabrew's own
are here), ``writer`` and ``vocab`` write a file, ``reader`` reads its header, ``runtime`` loads it in
llama-cpp-python (with the build probe that keeps broken AMX kernels out of the way).
"""
