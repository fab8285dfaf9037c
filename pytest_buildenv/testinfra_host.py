"""`env.host`: a testinfra Host bound to an environment (the `testinfra` extra).

One testinfra backend serves every kind: its commands go through the
environment's own `run()` (docker exec, SSH, subprocess), so the host sees what
the build sees, as the user the build runs as, on any engine, and its commands
appear in the transcript of a failing test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .handle import BuildEnv


def host_for(env: BuildEnv) -> Any:
    """A testinfra.host.Host whose commands run in `env`."""
    try:
        from testinfra.backend.base import BaseBackend, CommandResult
        from testinfra.host import Host
    except ImportError:
        raise ConfigError("env.host needs testinfra; pip install 'pytest-buildenv[testinfra]'") from None

    class BuildEnvBackend(BaseBackend):  # type: ignore[misc]
        NAME = "buildenv"

        def __init__(self, env: BuildEnv, **kwargs: Any) -> None:
            super().__init__(env.kind, **kwargs)
            self.env = env

        def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
            cmd = self.get_command(command, *args)  # quoted, and wrapped in sudo where testinfra asks
            result = self.env.run(["/bin/sh", "-c", cmd])
            return self.result(result.exit_code, self.encode(cmd), result.stdout, result.stderr)

    return Host(BuildEnvBackend(env))
