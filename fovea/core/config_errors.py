"""How config mistakes are worded: one line per problem, the dotted key, the nearest valid name for a typo.

Used for the root config (``fovea.core.config``), each plugin's options and the audit's spec file.
"""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ValidationError


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str, prefix: str = "") -> str:
    """One line per problem: the dotted key, what is wrong, the nearest valid name for typos."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(([prefix] if prefix else []) + loc)
        if err["type"] == "extra_forbidden":
            parent = model_at(model, loc[:-1])
            lines.append(unknown_key_message(dotted, loc[-1], parent))
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{dotted}: {err['msg']}{shown}")
    return "\n".join(f"{source}: {line}" for line in lines)


def unknown_key_message(dotted: str, key: str, model: type[BaseModel] | None, what: str = "key") -> str:
    """``dotted: unknown key`` with the nearest field name of ``model`` (or the list of them)."""
    known = list(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else (f"; valid keys: {', '.join(known)}" if known else "")
    return f"{dotted}: unknown {what}{hint}"


def model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The nested model at the path ``loc`` below ``model``, or None where the path leaves the models."""
    for key in loc:
        field = model.model_fields.get(key)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model
