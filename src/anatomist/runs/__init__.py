"""The application layer: run kinds over the library lenses, one `run(config, out)`, the demo.

Importing this package registers every kind. A new capability adds a module here with a config class
and an `execute` function under `@register`, and a line below.
"""

from anatomist.runs import (  # noqa: F401  (each module registers its kinds on import)
    agents,
    autointerp,
    bilinear,
    dashboard,
    demo,
    dictionaries,
    dictionaries_experiments,
    features,
    lm_mlp,
    localise,
    mechanisms,
    regions,
    routes,
    saebench,
    sites,
    spd_lm,
    spd_vision,
    steer,
    stress,
    sweep,
    tokens,
    toys,
)
from anatomist.runs.base import (
    KINDS,
    Context,
    Outcome,
    RunConfig,
    RunResult,
    get_kind,
    load_run_config,
    parse_run_config,
    register,
    run,
)

__all__ = [
    "KINDS",
    "Context",
    "Outcome",
    "RunConfig",
    "RunResult",
    "get_kind",
    "load_run_config",
    "parse_run_config",
    "register",
    "run",
]
