"""Config base: frozen pydantic models that reject unknown keys and load from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from anatomist.core.errors import AnatomistError, nearest
from anatomist.core.io import atomic_write_text


class Config(BaseModel):
    """Base of every config: frozen, `extra="forbid"`, described fields, YAML in and out."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "config") -> Self:
        """Validate a dict; errors name the key (and the nearest valid key for a typo)."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise AnatomistError(_describe(cls, e, source)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        return cls.parse(read_yaml_mapping(path), source=str(path))

    def to_yaml(self, path: str | Path) -> None:
        atomic_write_text(Path(path), yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed, validated like a fresh config."""
        return self.parse({**self.model_dump(), **changes}, source=type(self).__name__)


def _describe(cls: type[BaseModel], err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            hint = nearest(str(e["loc"][-1]), _field_names(cls, e["loc"][:-1]), n=1)
            did = f" (did you mean '{hint[0]}'?)" if hint else ""
            parts.append(f"unknown key '{loc}'{did}")
        else:
            parts.append(f"key '{loc}': {e['msg']} (got {e.get('input')!r})")
    return f"{source}: " + "; ".join(parts)


def _field_names(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: Any = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing file, bad YAML or a non-mapping is an error naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise AnatomistError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise AnatomistError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise AnatomistError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data
