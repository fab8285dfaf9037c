"""The vm kind for real: a golden VM provisioned from a Vagrantfile, libvirt clones of it.

Needs Vagrant, vagrant-libvirt, libvirt and the offline test box (.ci/vm-box, added as
buildenv-test/debian12); run with --buildenv=vm (CI does, as root: libvirt's system
instance and its storage pool are root's).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_buildenv import CommandTimeout, VMError
from pytest_buildenv.kinds import vm
from pytest_buildenv.kinds.vm import GoldenVM

DATA = Path(__file__).parent / "data" / "vm"
HELLO = Path(__file__).parent.parent / "examples" / "hello"

pytestmark = [pytest.mark.vm(vagrantfile="data/vm/golden/Vagrantfile"), pytest.mark.usefixtures("one_session_at_a_time")]


def volumes() -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", "vol-list", "default"], capture_output=True,
                          text=True).stdout


def test_clones_see_the_golden_marker_but_not_each_others_files(golden_vm, vm_clone, tmp_path):
    other = golden_vm.clone(tmp_path, test="other")
    try:
        for clone in (vm_clone, other):
            assert clone.run("cat /etc/buildenv-marker", check=True).stdout == "provisioned by the golden Vagrantfile\n"
        vm_clone.run("echo one > mine", check=True)
        other.run("echo two > theirs", check=True)
        assert vm_clone.artifact("mine").read_text() == "one\n" and not vm_clone.artifact("theirs").exists
        assert other.artifact("theirs").read_text() == "two\n" and not other.artifact("mine").exists
        assert vm_clone.domain != other.domain
    finally:
        other.close()
    # destroyed: no domain, no overlay volume, no Vagrant machine
    assert other.domain not in vm.domain_names()
    assert f"{other.domain}.img" not in volumes()
    assert not (other.dir / ".vagrant" / "machines" / "default" / "libvirt" / "id").exists()


def test_hello_world_built_in_a_clone_lands_on_the_host(vm_clone, tmp_path):
    vm_clone.put(HELLO / "helloworld.c", "helloworld.c")
    vm_clone.put(HELLO / "Makefile", "Makefile")
    vm_clone.run("make helloworld_app", check=True)
    app = vm_clone.artifact("helloworld_app")
    assert app.executable and app.size > 1000
    host_copy = vm_clone.get("helloworld_app", tmp_path / "from-vm" / "helloworld_app")
    assert subprocess.run([str(host_copy)], capture_output=True, text=True).stdout == "Hello, world!\n"
    # A failing test's artifacts hold what the guest built, not the host workspace it never wrote.
    from pytest_buildenv.reports import save_artifacts

    saved = save_artifacts([vm_clone], "test_vm.py::hello", tmp_path / "artifacts")
    assert (saved / "workspace-vm" / "helloworld_app").stat().st_size == app.size
    assert (saved / "workspace-vm" / "helloworld.c").read_bytes() == (HELLO / "helloworld.c").read_bytes()
    with pytest.raises(CommandTimeout, match="timed out after 2 s"):
        vm_clone.run("sleep 300 & sleep 300", timeout=2)
    assert vm_clone.run("pgrep -c -x sleep || true").stdout.strip() == "0"
    assert "login:" in vm_clone.logs()  # the serial console log, booted to a prompt


HOLDING = """
import os, pathlib, time, pytest

@pytest.mark.vm(vagrantfile={vagrantfile!r})
def test_hold(vm_clone):
    assert vm_clone.run("cat /etc/buildenv-marker").ok
    pathlib.Path(os.environ["READY"]).write_text(vm_clone.domain)
    time.sleep(300)
"""


def test_next_session_reuses_the_golden_box_and_reap_removes_a_killed_clone(golden_vm, tmp_path, wait_written):
    (tmp_path / "test_hold.py").write_text(HOLDING.format(vagrantfile=str(DATA / "golden" / "Vagrantfile")))
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--buildenv=vm", "test_hold.py"],
                            cwd=tmp_path, env={**os.environ, "READY": str(ready)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    domain = wait_written(ready, proc, timeout=600)
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0]
    assert "provisioning golden VM" not in out  # the golden box was cached: no provisioning
    assert domain in vm.domain_names()
    reaped = subprocess.run([sys.executable, "-m", "pytest_buildenv", "reap"], capture_output=True, text=True)
    assert f"remove: vm {domain} " in reaped.stdout, reaped.stdout + reaped.stderr
    assert domain not in vm.domain_names()
    assert f"{domain}.img" not in volumes()


def test_missing_base_box_is_one_line(tmp_path):
    with pytest.raises(VMError, match=r"^base box 'buildenv-test/absent' is not installed; vagrant box add"):
        GoldenVM(DATA / "nobox" / "Vagrantfile", tmp_path).ensure()


def test_failed_provisioning_shows_its_output_and_leaves_nothing(tmp_path):
    before = set(vm.domain_names())
    steps: list[str] = []
    with pytest.raises(VMError) as raised:
        GoldenVM(DATA / "broken" / "Vagrantfile", tmp_path, progress=steps.append).ensure()
    # Vagrant's steps reached the terminal as it went; the provisioner's own output only the log.
    assert any(line.startswith("==> ") and "Running provisioner" in line for line in steps), steps
    assert not any("provision-step-output" in line for line in steps), steps
    first, *rest = str(raised.value).splitlines()
    assert first.startswith(f"provisioning the golden VM from {DATA / 'broken' / 'Vagrantfile'} failed: ")
    assert "fix the provisioner" in first
    assert "provision-step-output" in "\n".join(rest)
    assert set(vm.domain_names()) == before


def test_ssh_never_up_shows_the_console(tmp_path):
    golden = GoldenVM(DATA / "nossh" / "Vagrantfile", tmp_path)
    golden.ensure()
    before = set(vm.domain_names())
    with pytest.raises(VMError) as raised:
        golden.clone(tmp_path, test="no-ssh", boot_timeout=20)
    message = str(raised.value)
    assert message.startswith("booting clone ") and "the console said:" in message
    assert "login:" in message  # the machine booted: it is SSH that never answered
    assert set(vm.domain_names()) == before


@pytest.mark.vm(vagrantfile="data/vm/golden/Vagrantfile", reset="snapshot")
class TestSnapshotReset:
    """reset="snapshot": one clone per process, restored to its boot snapshot between tests."""

    seen: dict[str, str] = {}

    def test_first_dirties_the_clone(self, vm_clone):
        vm_clone.run("echo dirty > left-behind; sudo touch /etc/left-behind", check=True)
        self.seen["domain"] = vm_clone.domain

    def test_second_gets_the_same_clone_clean(self, vm_clone):
        assert vm_clone.domain == self.seen["domain"]  # reused, not booted again
        assert not vm_clone.artifact("left-behind").exists
        assert vm_clone.run("test -e /etc/left-behind").exit_code == 1
        assert [r.command for r in vm_clone.transcript] == ["test -e /etc/left-behind"]
        assert vm_clone.run("cat /etc/buildenv-marker", check=True).ok

    def test_third_goes_on_when_libvirtd_restarts_mid_test(self, vm_clone):
        """libvirt keeps its domains running while libvirtd restarts; SSH never needed it."""
        vm_clone.run("echo dirty > left-behind", check=True)
        restart_libvirtd()
        assert vm_clone.run("echo after", check=True).stdout == "after\n"

    def test_fourth_is_reset_through_the_restarted_libvirtd(self, vm_clone):
        assert vm_clone.domain == self.seen["domain"] and not vm_clone.artifact("left-behind").exists


def restart_libvirtd() -> None:
    """As .ci/run starts it (no systemd here): stopped with SIGTERM, started again, answering."""
    import time

    if os.geteuid() != 0 or subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode != 0:
        pytest.fail("restarting libvirtd needs root and a libvirtd started by hand (.ci/run)", pytrace=False)
    subprocess.run(["pkill", "-TERM", "-x", "libvirtd"], check=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "libvirtd did not stop"
        time.sleep(0.2)
    subprocess.run(["libvirtd", "-d"], check=True)
    while subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "libvirtd did not come back"
        time.sleep(0.2)
