"""What every command shares: one-line errors with fixed exit codes, and options built from config dataclasses.

Exit codes: 0 success, 1 a data error (a bad file, store or bitstream), 2 a usage error (bad arguments,
unknown names: click's own convention), 130 interrupted.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import re
import sys

import click

from ..errors import LatentstoreError


def friendly(fn):
    """Turn our errors into `error: ...` and an exit code, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except LatentstoreError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            click.echo("error: out of memory", err=True)
            sys.exit(1)
        except OSError as e:  # disk full, permission denied, a vanished file: the system's words, one line
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            click.echo(f"error: {where}{e.strerror or e}", err=True)
            sys.exit(1)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:  # a bug of ours: still one line; LATENTSTORE_DEBUG=1 shows the traceback
            if os.environ.get("LATENTSTORE_DEBUG"):
                raise
            msg = str(e).splitlines()[0] if str(e) else ""
            click.echo(f"error: internal error: {type(e).__name__}: {msg} (set LATENTSTORE_DEBUG=1 for a traceback)",
                       err=True)
            sys.exit(1)
    return wrapper


_FIELD = re.compile(r"^\s+(\w+):[^#]*?#\s*(.+)$")


def field_comments(cls) -> dict[str, str]:
    """The comment after each field of a config dataclass: its help text, written once, in the code."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2).strip() for m in map(_FIELD.match, src.splitlines()) if m}


def dataclass_options(cls, skip: tuple = (), choices: dict | None = None):
    """A decorator adding one --option per field of `cls` (default and help from the dataclass)."""
    helps, choices = field_comments(cls), choices or {}
    instance = cls()

    def deco(fn):
        for f in reversed([f for f in dataclasses.fields(cls) if f.name not in skip]):
            default = getattr(instance, f.name)
            flag = f.name.replace("_", "-")
            if isinstance(default, bool):
                fn = click.option(f"--{flag}/--no-{flag}", f.name, default=default, show_default=True,
                                  help=helps.get(f.name, ""))(fn)
                continue
            typ = click.Choice(choices[f.name]) if f.name in choices else (type(default) if default is not None else str)
            fn = click.option(f"--{flag}", f.name, type=typ, default=default, show_default=True,
                              help=helps.get(f.name, ""))(fn)
        return fn
    return deco
