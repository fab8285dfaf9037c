"""The golden VM (a Vagrantfile provisioned once, frozen into a box named by its content hash) and the
cache of golden boxes: their records, pruning, removal, and what doctor and the reaper see of them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Optional
from collections.abc import Iterator

from ...errors import ConfigError, VMError
from ...naming import LABEL_CACHE, LABEL_HOST, LABEL_PID, LABEL_SESSION, Labelled, Owner, new_session_id
from ...progress import VAGRANT_STEP, Progress, follow
from ...services import Services
from ...sharing import state_root
from .clone import VMClone
from .libvirt import _box_volumes, _pool_volumes, _volume_bytes, boxes_in_use, destroy_domain
from .vagrant import Machine, _fail, _vagrant, box_dir, choose_machine, machines_of, vagrant_home



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
        for beside in reachable_beside(installed):  # a kernel it boots, say (none: the hash as it was)
            for path in sorted(beside.rglob("*")) if beside.is_dir() else [beside]:
                if path.is_file():
                    digest.update(str(path.relative_to(installed)).encode() + b"\0" + path.read_bytes())
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
                 progress: Optional[Progress] = None, machine: Optional[str] = None, inputs: tuple[str, ...] = ()) -> None:
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
        owner = self.owner or Owner(new_session_id())
        return VMClone(self.box, workspace, self.state_dir, owner, test=test, **options).start()

    def ensure(self) -> str:
        """The golden box's name, provisioning it first if no session ever did (one at a time per host)."""
        from filelock import FileLock

        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.base_box not in installed_boxes(self.state_dir):
            raise VMError(f"base box {self.base_box!r} is not installed; vagrant box add {self.base_box} <file or URL>")
        with FileLock(str(state_root() / f"golden-{self.hash[:16]}.lock")):  # per user, as filelock wants
            if self.box not in installed_boxes(self.state_dir):
                self._provision()
                self.provisioned_now = True
        return self.box

    def _provision(self) -> None:
        """Up (with provisioners) in a directory of its own holding only the golden's inputs, so nothing
        else can reach the VM and the user's own `vagrant up` there is never disturbed; then packaged."""
        work = self.state_dir / f"golden-{self.hash[:12]}"
        self._remove_remains(work)
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
            with follow(log, self.progress, VAGRANT_STEP):  # Vagrant's step lines, as it goes
                self._up_and_package(machine, work, log)
            self.progress(f"golden box {self.box} ready in {time.monotonic() - started:.0f} s")
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                machine.destroy(vm_name=name)
            shutil.rmtree(work, ignore_errors=True)
        record_golden(self)
        prune_goldens(self.vagrantfile, keep=self.keep, progress=self.progress)

    def _remove_remains(self, work: Path) -> None:
        """What a provisioning killed half-way left (the lock it held is free, its box never added): its
        VM, by Vagrant where its directory is left and by the name vagrant-libvirt gives it where not."""
        if (work / ".vagrant").is_dir():
            self.progress(f"removing what an earlier provisioning of {self.box}, killed half-way, left")
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                subprocess.run(["vagrant", "destroy", "-f"], cwd=work, capture_output=True, check=True, timeout=300)
        if self.provider == "libvirt" and shutil.which("virsh"):
            destroy_domain(f"{work.name}_{self.machine.name}")  # <directory>_<machine>: vagrant-libvirt's name
        shutil.rmtree(work, ignore_errors=True)

    def _up_and_package(self, machine: Any, work: Path, log: Path) -> None:
        name = self.machine.name
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

    def _package(self, work: Path, log: Path, box_file: Path) -> None:
        """`vagrant package`, carrying what the base box carried: its Vagrantfile (provider settings; the
        one it was packaged with, if it was) and whatever that Vagrantfile can reach beside itself."""
        base = box_dir(self.base_box, self.provider, self.machine.box_version)
        argv = ["vagrant", "package", self.machine.name, "--output", str(box_file)]
        if base is not None:
            vagrantfile = box_vagrantfile(base)
            if vagrantfile is not None:
                argv += ["--vagrantfile", str(vagrantfile)]
            beside = reachable_beside(base)
            if beside:
                argv += ["--include", ",".join(str(p) for p in beside)]
        with log.open("a") as out:
            subprocess.run(argv, cwd=work, stdout=out, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "PATH": _shim_path(self.state_dir)})


def box_vagrantfile(base: Path) -> Optional[Path]:
    """An installed box's own Vagrantfile: the one it was packaged with (include/_Vagrantfile), else its own."""
    for path in (base / "include" / "_Vagrantfile", base / "Vagrantfile"):
        if path.is_file():
            return path
    return None


def reachable_beside(base: Path) -> list[Path]:
    """What an installed box's Vagrantfile can name beside itself (a box booting its own kernel:
    `lv.kernel = File.expand_path("vmlinuz", __dir__)`). The golden carries them to include/, which is
    where its packaged _Vagrantfile's __dir__ is; the box's disks stay out (the golden has its own)."""
    included = base / "include"
    found = [p for p in included.glob("*") if p.name != "_Vagrantfile"]
    if box_vagrantfile(base) == base / "Vagrantfile":
        try:
            disks = {d.get("path", "") for d in json.loads((base / "metadata.json").read_text()).get("disks", [])}
        except (OSError, ValueError, AttributeError):
            disks = set()
        found += [p for p in base.iterdir()
                  if p.name not in {"box.img", "metadata.json", "Vagrantfile", "include", *disks}]
    return sorted(found)


# --- golden boxes: a record each, bounded per Vagrantfile, removed with their libvirt volumes ----------
def _golden_records() -> Path:
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


def prune_goldens(vagrantfile: Path, keep: int, progress: Optional[Progress] = None) -> list[str]:
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


def remove_golden(box: str, pool: str = "default", uri: str = "qemu:///system") -> None:
    """The box from Vagrant and its uploaded image from libvirt's pool."""
    subprocess.run(["vagrant", "box", "remove", "--force", "--all", box], capture_output=True, timeout=300)
    for volume in _box_volumes(box, pool, uri):
        subprocess.run(["virsh", "-c", uri, "vol-delete", "--pool", pool, volume], capture_output=True)


def installed_goldens() -> list[Path]:
    return sorted(vagrant_home().glob("boxes/buildenv-golden-VAGRANTSLASH-*"))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def goldens_held(services: Services) -> str:
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


def golden_leftovers() -> Iterator[Labelled]:
    """Golden boxes as caches: kept by every sweep, removed by `reap --include-cache` (when their
    maker is gone and no clone uses them)."""
    import socket


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
