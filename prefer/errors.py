"""The one error type users see: a clear message naming the file, line or field. The CLI exits 2 on it."""


class PreferError(Exception):
    """Bad input or configuration. The message names the offending file, line or field."""
