"""`llamabrew` as torchrun starts it, with Python's audit hook recording every file this rank opens for writing,
creates, renames or deletes under $AUDIT_DIR (and every safetensors file it saves, which Rust writes): one line
per event, appended to $AUDIT_LOG.<rank> (outside that directory). tests/train/test_distributed.py reads the logs
to show that only rank 0 writes the run."""

from __future__ import annotations

import os
import sys

WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree", "os.symlink",
          "os.link", "shutil.copyfile", "shutil.move"}


def install(root: str, log: str) -> None:
    root = os.path.realpath(root)

    def inside(path: object) -> bool:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return False  # a file descriptor
        real = os.path.realpath(path)
        return real == root or real.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITES)
            hits = [path] if writing and inside(path) else []
        elif event in EVENTS:
            hits = [a for a in args[:2] if inside(a)]
        else:
            return
        for path in hits:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # outside root: the hook lets it pass
            os.write(fd, f"{event} {os.fsdecode(path) if isinstance(path, bytes) else path}\n".encode())
            os.close(fd)

    sys.addaudithook(hook)

    import safetensors.torch  # writes from Rust, unseen by the hook: recorded where Python hands it the path

    write_safetensors = safetensors.torch.save_file

    def save_file(tensors: object, filename: str, *args: object, **kwargs: object) -> None:
        hook("open", (str(filename), "wb", 0))
        write_safetensors(tensors, filename, *args, **kwargs)

    safetensors.torch.save_file = save_file  # before llamabrew, transformers and peft import it


if __name__ == "__main__":
    if os.environ.get("AUDIT_DIR"):
        install(os.environ["AUDIT_DIR"], f"{os.environ['AUDIT_LOG']}.{os.environ.get('RANK', '0')}")
    from llamabrew.cli import app

    app()
