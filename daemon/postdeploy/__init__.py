"""postdeploy: a post-deploy production monitor."""

__version__ = "0.1.0"

# Here rather than in `config` so that `postdeploy --help` can name it without importing
# the config's models (pydantic).
DEFAULT_CONFIG_PATH = "/etc/postdeploy/config.toml"
