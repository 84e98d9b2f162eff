import logging
import os
import sys

import pytest

# The harness module sits next to the test files.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def transformers_log():
    """The messages transformers logs during a test (its logger does not propagate to pytest's
    caplog). `warning_once` remembers what it said for the whole process: its memo is cleared so
    that a warning an earlier test triggered shows again here. That memo is transformers'
    internal (`transformers.utils.logging.warning_once`, an lru_cache)."""
    from transformers.utils import logging as transformers_logging

    messages = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    root = logging.getLogger("transformers")
    transformers_logging.warning_once.cache_clear()
    root.addHandler(handler)
    try:
        yield messages
    finally:
        root.removeHandler(handler)
