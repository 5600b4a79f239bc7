"""The NATS conventions of every connecting ``disco`` command: TLS options, ``nats`` CLI contexts, ``-s``.

:func:`add_connection_options` gives every registered command that takes ``--nats`` (whichever module defines
it) the same extra options, so they are declared once, here:

- ``--tlscert FILE``, ``--tlskey FILE``, ``--tlsca FILE`` (``DISCO_TLS_CERT``/``DISCO_TLS_KEY``/``DISCO_TLS_CA``,
  then the ``nats`` CLI's ``NATS_CERT``/``NATS_KEY``/``NATS_CA``): a client certificate and the CA that signed
  the server's; they become one :class:`ssl.SSLContext` passed to :func:`bus.connect` (``tls=``);
- ``--context NAME`` (``DISCO_CONTEXT``, then ``NATS_CONTEXT``): the ``nats`` CLI context
  ``~/.config/nats/context/NAME.json`` (``$XDG_CONFIG_HOME`` honoured) gives the URL, credentials file and TLS
  files that are not given otherwise (``url``, ``creds``, ``user``/``password``, ``token``, ``cert``/``key``/``ca``);
- ``-s`` as a short alias of ``--nats``/``--server`` when the command does not use ``-s`` already.

Precedence, highest first: the command line, ``DISCO_*`` variables, ``NATS_URL`` (for the URL), the context, the
default ``nats://127.0.0.1:4222``. Problems (a missing context, unreadable TLS files) are usage errors: one line,
exit 2, before anything connects.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import os
import ssl
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["ConnExtras", "add_connection_options", "context_path", "current", "read_context", "ssl_context"]


@dataclass(slots=True)
class ConnExtras:
    """What the extra options decided, for :class:`services.cli.common.NatsOptions` to use when connecting."""

    tls: ssl.SSLContext | None = None
    #: connect options from a context (user/password, token)
    options: dict[str, Any] = field(default_factory=dict)


_current = ConnExtras()


def current() -> ConnExtras:
    """The extras of the command being run (empty outside a command)."""
    return _current


def context_path(name: str) -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "nats" / "context" / f"{name}.json"


def read_context(name: str) -> dict[str, str]:
    """The fields of the ``nats`` CLI context ``name`` (non-empty strings only); BadParameter if unusable."""
    if not name or "/" in name or name.startswith("."):
        raise typer.BadParameter(f"invalid context name {name!r}", param_hint="'--context'")
    path = context_path(name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise typer.BadParameter(f"no nats context {name!r} ({path} does not exist)", param_hint="'--context'") \
            from None
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read nats context {path}: {exc}", param_hint="'--context'") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"nats context {path} is not a JSON object", param_hint="'--context'")
    return {k: os.path.expanduser(v) if k in ("creds", "cert", "key", "ca") else v
            for k, v in data.items() if isinstance(v, str) and v}


def ssl_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext | None:
    """A client TLS context (None when no TLS file is given); BadParameter for unusable files."""
    if cert is None and key is None and ca is None:
        return None
    if (cert is None) != (key is None):
        raise typer.BadParameter("give both --tlscert and --tlskey (or neither)", param_hint="'--tlscert'")
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise typer.BadParameter(f"cannot load the CA {ca}: {exc}", param_hint="'--tlsca'") from None
    if cert is not None and key is not None:
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise typer.BadParameter(f"cannot load {cert} with {key}: {exc}", param_hint="'--tlscert'") from None
    return ctx


def _file_option(name: str, env: str, nats_env: str, what: str) -> Any:
    return Annotated[
        Path | None,
        typer.Option(name, envvar=[env, nats_env], metavar="FILE", dir_okay=False, exists=True, readable=True,
                     help=what, show_envvar=True),
    ]


_EXTRA: dict[str, Any] = {
    "context_name": Annotated[
        str | None,
        typer.Option("--context", envvar=["DISCO_CONTEXT", "NATS_CONTEXT"], metavar="NAME",
                     help="A `nats` CLI context (~/.config/nats/context/NAME.json): URL, credentials, TLS."),
    ],
    "tlscert": _file_option("--tlscert", "DISCO_TLS_CERT", "NATS_CERT", "TLS client certificate (PEM)."),
    "tlskey": _file_option("--tlskey", "DISCO_TLS_KEY", "NATS_KEY", "TLS client key (PEM)."),
    "tlsca": _file_option("--tlsca", "DISCO_TLS_CA", "NATS_CA", "CA certificate(s) to verify the server (PEM)."),
}


def _option_names(hints: dict[str, Any]) -> set[str]:
    """Every option name (``--tlsca``, ``-s``...) declared by the ``Annotated`` hints."""
    names: set[str] = set()
    for hint in hints.values():
        for meta in getattr(hint, "__metadata__", ()):
            names.update(getattr(meta, "param_decls", None) or ())
    return names


def _uses_short_s(hints: dict[str, Any]) -> bool:
    return "-s" in _option_names(hints)


def _with_short_s(hint: Any) -> Any:
    """``hint`` (the ``--nats`` Annotated option) with ``-s`` added to its names."""
    base, *metas = typing.get_args(hint)
    new = []
    for meta in metas:
        decls = getattr(meta, "param_decls", None)
        if decls is not None and "-s" not in decls:
            meta = copy.copy(meta)
            meta.param_decls = (*decls, "-s")
        new.append(meta)
    return Annotated[(base, *new)]


def _wrap(func: Callable[..., Any]) -> Callable[..., Any]:
    hints = typing.get_type_hints(func, include_extras=True)
    sig = inspect.signature(func)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]
    if not _uses_short_s({k: v for k, v in hints.items() if k != "nats"}):
        params = [p.replace(annotation=_with_short_s(p.annotation)) if p.name == "nats" else p for p in params]
    taken = _option_names(hints) | set(sig.parameters)
    extra = {name: hint for name, hint in _EXTRA.items()
             if name not in taken and not _option_names({name: hint}) & taken}
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=hint, default=None)
             for name, hint in extra.items()]
    ctx_param = inspect.Parameter("_disco_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx: typer.Context = kwargs.pop("_disco_ctx")
        # an option the command declares itself (same name) is left to it
        context_name = kwargs.pop("context_name") if "context_name" in extra else None
        cert, key, ca = (kwargs.pop(n) if n in extra else None for n in ("tlscert", "tlskey", "tlsca"))
        context = read_context(context_name) if context_name else {}
        source = ctx.get_parameter_source("nats")
        if context.get("url") and (source is None or source.name in ("DEFAULT", "DEFAULT_MAP")):
            kwargs["nats"] = context["url"]
        if "creds" in kwargs and kwargs["creds"] is None and context.get("creds"):
            path = Path(context["creds"])
            if not path.is_file():
                raise typer.BadParameter(f"the credentials file of context {context_name!r} does not exist: {path}",
                                         param_hint="'--context'")
            kwargs["creds"] = path
        cert = cert or (Path(context["cert"]) if context.get("cert") else None)
        key = key or (Path(context["key"]) if context.get("key") else None)
        ca = ca or (Path(context["ca"]) if context.get("ca") else None)
        global _current
        options: dict[str, Any] = {}
        if context.get("user") and not kwargs.get("creds"):
            options["user"], options["password"] = context["user"], context.get("password", "")
        if context.get("token") and not kwargs.get("creds"):
            options["token"] = context["token"]
        _current = ConnExtras(tls=ssl_context(cert, key, ca), options=options)
        return func(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*params, *added, ctx_param])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**hints, **extra, "_disco_ctx": typer.Context}
    wrapper.__annotations__["nats"] = next(p.annotation for p in params if p.name == "nats")
    return wrapper


def add_connection_options(app: typer.Typer) -> None:
    """Give every registered command of ``app`` that takes ``nats`` the options of this module."""
    for info in app.registered_commands:
        func = info.callback
        if func is None or getattr(func, "_disco_conn", False):
            continue
        if "nats" not in inspect.signature(func).parameters:
            continue
        wrapped = _wrap(func)
        wrapped._disco_conn = True  # type: ignore[attr-defined]
        info.callback = wrapped
