"""Configuration: TOML in, a frozen validated model out (see ``model``).

``load_config`` reads and validates a file; ``parse_config`` does the same for
text. Both raise :class:`tlsgate.errors.ConfigError` listing every problem.
"""

from tlsgate.config.loader import (
    DEFAULT_CONFIG_PATH,
    default_config_path,
    load_config,
    parse_config,
)
from tlsgate.config.model import Config

__all__ = ["DEFAULT_CONFIG_PATH", "Config", "default_config_path", "load_config", "parse_config"]
