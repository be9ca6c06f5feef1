"""Running a model for people: terminal chat (`chat.chat_loop`), the OpenAI-compatible server (`server`'s
runtime, `api.create_app`, `registry` of served models) with its web page, and the `serve` command (`cli`).
Engines live below, in `llamabrew.engines`.

Nothing is imported here, so `llamabrew` starts fast; import the module you need.
"""
