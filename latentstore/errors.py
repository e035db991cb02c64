"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""


class LatentstoreError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 1


class UsageError(LatentstoreError):
    """Bad arguments (a missing SRC, an unknown codec, ...): exit 2, like click's own usage errors."""

    exit_code = 2


class BadImageError(LatentstoreError):
    """An input file that is not a usable image. Conversion records it as a reject and goes on."""


class BitstreamError(LatentstoreError):
    """Bytes that are not a valid latentstore bitstream for the codec at hand."""


class StoreError(LatentstoreError):
    """A store that cannot be read, or one that fails verification."""


def first_line(e: BaseException, limit: int | None = None, with_type: bool = False) -> str:
    """An exception as the one line we log or raise: its first line (its type's name when it has no text),
    optionally 'Type: text', cut to `limit` characters."""
    text = f"{type(e).__name__}: {e}" if with_type else str(e)
    line = (text.splitlines() or ["?" if with_type else type(e).__name__])[0]
    return line[:limit] if limit is not None else line
