"""pytest-buildenv: throwaway build environments for pytest.

The classes here work without pytest; `pytest_buildenv.plugin` is a thin layer
over them. Importing this package imports neither docker, kubernetes nor
vagrant: each kind imports its tooling when an environment is first made.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    BackendUnavailable,
    BuildCommandError,
    BuildEnvError,
    ClusterError,
    CommandTimeout,
    ConfigError,
    EngineNotAnswering,
    ImageBuildError,
    VMError,
)
from .result import Artifact, Result, Transcript

__all__ = [
    "Artifact",
    "BackendUnavailable",
    "BuildCommandError",
    "BuildEnvError",
    "ClusterError",
    "CommandTimeout",
    "ConfigError",
    "EngineNotAnswering",
    "ImageBuildError",
    "Result",
    "Transcript",
    "VMError",
    "__version__",
]
