"""`vm`: a golden Vagrant VM provisioned once, and throwaway copy-on-write clones of it.

GoldenVM brings the user's Vagrantfile up once with its provisioners and
freezes it into a box named after the content hash of the Vagrantfile's
directory and base box: an unchanged Vagrantfile is never provisioned twice,
across sessions too. VMClone is a new Vagrant machine from that box, booted
without provisioning; libvirt gives it a qcow2 overlay on the golden volume
(VirtualBox a linked clone), so a clone costs a boot, not a copy.

Commands run over SSH with one reused connection per clone (ControlMaster);
files move by scp. Vagrant is driven by python-vagrant (the `vm` extra), which
runs the vagrant CLI with argument lists.

`Goldens` is the kind's session-wide manager: a golden VM per Vagrantfile,
provisioned at most once per content, and a clone per test. With
`reset="snapshot"` a process keeps its clone between tests and restores it to
its boot snapshot instead of making a new one.

The modules: `vagrant` (the vagrant CLI, what a Vagrantfile defines, installed boxes), `libvirt`
(labelled domains, pool volumes), `golden` (GoldenVM and the cache of golden boxes), `clone` (VMClone);
this one holds the kind: its settings, the manager, the check and the leftovers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Optional
from collections.abc import Iterator, Mapping

from ...errors import ConfigError
from ...handle import BuildEnv
from ...errors import Check
from ...naming import LABEL_SESSION, Labelled
from ...registry import KindSpec, SessionEnd, TestInfo
from ...services import Services
from ...settings import CommonSettings, SettingError
from .clone import VMClone
from .golden import GoldenVM, _golden_records, golden_leftovers, goldens_held, installed_goldens, prune_goldens, remove_golden
from .libvirt import DESCRIPTION_MARK, LABEL_BOX, _box_volumes, destroy_domain, domain_names, labelled_domains
from .vagrant import _vagrant, box_dir, log_cause, vagrant_home

# What other code (the plugin, the tests, the benchmarks) imports from here.
__all__ = [
    "DESCRIPTION_MARK", "KIND", "LABEL_BOX", "GoldenVM", "Goldens", "VMClone", "VMSettings", "_box_volumes",
    "_golden_records", "_vagrant", "box_dir", "check", "domain_names", "installed_goldens", "labelled_domains", "leftovers",
    "log_cause", "prune_goldens", "remove_golden", "vagrant_home",
]


@dataclass(frozen=True)
class VMSettings(CommonSettings):
    vagrantfile: Optional[Path] = None  # the golden VM's Vagrantfile (its directory holds the provisioners)
    machine: Optional[str] = None  # which machine of a multi-machine Vagrantfile (one machine: that one)
    inputs: tuple[str, ...] = ()  # more files that provision it (globs beside the Vagrantfile)
    provider: str = "libvirt"
    boot_timeout: float = 600
    reset: Literal["destroy", "snapshot"] = "destroy"  # snapshot: one clone per process, restored between tests

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vagrantfile is not None and not self.vagrantfile.is_file():
            raise SettingError("vagrantfile", f"Vagrantfile {self.vagrantfile} not found; fix vagrantfile= "
                                              "(or --vagrantfile)")


def leftovers(services: Services, session: Optional[str]) -> Iterator[Labelled]:
    """libvirt domains whose description carries our labels (clones of golden VMs)."""
    for name, labels in labelled_domains():
        if session is None or labels.get(LABEL_SESSION) == session:
            yield Labelled("vm", name, name, labels, partial(destroy_domain, name))
    if session is None:  # a reaper's scan, not a session's own sweep
        yield from golden_leftovers()


# --- the session-wide manager ------------------------------------------------------------
class Goldens:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._goldens: dict[tuple[str, ...], GoldenVM] = {}
        self._idle: dict[str, VMClone] = {}  # reset="snapshot": this process's clone between tests, by box

    def golden_for(self, settings: VMSettings) -> GoldenVM:
        """The golden VM for these settings, provisioned at most once per content (across sessions too)."""
        if settings.vagrantfile is None:
            raise ConfigError("no Vagrantfile for the vm kind; pass @pytest.mark.vm(vagrantfile=...), "
                              "vm: vagrantfile: in buildenv.yaml, or --vagrantfile")
        key = (str(settings.vagrantfile), settings.provider, settings.machine or "", ",".join(settings.inputs))
        if key not in self._goldens:  # hashing the Vagrantfile's directory once per session is enough
            shared = self.services.shared
            golden = GoldenVM(settings.vagrantfile, shared.directory, provider=settings.provider,
                              progress=self.services.progress, machine=settings.machine, inputs=settings.inputs)
            golden.keep = int(self.services.ini.get("buildenv_golden_keep") or 2)
            record = shared.get_or_create(f"golden-{golden.hash[:16]}", lambda: {
                "type": "golden", "box": golden.ensure(), "provisioned": golden.provisioned_now})
            golden.provisioned_now = bool(record["provisioned"] and record["created_here"])
            golden.owner = self.services.owner
            self._goldens[key] = golden
        return self._goldens[key]

    def open(self, settings: VMSettings, workspace: Path, test: TestInfo) -> VMClone:
        golden = self.golden_for(settings)
        if settings.reset == "snapshot" and golden.box in self._idle:
            clone = self._idle.pop(golden.box)
            clone.reset(workspace)
            return clone
        clone = VMClone(golden.box, workspace, self.services.shared.directory, self.services.owner,
                        test=test.nodeid, environment=settings.environment, timeout=settings.timeout,
                        boot_timeout=settings.boot_timeout).start()
        if settings.reset == "snapshot":
            clone.save_boot_snapshot()
            clone.reusable = True
        return clone

    def close(self, env: BuildEnv) -> None:
        """Destroy a clone, or keep a reusable one for this process's next test."""
        if isinstance(env, VMClone) and env.reusable:
            self._idle[env.box] = env
        else:
            env.close()

    def describe_kept(self, env: BuildEnv) -> str:
        assert isinstance(env, VMClone)
        return f"vm {env.domain}: ssh -t -F {env.ssh_config} default 'cd {env.workdir} && exec $SHELL -l'"

    def finish(self, end: SessionEnd) -> None:
        while self._idle:
            self._idle.popitem()[1].close()


def check(services: Services, defaults: Mapping[str, Any]) -> Check:
    """vagrant, a provider plugin, a reachable libvirt, and python-vagrant."""
    kvm = ("/dev/kvm accessible" if os.access("/dev/kvm", os.R_OK | os.W_OK)
           else "/dev/kvm not accessible (QEMU runs under TCG)")
    if shutil.which("vagrant") is None:
        return Check(False, "`vagrant` not found on PATH", "apt-get install vagrant vagrant-libvirt "
                     "libvirt-daemon-system qemu-system-x86 (or install Vagrant and a provider)")
    version = subprocess.run(["vagrant", "--version"], capture_output=True, text=True).stdout.strip()
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True).stdout
    if "vagrant-libvirt" not in plugins:
        return Check(False, "no Vagrant provider: vagrant-libvirt is not installed",
                     "apt-get install vagrant-libvirt (or vagrant plugin install vagrant-libvirt)")
    probe = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no answer"])[-1]
        return Check(False, f"libvirt unreachable at qemu:///system ({reason})",
                     "start libvirtd (and virtlogd), and be root or in the libvirt group")
    try:
        import vagrant  # noqa: F401
    except ImportError:
        return Check(False, "python-vagrant is missing", "pip install 'pytest-buildenv[vm]'")
    return Check(True, f"{version}; vagrant-libvirt; libvirt qemu:///system reachable; {kvm}")


KIND = KindSpec(settings=VMSettings, manager=Goldens, check=check, leftovers=leftovers, inventory=goldens_held)
