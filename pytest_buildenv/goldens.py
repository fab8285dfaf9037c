"""The session's golden VMs and the clones made from them.

A golden VM is provisioned at most once per content (and cached across
sessions, see backends/vm.py); each test gets a clone. With
`reset="snapshot"` a process keeps its clone between tests and restores it
to its boot snapshot instead of making a new one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .config import VMSettings
from .errors import ConfigError
from .naming import Owner
from .sharing import SharedState

if TYPE_CHECKING:
    from .backends.base import BuildEnv
    from .backends.vm import GoldenVM, VMClone


class Goldens:
    def __init__(self, shared: SharedState, owner: Owner, progress: Callable[[str], None] = lambda line: None) -> None:
        self.shared = shared
        self.owner = owner
        self.progress = progress
        self._goldens: dict[tuple[str, str], GoldenVM] = {}
        self._idle: dict[str, Any] = {}  # reset="snapshot": this process's clone between tests, by box

    def golden_for(self, settings: VMSettings) -> GoldenVM:
        """The golden VM for these settings, provisioned at most once per content (across sessions too)."""
        from .backends.vm import GoldenVM

        if settings.vagrantfile is None:
            raise ConfigError("no Vagrantfile for the vm kind; pass @pytest.mark.vm(vagrantfile=...), "
                              "vm: vagrantfile: in buildenv.yaml, or --vagrantfile")
        key = (str(settings.vagrantfile), settings.provider)
        if key not in self._goldens:  # hashing the Vagrantfile's directory once per session is enough
            golden = GoldenVM(settings.vagrantfile, self.shared.directory, provider=settings.provider,
                              progress=self.progress)
            record = self.shared.get_or_create(f"golden-{golden.hash[:16]}", lambda: {
                "type": "golden", "box": golden.ensure(), "provisioned": golden.provisioned_now})
            golden.provisioned_now = bool(record["provisioned"] and record["created_here"])
            golden.owner = self.owner
            self._goldens[key] = golden
        return self._goldens[key]

    def open(self, settings: VMSettings, workspace: Path, test: str) -> VMClone:
        from .backends.vm import VMClone

        golden = self.golden_for(settings)
        if settings.reset == "snapshot" and golden.box in self._idle:
            clone: VMClone = self._idle.pop(golden.box)
            clone.reset(workspace)
            return clone
        clone = VMClone(golden.box, workspace, self.shared.directory, self.owner, test=test,
                        environment=settings.environment, timeout=settings.timeout,
                        boot_timeout=settings.boot_timeout)
        if settings.reset == "snapshot":
            clone.save_boot_snapshot()
            clone.reusable = True
        return clone

    def close(self, env: BuildEnv) -> None:
        """Destroy a clone, or keep a reusable one for this process's next test."""
        if getattr(env, "reusable", False):
            self._idle[getattr(env, "box")] = env
        else:
            env.close()

    def close_idle(self) -> None:
        while self._idle:
            self._idle.popitem()[1].close()
