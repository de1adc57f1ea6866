"""postdeploy: a post-deploy production monitor."""

__version__ = "0.1.0"
