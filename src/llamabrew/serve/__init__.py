"""Running a model: engines (`engines.TorchEngine`, `llamacpp.LlamaCppEngine`), terminal chat (`chat.chat_loop`)
and the OpenAI-compatible server with its web page (`server.serve`, `api.create_app`).

Nothing is imported here, so `llamabrew` starts fast; import the module you need.
"""
