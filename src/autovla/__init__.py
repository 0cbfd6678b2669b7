"""autovla: end-to-end driving with a vision-language-action model (AutoVLA)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("autovla")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"
