"""Exceptions raised by the data layer."""


class DataNotFoundError(FileNotFoundError):
    """No local file and no Hub copy of a dataset split could be read; the message names every place tried."""


class DataFormatError(ValueError):
    """A data or tokenizer file exists but cannot be used (empty, not UTF-8, corrupt); the message names it."""


class TokenizerMismatchError(ValueError):
    """A tokenizer differs from the one the ids were made with; the message names where."""
