"""What every command shares: one-line errors with fixed exit codes, and options built from config dataclasses
(built when a command first needs them, so starting the CLI imports neither torch nor numpy).

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


def dataclass_option_list(cls, skip: tuple = (), choices: dict | None = None) -> list[click.Option]:
    """One click.Option per field of `cls`, in field order (default and help from the dataclass). A value of
    `choices` is a list, or a function returning one (called here, so a heavy module is imported only now)."""
    helps, choices = field_comments(cls), choices or {}
    instance = cls()
    options = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = getattr(instance, f.name)
        flag = f.name.replace("_", "-")
        if isinstance(default, bool):
            options.append(click.Option([f"--{flag}/--no-{flag}", f.name], default=default, show_default=True,
                                        help=helps.get(f.name, "")))
            continue
        if f.name in choices:
            names = choices[f.name]
            typ = click.Choice(list(names() if callable(names) else names))
        else:
            typ = type(default) if default is not None else str
        options.append(click.Option([f"--{flag}", f.name], type=typ, default=default, show_default=True,
                                    help=helps.get(f.name, "")))
    return options


class _DeferredOptions:
    """A placeholder in a LazyOptionsCommand's params, replaced by `build()`'s options when first needed."""

    def __init__(self, build):
        self.build = build  # () -> list[click.Parameter], in help order


class LazyOptionsCommand(click.Command):
    """A command whose dataclass options are built the first time its parameters are read (parsing its
    arguments, its --help, completion), not when the CLI is imported: the dataclasses live in modules that
    import torch, and `latentstore --help` or `latentstore upload` should not pay for that."""

    @property
    def params(self) -> list:
        params = self.__dict__["_lazy_params"]
        if any(isinstance(p, _DeferredOptions) for p in params):
            params[:] = [q for p in params for q in (p.build() if isinstance(p, _DeferredOptions) else [p])]
        return params

    @params.setter
    def params(self, value: list) -> None:
        self.__dict__["_lazy_params"] = value


def dataclass_options(load_cls, skip: tuple = (), choices: dict | None = None):
    """A decorator adding one --option per field of the dataclass `load_cls()` returns (it imports the
    dataclass's module, often a torch-importing one): the options are built on first use, so the command
    must be made with cls=LazyOptionsCommand."""
    def deco(fn):
        if not hasattr(fn, "__click_params__"):
            fn.__click_params__ = []
        fn.__click_params__.append(_DeferredOptions(lambda: dataclass_option_list(load_cls(), skip, choices)))
        return fn
    return deco


def deferred_choice_option(*decls: str, choices, **kw):
    """One click option whose choices come from `choices()` (a function importing a heavy module) when the
    command's parameters are first read: a name added to that module is accepted without editing the CLI.
    The command must be made with cls=LazyOptionsCommand."""
    def deco(fn):
        if not hasattr(fn, "__click_params__"):
            fn.__click_params__ = []
        fn.__click_params__.append(_DeferredOptions(
            lambda: [click.Option(list(decls), type=click.Choice(list(choices())), **kw)]))
        return fn
    return deco
