"""Instruction data: read and validate (`load_examples`), templates, and encoding for training.

Generation, translation, curation and conversion live in sibling modules (`generate`, `translate`, `curate`,
`convert`) and the `llamabrew data ...` commands.
"""

from llamabrew.data.formats import Example, Message, alpaca_example, find_duplicates, load_examples
from llamabrew.data.templates import BUILTIN, TEMPLATE_NAMES, Template, get_template

__all__ = ["BUILTIN", "TEMPLATE_NAMES", "Example", "Message", "Template", "alpaca_example", "find_duplicates",
           "get_template", "load_examples"]
