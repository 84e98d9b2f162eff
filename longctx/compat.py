"""The one module that knows which transformers is installed: names that moved between the
versions setup.cfg admits, so that model files read the same under all of them.

transformers 5.24 renamed the generation cache from `past_key_values` to `cache`: in forward
arguments, in `generate()`'s model inputs and in the output classes, where the old name became
a deprecated alias that logs a warning. longctx forwards accept both names under every
supported version; outputs hold the cache under the installed version's field name.
"""

from transformers.modeling_outputs import BaseModelOutputWithPast

# The field of transformers' output classes (and generate()'s keyword) that holds the cache.
CACHE_NAME = ("cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__
              else "past_key_values")


def given_cache(cache=None, past_key_values=None):
    """The cache a caller passed under either name; ValueError if it passed two different ones."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("Both cache and past_key_values were given; pass the cache once, as "
                         "cache= (transformers >= 5.24's name) or past_key_values= (the older "
                         "name).")
    return cache if cache is not None else past_key_values


def cache_field(cache) -> dict:
    """Keyword arguments that put `cache` into a transformers output under the installed name."""
    return {CACHE_NAME: cache}


def cache_of(output):
    """The cache held by a transformers output (None if it holds none), read without the
    deprecation warning the old attribute name logs from 5.24 on."""
    return getattr(output, CACHE_NAME, None)
