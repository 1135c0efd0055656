"""Config features this version can't serve yet, reported as config problems.

The config model already speaks the whole product vocabulary (DESIGN.md §3) so
that files written today keep working as features land. Until a feature
exists, asking for it is an error that says so, rather than a setting that is
silently ignored.
"""

from __future__ import annotations

from tlsgate.config.model import Config
from tlsgate.errors import ConfigProblem

_LATER = "is not available in this version of tlsgate"


def unsupported_features(config: Config) -> list[ConfigProblem]:
    """Every setting in ``config`` that this version would otherwise have to ignore."""
    src = str(config.source)
    problems: list[ConfigProblem] = []
    for i, bc in enumerate(config.backends):
        if bc.client_cert:
            problems.append(
                ConfigProblem(
                    src, f"backends[{i}].client_cert", f"upstream client certificates {_LATER}"
                )
            )
        if bc.discover:
            problems.append(
                ConfigProblem(src, f"backends[{i}].discover", f"agent self-registration {_LATER}")
            )
    return problems
