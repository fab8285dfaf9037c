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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Optional
from collections.abc import Iterator, Mapping

from ..errors import BuildCommandError, ConfigError, VMError, tail
from ..events import emit
from ..handle import BuildEnv
from ..naming import LABEL_SESSION, Owner
from ..registry import Check, KindSpec, Services, SessionEnd, TestInfo
from ..result import FileInfo
from ..settings import CommonSettings
import contextlib

if TYPE_CHECKING:
    from ..reaper import Labelled


@dataclass(frozen=True)
class VMSettings(CommonSettings):
    vagrantfile: Optional[Path] = None  # the golden VM's Vagrantfile (its directory holds the provisioners)
    machine: Optional[str] = None  # which machine of a multi-machine Vagrantfile (one machine: that one)
    inputs: tuple[str, ...] = ()  # more files that provision it (globs beside the Vagrantfile)
    provider: str = "libvirt"
    boot_timeout: float = 600
    reset: Literal["destroy", "snapshot"] = "destroy"  # snapshot: one clone per process, restored between tests

WORKDIR = PurePosixPath("/home/vagrant/work")
DESCRIPTION_MARK = "pytest-buildenv "  # libvirt domain descriptions start with it, then JSON labels
_FRAME = re.compile(r"\.rb:\d+:in |^\s*from \S+\.rb:\d+")  # a Ruby backtrace frame: never the cause


def _vagrant(root: Path, log: Path, env: Optional[Mapping[str, str]] = None) -> Any:
    try:
        import vagrant
    except ImportError as exc:
        raise ConfigError("python-vagrant is missing; pip install 'pytest-buildenv[vm]'") from exc
    return vagrant.Vagrant(str(root), env={**os.environ, **(env or {})},
                           out_cm=vagrant.make_file_cm(str(log)), err_cm=vagrant.make_file_cm(str(log)))


def _fail(what: str, log: Path, hint: str = "") -> VMError:
    """The cause on the first line (libvirt's or Vagrant's error line, never a Ruby backtrace frame),
    the log's tail after it."""
    text = log.read_text(errors="replace") if log.exists() else ""
    text = "\n".join(line for line in text.splitlines() if "Progress:" not in line)
    return VMError(f"{what} failed: {log_cause(text)}{'; ' + hint if hint else ''}\n{tail(text)}")


_CAUSES = (re.compile(r"Call to vir\w+ failed: .*"),  # libvirt, as vagrant-libvirt quotes it
           re.compile(r"^(?:Error|ERROR)\b.*|.*\berror: .*", re.MULTILINE))


def log_cause(text: str) -> str:
    """The line that says why: libvirt's first error, else the last error line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _FRAME.search(line)]
    found = _CAUSES[0].search(text)
    if found:
        return found.group(0).strip()[:400]
    errors = [line for line in lines if _CAUSES[1].match(line)]
    return (errors or lines or ["no output"])[-1][:400]


def vagrant_home() -> Path:
    return Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))


# Asks Vagrant itself what a Vagrantfile says (variables, ENV, config.vm.define and all): each machine's
# box and the files its provisioners name. Run by the Ruby that runs Vagrant.
_PROBE = r"""
require "vagrant"
require "json"
begin
  env = Vagrant::Environment.new(cwd: ARGV[0], vagrantfile_name: ARGV[1], local_data_path: ARGV[2],
                                 ui_class: Vagrant::UI::Silent)
  env.vagrantfile
rescue Vagrant::Errors::VagrantError => e
  puts JSON.generate({error: e.message})
  exit 2
end
keys = %i[path source playbook inventory_path config_file galaxy_role_file]
machines = env.machine_names.map do |name|
  vm = env.vagrantfile.machine_config(name, nil, nil, nil)[:config].vm
  files = vm.provisioners.flat_map do |p|
    keys.select { |k| p.config.respond_to?(k) }.map { |k| p.config.send(k) }
  end
  {name: name.to_s, box: vm.box, box_version: vm.box_version.to_s,
   files: files.reject { |f| f.nil? || f == Vagrant::Plugin::V2::Config::UNSET_VALUE }.map(&:to_s)}
end
puts JSON.generate(machines)
"""


@dataclass(frozen=True)
class Machine:
    """One machine of a Vagrantfile, as Vagrant evaluates it."""

    name: str
    box: str
    box_version: str
    files: tuple[str, ...]  # what its provisioners name, as written (relative to the Vagrantfile's directory)


def vagrant_ruby() -> str:
    """The Ruby that runs Vagrant: its launcher's interpreter (Debian's), or the installer's embedded one."""
    launcher = shutil.which("vagrant")
    if launcher:
        first = Path(launcher).read_bytes()[:200].split(b"\n", 1)[0].decode(errors="replace")
        if first.startswith("#!") and "ruby" in first:
            return first[2:].split()[0]
    embedded = Path("/opt/vagrant/embedded/bin/ruby")
    return str(embedded) if embedded.exists() else "ruby"


def machines_of(vagrantfile: Path) -> list[Machine]:
    """What Vagrant makes of the Vagrantfile; a Vagrantfile Vagrant refuses is one line naming why."""
    with tempfile.TemporaryDirectory(prefix="buildenv-vagrant-probe-") as scratch:  # not a .vagrant beside it
        proc = subprocess.run([vagrant_ruby(), "-e", _PROBE, str(vagrantfile.parent), vagrantfile.name, scratch],
                              capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        try:
            said = str(json.loads(proc.stdout)["error"])
        except (ValueError, KeyError, TypeError):
            said = proc.stderr
        raise ConfigError(f"Vagrant cannot evaluate {vagrantfile}: {_vagrant_words(said)}; "
                          "`vagrant validate` there says more")
    return [Machine(m["name"], m["box"] or "", m["box_version"], tuple(m["files"])) for m in json.loads(proc.stdout)]


def _vagrant_words(text: str) -> str:
    """Vagrant's "Message: ..." (and "Line number: ..."), else its first line that is no backtrace frame."""
    fields: dict[str, str] = dict(re.findall(r"^(Message|Line number): (.*)$", text, re.MULTILINE))
    if "Message" in fields:
        return fields["Message"] + (f" (line {fields['Line number']})" if "Line number" in fields else "")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _FRAME.search(line)]
    return (lines or ["no output"])[0][:300]


def choose_machine(vagrantfile: Path, machines: list[Machine], name: Optional[str]) -> Machine:
    names = [m.name for m in machines]
    if name is None and len(machines) == 1:
        chosen = machines[0]
    elif name is None:
        raise ConfigError(f"{vagrantfile} defines machines {', '.join(names)}; name one with machine= "
                          "(in the marker or the vm: section of buildenv.yaml)")
    elif name not in names:
        raise ConfigError(f"{vagrantfile} defines no machine {name!r}; it defines {', '.join(names)}")
    else:
        chosen = next(m for m in machines if m.name == name)
    if not chosen.box:
        raise ConfigError(f"machine {chosen.name!r} of {vagrantfile} has no config.vm.box; "
                          "the golden VM starts from a base box")
    return chosen


def box_dir(box: str, provider: str = "libvirt", version: str = "") -> Optional[Path]:
    """The installed box's directory (its newest version, unless one is named)."""
    found = sorted(vagrant_home().glob(f"boxes/{box.replace('/', '-VAGRANTSLASH-')}/{version or '*'}/{provider}"),
                   key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"[.-]", p.parent.name)])
    return found[-1] if found else None


def golden_inputs(vagrantfile: Path, machine: Machine, globs: tuple[str, ...] = ()) -> list[Path]:
    """What provisions the golden VM, beside the Vagrantfile: the files its provisioners name (all of a
    directory one names), and the user's `inputs` globs. Nothing else under the directory counts."""
    root = vagrantfile.parent
    named = [root / f for f in machine.files]
    named += [match for pattern in globs for match in sorted(root.glob(pattern))]
    found: set[Path] = {vagrantfile}
    for path in named:
        if path.is_dir():
            found.update(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            found.add(path)
        else:
            raise ConfigError(f"{vagrantfile}: {path.relative_to(root) if path.is_relative_to(root) else path} "
                              "is named by a provisioner (or inputs) but does not exist; fix the path")
    return sorted(found)


def content_hash(vagrantfile: Path, machine: Machine, inputs: list[Path], provider: str = "libvirt") -> str:
    """The golden VM's identity: the machine, its provisioning inputs, and the base box (name, version,
    metadata and the box's own Vagrantfile)."""
    digest = hashlib.sha256(json.dumps([machine.name, machine.box, machine.box_version, provider]).encode())
    installed = box_dir(machine.box, provider, machine.box_version)
    if installed is not None:
        digest.update(installed.parent.name.encode())  # the installed version
        for name in ("metadata.json", "Vagrantfile"):
            if (installed / name).is_file():
                digest.update((installed / name).read_bytes())
    root = vagrantfile.parent
    for path in inputs:
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        digest.update(str(rel).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def installed_boxes(state_dir: Path) -> set[str]:
    return {box.name for box in _vagrant(state_dir, state_dir / "box-list.log").box_list()}


# virt-sysprep and virt-sparsify (libguestfs) boot an appliance VM of their own, which
# costs minutes without KVM; vagrant-libvirt's `package` only needs them to exist.
# We reset what clones must not share ourselves, over SSH, before packaging.
_SHIM = "#!/bin/sh\n# pytest-buildenv: skip libguestfs during `vagrant package`\nexit 0\n"


def _shim_path(state_dir: Path) -> str:
    shims = state_dir / "shims"
    shims.mkdir(parents=True, exist_ok=True)
    for name in ("virt-sysprep", "virt-sparsify"):
        shim = shims / name
        if not shim.exists():
            shim.write_text(_SHIM)
            shim.chmod(0o755)
    return f"{shims}{os.pathsep}{os.environ.get('PATH', '')}"


class GoldenVM:
    """The user's Vagrantfile, provisioned once and frozen into a box (cached by content)."""

    def __init__(self, vagrantfile: Path, state_dir: Path, *, provider: str = "libvirt",
                 progress: Any = None, machine: Optional[str] = None, inputs: tuple[str, ...] = ()) -> None:
        self.vagrantfile = Path(vagrantfile).resolve()
        if not self.vagrantfile.is_file():
            raise ConfigError(f"Vagrantfile {self.vagrantfile} not found; fix vagrantfile= (or --vagrantfile)")
        self.state_dir = Path(state_dir)
        self.provider = provider
        self.machine = choose_machine(self.vagrantfile, machines_of(self.vagrantfile), machine)
        self.base_box = self.machine.box
        self.inputs = golden_inputs(self.vagrantfile, self.machine, inputs)
        self.hash = content_hash(self.vagrantfile, self.machine, self.inputs, provider)
        self.box = f"buildenv-golden/{self.hash[:16]}"
        self.progress = progress or (lambda line: None)
        self.keep = 2  # golden boxes kept per Vagrantfile (ini buildenv_golden_keep)
        self.provisioned_now = False
        self.owner: Optional[Owner] = None  # whose clones: set by the session, else a fresh owner

    def clone(self, workspace: Path, test: str = "", **options: Any) -> VMClone:
        """A new clone of this golden VM (the caller closes it; vm_clone does that for you)."""
        from ..naming import new_session_id

        owner = self.owner or Owner(new_session_id())
        return VMClone(self.box, workspace, self.state_dir, owner, test=test, **options).start()

    def ensure(self) -> str:
        """The golden box's name, provisioning it first if no session ever did (one at a time per host)."""
        from filelock import FileLock

        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.base_box not in installed_boxes(self.state_dir):
            raise VMError(f"base box {self.base_box!r} is not installed; vagrant box add {self.base_box} <file or URL>")
        from ..sharing import state_root

        with FileLock(str(state_root() / f"golden-{self.hash[:16]}.lock")):  # per user, as filelock wants
            if self.box not in installed_boxes(self.state_dir):
                self._provision()
                self.provisioned_now = True
        return self.box

    def _provision(self) -> None:
        """Up (with provisioners) in a directory of its own holding only the golden's inputs, so nothing
        else can reach the VM and the user's own `vagrant up` there is never disturbed; then packaged."""
        work = self.state_dir / f"golden-{self.hash[:12]}"
        shutil.rmtree(work, ignore_errors=True)
        root = self.vagrantfile.parent
        for path in self.inputs:
            copy = work / (path.relative_to(root) if path.is_relative_to(root) else path.name)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
        if self.vagrantfile.name != "Vagrantfile":
            (work / "Vagrantfile").write_text(self.vagrantfile.read_text())
        log = work / "provision.log"
        machine = _vagrant(work, log)
        name = self.machine.name
        self.progress(f"provisioning golden VM {name} from {self.vagrantfile} (log: {log})")
        started = time.monotonic()
        try:
            try:
                machine.up(vm_name=name, provider=self.provider)
            except subprocess.CalledProcessError:
                raise _fail(f"provisioning the golden VM from {self.vagrantfile}", log,
                            "fix the provisioner or the box (the log follows)") from None
            # What clones must not share: the machine id (and so their DHCP identity).
            ssh_cfg = work / "ssh.cfg"
            ssh_cfg.write_text(machine.ssh_config(vm_name=name))
            subprocess.run(["ssh", "-F", str(ssh_cfg), name, "sudo truncate -s0 /etc/machine-id; sync"],
                           capture_output=True, timeout=120)
            box_file = work / "golden.box"
            try:
                self._package(work, log, box_file)
                _vagrant(work, log).box_add(self.box, str(box_file), provider=self.provider, force=True)
            except subprocess.CalledProcessError:
                raise _fail(f"packaging the golden VM into {self.box}", log) from None
            self.progress(f"golden box {self.box} ready in {time.monotonic() - started:.0f} s")
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                machine.destroy(vm_name=name)
            shutil.rmtree(work, ignore_errors=True)
        record_golden(self)
        prune_goldens(self.vagrantfile, keep=self.keep, progress=self.progress)

    def _package(self, work: Path, log: Path, box_file: Path) -> None:
        """`vagrant package`, carrying what the base box carried: its Vagrantfile (provider settings; the
        one it was packaged with, if it was) and the files it includes, at the same places."""
        base = box_dir(self.base_box, self.provider, self.machine.box_version)
        argv = ["vagrant", "package", self.machine.name, "--output", str(box_file)]
        if base is not None:
            included = base / "include"
            vagrantfile = included / "_Vagrantfile" if (included / "_Vagrantfile").is_file() else base / "Vagrantfile"
            if vagrantfile.is_file():
                argv += ["--vagrantfile", str(vagrantfile)]
            extra = sorted(str(p) for p in included.glob("*") if p.is_file() and p.name != "_Vagrantfile")
            if extra:
                argv += ["--include", ",".join(extra)]
        with log.open("a") as out:
            subprocess.run(argv, cwd=work, stdout=out, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "PATH": _shim_path(self.state_dir)})


class VMClone(BuildEnv):
    """A throwaway machine from the golden box; commands over one reused SSH connection."""

    kind = "vm"

    def __init__(self, box: str, workspace: Path, state_dir: Path, owner: Owner, *, test: str = "",
                 environment: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
                 boot_timeout: float = 600) -> None:
        super().__init__(workspace, WORKDIR, environment=environment, timeout=timeout)
        self.box = box
        self.owner = owner
        self.name = owner.name("vm", test.rsplit("::", 1)[-1])[:60].rstrip("-")
        self.dir = Path(state_dir) / self.name
        self.dir.mkdir(parents=True)
        self.console_log = self.dir / "console.log"
        self.domain = f"{self.name}_default"
        self._log = self.dir / "vagrant.log"
        self._write_vagrantfile({**owner.labels("vm", test), LABEL_BOX: box}, boot_timeout)
        self._machine = _vagrant(self.dir, self._log)
        self._closed = False
        self.reusable = False  # set by a session that resets this clone by snapshot between tests
        self._control: Optional[Path] = None
        self.started = False

    def start(self) -> VMClone:
        """Boot the clone (without provisioning) and open its SSH connection; idempotent."""
        if self.started:
            return self
        self.started = True
        emit("created", "vm", self.domain, self.owner.session)
        try:
            self._machine.up(no_provision=True, provider="libvirt")
        except subprocess.CalledProcessError:
            console = tail(self.logs()) if self.console_log.exists() else "(no console output)"
            error = _fail(f"booting clone {self.name} of {self.box}", self._log, f"the console said:\n{console}")
            self.close()
            raise error from None
        self.ssh_config = self.dir / "ssh.cfg"
        self.ssh_config.write_text(self._machine.ssh_config())
        # Unix socket paths are short (108 bytes) and ssh appends a suffix while creating one.
        self._control = Path(tempfile.gettempdir()) / f"be-{hashlib.sha1(self.name.encode()).hexdigest()[:16]}"
        self._wait_for_ssh()
        return self

    def _wait_for_ssh(self, seconds: float = 30) -> None:
        """SSH answers and the workdir exists. Right after a boot or a snapshot restore the guest may be
        unreachable for a moment ("No route to host" while the bridge relearns it): retried, boundedly."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.run(["mkdir", "-p", str(WORKDIR)], cwd="/", check=True)
                return
            except (VMError, BuildCommandError) as exc:
                if isinstance(exc, VMError) and time.monotonic() < deadline:
                    time.sleep(1)
                    continue
                self.close()
                raise VMError(f"SSH into clone {self.name} failed ({str(exc).splitlines()[0]}); "
                              f"the console said:\n{tail(self.logs())}") from None

    def __enter__(self) -> VMClone:
        return self.start()

    def _write_vagrantfile(self, labels: dict[str, str], boot_timeout: float) -> None:
        description = DESCRIPTION_MARK + json.dumps(labels, sort_keys=True)
        self.dir.chmod(0o755)  # the console log is written by QEMU, not by us
        self.dir.joinpath("Vagrantfile").write_text(f"""\
# Generated by pytest-buildenv: a clone of the golden box, never provisioned.
Vagrant.configure("2") do |config|
  config.vm.box = {json.dumps(self.box)}
  config.vm.boot_timeout = {int(boot_timeout)}
  config.vm.provider :libvirt do |libvirt|
    libvirt.default_prefix = {json.dumps(self.name + "_")}
    libvirt.description = {json.dumps(description)}
    libvirt.serial :type => "file", :source => {{:path => {json.dumps(str(self.console_log))}}}
  end
end
""")

    # --- running, over one SSH connection -------------------------------
    def _ssh(self, *remote: str) -> list[str]:
        # Keep-alives turn a dead connection (a VM reset under it) into an error within 30 s, not a hang.
        return ["ssh", "-F", str(self.ssh_config), "-o", "ControlMaster=auto",
                "-o", f"ControlPath={self._control}", "-o", "ControlPersist=600",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6", "default", *remote]

    def reconnect(self) -> None:
        """Drop the shared SSH connection (after the VM was reset under it); the next command opens a new one."""
        if self._control is not None and self._control.exists():
            subprocess.run([*self._ssh()[:-1], "-O", "exit", "default"], capture_output=True, timeout=30)

    def _execute(self, argv: list[str], env: dict[str, str], cwd: PurePosixPath,
                 timeout: Optional[float], user: Optional[str]) -> tuple[int, str, str, bool]:
        command = shlex.join(argv)
        if env:
            command = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " + command
        if user:
            command = f"sudo -u {shlex.quote(user)} -- sh -c {shlex.quote(command)}"
        if timeout is not None:
            # GNU timeout signals its whole process group: the command and all it started.
            command = f"timeout -s KILL {timeout:g} sh -c {shlex.quote(command)}"
        # "; exit $?" keeps the login shell from exec'ing timeout(1), whose group kill would then
        # take the SSH session down with it (ssh exits 255 instead of the command's status).
        remote = f"cd {shlex.quote(str(cwd))} && {command}; exit $?"
        started = time.monotonic()
        proc = subprocess.run(self._ssh(remote), capture_output=True)
        if proc.returncode == 255:  # ssh's own failure: the command's status never came back
            raise VMError(f"SSH to clone {self.name} failed ({_text(proc.stderr).strip()[-200:] or 'no message'}); "
                          f"is the VM up? its console log is {self.console_log}")
        # timeout(1) exits 124, or 137 when KILL reaches it too; a command may exit so itself, hence the clock
        timed_out = (timeout is not None and proc.returncode in (124, 137)
                     and time.monotonic() - started >= timeout)
        return proc.returncode, _text(proc.stdout), _text(proc.stderr), timed_out

    def host_path(self, path: Any) -> None:
        return None  # nothing in the VM is shared with the host: every file moves by scp

    def _stat_outside(self, path: PurePosixPath) -> Optional[FileInfo]:
        proc = subprocess.run(self._ssh(f"stat -c '%f %s %u %g' {shlex.quote(str(path))}"), capture_output=True,
                              text=True)
        if proc.returncode != 0:
            return None
        mode, size, uid, gid = proc.stdout.split()
        return FileInfo(mode=int(mode, 16), size=int(size), uid=int(uid), gid=int(gid))

    def _read_outside(self, path: PurePosixPath) -> bytes:
        proc = subprocess.run(self._ssh(f"cat {shlex.quote(str(path))}"), capture_output=True)
        if proc.returncode != 0:
            raise FileNotFoundError(f"{path} cannot be read in {self.name}: {_text(proc.stderr).strip()}")
        return proc.stdout

    def _scp(self, source: str, dest: str) -> None:
        proc = subprocess.run(["scp", "-F", str(self.ssh_config), "-o", f"ControlPath={self._control}",
                               "-r", "-q", source, dest], capture_output=True, text=True)
        if proc.returncode != 0:
            raise FileNotFoundError(f"scp {source} {dest}: {proc.stderr.strip()}")

    def _put_outside(self, src: Path, target: PurePosixPath) -> None:
        self.run(["mkdir", "-p", str(target.parent)], check=True, cwd="/")
        self._scp(str(src), f"default:{target}")

    def _get_outside(self, source: PurePosixPath, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._scp(f"default:{source}", str(dest))

    BOOT_SNAPSHOT = "buildenv-boot"

    def save_boot_snapshot(self) -> None:
        """Remember this clone as it is now, so that reset() can bring it back in seconds."""
        try:
            self._machine.snapshot_save(self.BOOT_SNAPSHOT)
        except subprocess.CalledProcessError:
            raise _fail(f"snapshotting clone {self.name}", self._log, "the provider may not support snapshots; "
                        "use reset='destroy'") from None

    def reset(self, workspace: Path) -> None:
        """Back to the boot snapshot, for the next test: a clean machine, a fresh transcript and workspace."""
        try:
            self._machine.snapshot_restore(self.BOOT_SNAPSHOT)
        except subprocess.CalledProcessError:
            raise _fail(f"restoring clone {self.name}", self._log) from None
        self.reconnect()  # the guest's TCP state went back in time: the old connection is dead
        self.workspace = workspace
        self._wait_for_ssh()
        self.transcript = type(self.transcript)()  # a fresh one: the wait's own command is not the test's

    def logs(self) -> str:
        """The VM's serial console log (boot messages, kernel panics, login prompt)."""
        try:
            return self.console_log.read_text(errors="replace")
        except PermissionError:
            return subprocess.run(["sudo", "-n", "cat", str(self.console_log)], capture_output=True,
                                  text=True).stdout

    def close(self) -> None:
        if self._closed or not self.started:
            return
        self._closed = True
        if self._control is not None:
            self.reconnect()
        try:
            self._machine.destroy()
        except subprocess.CalledProcessError:
            destroy_domain(self.domain)
        emit("removed", "vm", self.domain, self.owner.session)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# --- golden boxes: a record each, bounded per Vagrantfile, removed with their libvirt volumes ----------
LABEL_BOX = "pytest-buildenv.box"  # on a clone's domain: the golden box it was made from


def _golden_records() -> Path:
    from ..sharing import state_root

    return state_root() / "goldens"


def record_golden(golden: GoldenVM) -> None:
    """Who made which golden box, from what, when: what pruning and the reaper go by."""
    import socket

    directory = _golden_records()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{golden.hash[:16]}.json").write_text(json.dumps({
        "box": golden.box, "vagrantfile": str(golden.vagrantfile), "machine": golden.machine.name,
        "created": time.time(), "host": socket.gethostname(), "pid": os.getpid()}))


def golden_records() -> list[dict[str, Any]]:
    records = []
    for path in sorted(_golden_records().glob("*.json")):
        try:
            records.append({**json.loads(path.read_text()), "record": str(path)})
        except (OSError, ValueError):
            continue  # being written, or removed by a concurrent pruner
    return records


def boxes_in_use(uri: str = "qemu:///system") -> set[str]:
    """Golden boxes that clones (existing libvirt domains) were made from."""
    return {labels[LABEL_BOX] for _, labels in labelled_domains(uri) if LABEL_BOX in labels}


def prune_goldens(vagrantfile: Path, keep: int, progress: Any = None) -> list[str]:
    """Keep the newest `keep` golden boxes of this Vagrantfile; older ones go, unless a clone uses one."""
    mine = sorted((r for r in golden_records() if r.get("vagrantfile") == str(vagrantfile)),
                  key=lambda r: float(r.get("created", 0)), reverse=True)
    in_use = boxes_in_use() if len(mine) > keep else set()
    removed = []
    for record in mine[max(keep, 1):]:
        if record["box"] in in_use:
            continue
        remove_golden(record["box"])
        Path(record["record"]).unlink(missing_ok=True)
        removed.append(record["box"])
        if progress is not None:
            progress(f"removed golden box {record['box']} (ini buildenv_golden_keep={keep})")
    return removed


def _pool_volumes(pool: str = "default", uri: str = "qemu:///system") -> list[str]:
    listed = subprocess.run(["virsh", "-c", uri, "vol-list", pool], capture_output=True, text=True)
    return [line.split()[0] for line in listed.stdout.splitlines()[2:] if line.strip()]  # below the header


def _box_volumes(box: str, pool: str = "default", uri: str = "qemu:///system",
                 volumes: Optional[list[str]] = None) -> list[str]:
    """vagrant-libvirt uploads a box into the pool as <box, / as -VAGRANTSLASH->_vagrant_box_image_<...>."""
    prefix = box.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"
    return [name for name in (volumes if volumes is not None else _pool_volumes(pool, uri)) if name.startswith(prefix)]


def remove_golden(box: str, pool: str = "default", uri: str = "qemu:///system") -> None:
    """The box from Vagrant and its uploaded image from libvirt's pool."""
    subprocess.run(["vagrant", "box", "remove", "--force", "--all", box], capture_output=True, timeout=300)
    for volume in _box_volumes(box, pool, uri):
        subprocess.run(["virsh", "-c", uri, "vol-delete", "--pool", pool, volume], capture_output=True)


def installed_goldens() -> list[Path]:
    return sorted(vagrant_home().glob("boxes/buildenv-golden-VAGRANTSLASH-*"))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def goldens_held() -> str:
    """For doctor: the golden boxes, their Vagrantfiles, and the space they take (boxes and pool)."""
    boxes = installed_goldens()
    records = {r["box"]: r for r in golden_records()}
    names = [b.name.replace("-VAGRANTSLASH-", "/") for b in boxes]
    volumes = _pool_volumes()
    pool = sum(_volume_bytes(v) for name in names for v in _box_volumes(name, volumes=volumes))
    sources = sorted({records[n]["vagrantfile"] for n in names if n in records})
    return (f"golden boxes: {len(boxes)} ({sum(_size(b) for b in boxes) // 2**20} MiB in {vagrant_home()}, "
            f"{pool // 2**20} MiB in libvirt's pool) from {len(sources)} Vagrantfile(s)"
            + (f": {', '.join(sources)}" if sources else ""))


def _volume_bytes(volume: str, pool: str = "default", uri: str = "qemu:///system") -> int:
    info = subprocess.run(["virsh", "-c", uri, "vol-info", "--pool", pool, volume, "--bytes"],
                          capture_output=True, text=True).stdout
    match = re.search(r"^Allocation:\s+(\d+)", info, re.MULTILINE)
    return int(match.group(1)) if match else 0


def golden_leftovers() -> Iterator[Labelled]:
    """Golden boxes as caches: kept by every sweep, removed by `reap --include-cache` (when their
    maker is gone and no clone uses them)."""
    import socket

    from ..naming import LABEL_CACHE, LABEL_HOST, LABEL_PID
    from ..reaper import Labelled

    records = {r["box"]: r for r in golden_records()}
    in_use = boxes_in_use()
    for directory in installed_goldens():
        box = directory.name.replace("-VAGRANTSLASH-", "/")
        record = records.get(box, {})
        pid = os.getpid() if box in in_use else int(record.get("pid", 0))  # in use: alive, so kept
        labels = {LABEL_CACHE: f"golden:{box}", LABEL_HOST: record.get("host", socket.gethostname()),
                  LABEL_PID: str(pid), LABEL_SESSION: "-"}

        def remove(box: str = box, path: Optional[str] = record.get("record")) -> None:
            remove_golden(box)
            if path:
                Path(path).unlink(missing_ok=True)

        yield Labelled("golden", box, box, labels, remove)


# --- for the reaper: domains carry our labels in their description --------------
def labelled_domains(uri: str = "qemu:///system") -> list[tuple[str, dict[str, str]]]:
    if shutil.which("virsh") is None:
        return []
    names = subprocess.run(["virsh", "-c", uri, "list", "--all", "--name"], capture_output=True, text=True)
    found = []
    for name in filter(None, (line.strip() for line in names.stdout.splitlines())):
        desc = subprocess.run(["virsh", "-c", uri, "desc", name], capture_output=True, text=True).stdout.strip()
        if desc.startswith(DESCRIPTION_MARK):
            try:
                found.append((name, json.loads(desc[len(DESCRIPTION_MARK):])))
            except json.JSONDecodeError:
                continue
    return found


def destroy_domain(name: str, uri: str = "qemu:///system") -> None:
    """What `vagrant destroy` does to libvirt: stop the domain, undefine it, delete its overlay."""
    subprocess.run(["virsh", "-c", uri, "destroy", name], capture_output=True)
    subprocess.run(["virsh", "-c", uri, "undefine", name, "--remove-all-storage"], capture_output=True)


def leftovers(services: Services, session: Optional[str]) -> Iterator[Labelled]:
    """libvirt domains whose description carries our labels (clones of golden VMs)."""
    from ..reaper import Labelled

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


def check(defaults: Mapping[str, Any]) -> Check:
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
