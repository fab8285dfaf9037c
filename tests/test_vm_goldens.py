"""Golden VMs from Vagrantfiles as people write them: the box and machine Vagrant says, an identity
made of what provisions the VM, bounded caches, and causes first.

Vagrant evaluates every Vagrantfile here for real. Boxes for the cache tests are tiny real boxes
(`vagrant box add` of a .box holding a 1 MiB qcow2), so that adding and removing them costs nothing;
the multi-machine and included-kernel goldens are real VMs (CI's VM stage, as root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from pytest_buildenv import ConfigError, VMError
from pytest_buildenv.kinds import vm
from pytest_buildenv.kinds.vm import GoldenVM
from pytest_buildenv.kinds.vm.golden import installed_boxes

pytestmark = [pytest.mark.vm(vagrantfile="data/vm/golden/Vagrantfile"), pytest.mark.usefixtures("one_session_at_a_time")]

TEST_BOX = "buildenv-test/debian12"
URI = "qemu:///system"

MULTI = """\
BOX = ENV.fetch("BUILDENV_TEST_BOX", "nobody/absent")
Vagrant.configure("2") do |config|
  config.vm.define "builder" do |b|
    b.vm.box = BOX
    b.vm.provision "shell", path: "scripts/setup.sh"
  end
  config.vm.define "db" do |d|
    d.vm.box = "nobody/other"
  end
end
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with its Vagrantfile at the root, as Vagrant's convention has it."""
    monkeypatch.setenv("BUILDENV_TEST_BOX", TEST_BOX)
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "Vagrantfile").write_text(MULTI)
    (root / "scripts" / "setup.sh").write_text("#!/bin/sh\necho golden-from-multi > /home/vagrant/golden-marker\n")
    (root / "tests" / "test_app.py").write_text("def test_x(): pass\n")
    return root


def test_box_and_machine_come_from_vagrant(project, tmp_path):
    golden = GoldenVM(project / "Vagrantfile", tmp_path, machine="builder")
    assert (golden.machine.name, golden.base_box) == ("builder", TEST_BOX)  # from ENV, through a variable
    assert golden.inputs == [project / "Vagrantfile", project / "scripts" / "setup.sh"]
    with pytest.raises(ConfigError, match=r"defines machines builder, db; name one with machine="):
        GoldenVM(project / "Vagrantfile", tmp_path)
    with pytest.raises(ConfigError, match=r"defines no machine 'web'; it defines builder, db"):
        GoldenVM(project / "Vagrantfile", tmp_path, machine="web")


def test_a_vagrantfile_vagrant_refuses_is_one_line(tmp_path):
    (tmp_path / "Vagrantfile").write_text('Vagrant.configure("2") do |config|\n  config.vm.box = undefined_thing\nend\n')
    with pytest.raises(ConfigError) as raised:
        GoldenVM(tmp_path / "Vagrantfile", tmp_path / "state")
    message = str(raised.value)
    assert message.startswith(f"Vagrant cannot evaluate {tmp_path / 'Vagrantfile'}: ") and "\n" not in message
    assert "undefined_thing" in message and ".rb:" not in message.split(": ", 1)[1].split(";")[0]


def test_identity_is_what_provisions_it(project, tmp_path):
    def identity(**options) -> str:
        return GoldenVM(project / "Vagrantfile", tmp_path, machine="builder", **options).hash

    first = identity()
    (project / "tests" / "test_app.py").write_text("def test_x(): assert 1\n")  # a test edited
    (project / "build").mkdir()
    (project / "build" / "app.o").write_bytes(b"\0" * 64)  # build output
    (project / "NOTES.md").write_text("notes\n")
    (project / ".pytest_cache").mkdir()
    assert identity() == first, "nothing but what provisions the VM changes the golden"
    (project / "scripts" / "setup.sh").write_text("#!/bin/sh\necho edited > /home/vagrant/golden-marker\n")
    edited = identity()
    assert edited != first
    assert identity(inputs=("NOTES.md",)) != edited  # a file the user lists counts
    os.environ["BUILDENV_TEST_BOX"] = "buildenv-test/other"
    try:
        assert identity() != edited  # the base box counts
    finally:
        os.environ["BUILDENV_TEST_BOX"] = TEST_BOX


# --- caches ------------------------------------------------------------------------------
def tiny_box(tmp_path: Path, name: str, vagrantfile: str = "") -> str:
    """A real box, 1 MiB: added with `vagrant box add` like any box."""
    work = tmp_path / f"box-{name.replace('/', '_')}"
    work.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(work / "box.img"), "1M"], check=True)
    (work / "metadata.json").write_text(json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": 1}))
    (work / "Vagrantfile").write_text(vagrantfile or 'Vagrant.configure("2") do |c| end\n')
    box_file = tmp_path / f"{work.name}.box"
    with tarfile.open(box_file, "w:gz") as archive:
        for path in work.iterdir():
            archive.add(path, arcname=path.name)
    subprocess.run(["vagrant", "box", "add", "--force", "--name", name, str(box_file)], check=True,
                   capture_output=True)
    return name


def installed(box: str) -> bool:
    return (vm.vagrant_home() / "boxes" / box.replace("/", "-VAGRANTSLASH-")).exists()


def record(box: str, vagrantfile: str, age: float) -> Path:
    directory = vm._golden_records()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{box.split('/')[-1]}.json"
    path.write_text(json.dumps({"box": box, "vagrantfile": vagrantfile, "machine": "default",
                                "created": time.time() - age, "host": os.uname().nodename, "pid": 0}))
    return path


@pytest.fixture
def clone_of(tmp_path):
    """A libvirt domain labelled as a clone of a box (defined, never started): a box in use."""
    defined = []

    def define(box: str) -> str:
        name = f"buildenv-test-inuse-{len(defined)}-{os.getpid()}"
        description = vm.DESCRIPTION_MARK + json.dumps({vm.LABEL_BOX: box, "pytest-buildenv.session": "x"})
        xml = tmp_path / f"{name}.xml"
        xml.write_text(f"<domain type='qemu'><name>{name}</name><description>{description}</description>"
                       "<memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>")
        subprocess.run(["virsh", "-c", URI, "define", str(xml)], check=True, capture_output=True)
        defined.append(name)
        return name

    yield define
    for name in defined:
        subprocess.run(["virsh", "-c", URI, "undefine", name], capture_output=True)


@pytest.mark.usefixtures("own_caches")
def test_keep_limit_removes_the_oldest_but_never_one_in_use(tmp_path, clone_of):
    vagrantfile = str(tmp_path / "Vagrantfile")
    boxes = [tiny_box(tmp_path, f"buildenv-golden/keeptest{i}") for i in range(4)]
    records = [record(box, vagrantfile, age=100 * (4 - i)) for i, box in enumerate(boxes)]  # boxes[0] oldest
    clone_of(boxes[0])  # the oldest has a clone: kept whatever its age
    try:
        removed = vm.prune_goldens(Path(vagrantfile), keep=2)
        assert removed == [boxes[1]]
        assert [installed(b) for b in boxes] == [True, False, True, True]
        assert [r.exists() for r in records] == [True, False, True, True]
    finally:
        for box in boxes:
            vm.remove_golden(box)
        for path in records:
            path.unlink(missing_ok=True)


@pytest.fixture
def own_caches(tmp_path, monkeypatch):
    """A Vagrant home and a state directory of this test's own: a reaper told to remove every golden box
    must not touch the suite's (or the developer's)."""
    import tempfile

    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "vagrant-home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


@pytest.mark.usefixtures("own_caches")
def test_reap_include_cache_removes_golden_boxes_and_their_volumes(tmp_path):
    box = tiny_box(tmp_path, "buildenv-golden/reaptest0")
    path = record(box, str(tmp_path / "Vagrantfile"), age=0)
    volume = box.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_0_1_box.img"  # as vagrant-libvirt names it
    subprocess.run(["virsh", "-c", URI, "vol-create-as", "default", volume, "1M"], check=True, capture_output=True)
    try:
        reap = [sys.executable, "-m", "pytest_buildenv", "reap", "--buildenv=vm"]
        kept = subprocess.run(reap, capture_output=True, text=True).stdout
        assert f"keep: golden {box} " in kept and installed(box)
        doctor = subprocess.run([sys.executable, "-m", "pytest_buildenv", "doctor"], capture_output=True, text=True).stdout
        assert "golden boxes: " in doctor and "MiB in libvirt's pool" in doctor
        out = subprocess.run([*reap, "--include-cache"], capture_output=True, text=True).stdout
        assert f"remove: golden {box} " in out
        assert not installed(box) and volume not in vm._box_volumes(box) and not path.exists()
        assert vm.installed_goldens() == []
    finally:
        vm.remove_golden(box)
        path.unlink(missing_ok=True)


# --- causes first --------------------------------------------------------------------------
def test_a_clone_that_cannot_boot_says_libvirts_cause_first(tmp_path):
    """The box's own Vagrantfile names a kernel that is not there: libvirt refuses to start the domain."""
    box = tiny_box(tmp_path, "buildenv-test/nokernel", vagrantfile=(
        'Vagrant.configure("2") do |c|\n  c.vm.provider :libvirt do |l|\n    l.driver = "qemu"\n'
        '    l.kernel = File.expand_path("include/vmlinuz-missing", __dir__)\n  end\nend\n'))
    from pytest_buildenv.naming import Owner, new_session_id

    try:
        (tmp_path / "ws").mkdir()
        with pytest.raises(VMError) as raised:
            vm.VMClone(box, tmp_path / "ws", tmp_path / "state", Owner(new_session_id()), test="noboot",
                       boot_timeout=60).start()
        first = str(raised.value).splitlines()[0]
        assert first.startswith("booting clone ") and "Call to virDomainCreate" in first, first
        assert "vmlinuz-missing" in first and ".rb:" not in first
        assert not [d for d, _ in vm.labelled_domains() if "noboot" in d]
    finally:
        vm.remove_golden(box)


def test_log_cause_skips_backtrace_frames():
    log = ("Bringing machine 'default' up with 'libvirt' provider...\n"
           "==> default: Starting domain.\n"
           "/usr/share/rubygems-integration/all/gems/vagrant-libvirt-0.11.2/lib/vagrant-libvirt/action/"
           "start_domain.rb:400:in `call': Call to virDomainCreateWithFlags failed: unable to stat: "
           "/root/.vagrant.d/boxes/b/0/libvirt/include/vmlinuz (Libvirt::Error)\n"
           "\tfrom /usr/share/rubygems-integration/all/gems/vagrant-2.3.4/lib/vagrant/action/warden.rb:48:in `call'\n"
           "\tfrom /usr/lib/ruby/vendor_ruby/vagrant/batch_action.rb:86:in `block (2 levels) in run'\n")
    assert vm.log_cause(log) == ("Call to virDomainCreateWithFlags failed: unable to stat: "
                                 "/root/.vagrant.d/boxes/b/0/libvirt/include/vmlinuz (Libvirt::Error)")


def test_log_cause_is_vagrants_wrapped_message_as_one_line():
    """Vagrant wraps its own error at 80 columns: its last line alone read `vagrant up` command again."""
    log = ("Bringing machine 'default' up with 'libvirt' provider...\n"
           "==> default: Creating image (snapshot of base box volume).\n"
           "    default: the machine's own output\n"
           "Name `golden-fe864331d608_default` of domain about to create is already taken. Please try to run\n"
           "`vagrant up` command again.\n")
    assert vm.log_cause(log) == ("Name `golden-fe864331d608_default` of domain about to create is already taken. "
                                 "Please try to run `vagrant up` command again.")


# --- real goldens -------------------------------------------------------------------------------
def test_multi_machine_golden_from_env_box_boots_clones(project, tmp_path):
    golden = GoldenVM(project / "Vagrantfile", tmp_path / "state", machine="builder")
    (tmp_path / "ws").mkdir()
    try:
        golden.ensure()
        with golden.clone(tmp_path / "ws", test="multi") as clone:
            assert clone.run("cat /home/vagrant/golden-marker", check=True).stdout == "golden-from-multi\n"
        (project / "NOTES.md").write_text("beside the Vagrantfile\n")
        again = GoldenVM(project / "Vagrantfile", tmp_path / "state", machine="builder")
        assert again.box == golden.box and again.ensure() == golden.box and not again.provisioned_now
    finally:
        vm.remove_golden(golden.box)
        (vm._golden_records() / f"{golden.hash[:16]}.json").unlink(missing_ok=True)


@pytest.fixture
def qemu_readable_vagrant_home(monkeypatch):
    """QEMU (libvirt's system instance runs it as its own user) reads a box's included kernel where the
    box is: a Vagrant home it can read, as a user's ~/.vagrant.d is on a desktop (root's is 0700)."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="buildenv-test-vagrant-home-", dir="/var/tmp"))
    home.chmod(0o755)
    monkeypatch.setenv("VAGRANT_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("layout", ["include", "beside"])
def test_a_base_box_booting_its_own_kernel_boots_as_a_golden(layout, tmp_path, qemu_readable_vagrant_home,
                                                              monkeypatch):
    """A box whose Vagrantfile names its kernel and initrd beside itself: made with `vagrant package
    --include vmlinuz,initrd --vagrantfile V` (include/), or by hand with them next to box.img and no
    include/ ("beside": its golden carried only include/, and its clone failed with `unable to stat:
    .../include/vmlinuz`). Either way the golden carries them, so its clones boot. The beside box's
    first provisioning is killed half-way (see kill_provisioning_half_way): the golden is made anew."""
    monkeypatch.setenv("VAGRANT_HOME", str(Path.home() / ".vagrant.d"))
    source = vm.box_dir(TEST_BOX)
    monkeypatch.setenv("VAGRANT_HOME", str(qemu_readable_vagrant_home))
    assert source is not None
    settings = (source / "Vagrantfile").read_text()
    kernel = next(line.split('"')[1] for line in settings.splitlines() if "libvirt.kernel" in line)
    initrd = next(line.split('"')[1] for line in settings.splitlines() if "libvirt.initrd" in line)
    work = tmp_path / "base"
    own = work / "include" if layout == "include" else work  # where the box's own Vagrantfile is
    own.mkdir(parents=True)
    os.link(source / "box.img", work / "box.img") if os.stat(source).st_dev == os.stat(tmp_path).st_dev \
        else shutil.copy(source / "box.img", work / "box.img")
    shutil.copy(source / "metadata.json", work / "metadata.json")
    shutil.copy(kernel, own / "vmlinuz")
    shutil.copy(initrd, own / "initrd")
    (own / ("_Vagrantfile" if layout == "include" else "Vagrantfile")).write_text(
        settings.replace(f'"{kernel}"', 'File.expand_path("vmlinuz", __dir__)')
                .replace(f'"{initrd}"', 'File.expand_path("initrd", __dir__)'))
    if layout == "include":
        (work / "Vagrantfile").write_text('Vagrant.configure("2") do |c|\n  included = File.expand_path('
                                          '"../include/_Vagrantfile", __FILE__)\n  load included if File.exist?(included)\nend\n')
    box_file = tmp_path / "included.box"
    with tarfile.open(box_file, "w") as archive:
        for path in work.iterdir():
            archive.add(path, arcname=path.name)
    subprocess.run(["vagrant", "box", "add", "--force", "--name", "buildenv-test/included", str(box_file)],
                   check=True, capture_output=True)
    box_file.unlink()
    project = tmp_path / "project"
    project.mkdir()
    (project / "Vagrantfile").write_text('Vagrant.configure("2") do |config|\n  config.vm.box = "buildenv-test/included"\n'
                                         '  config.vm.provision "shell", inline: "echo included > /home/vagrant/m"\nend\n')
    golden = GoldenVM(project / "Vagrantfile", tmp_path / "state")
    (tmp_path / "ws").mkdir()
    remains = None
    try:
        if layout == "beside":
            remains = kill_provisioning_half_way(golden)
        assert golden.ensure() == golden.box and golden.provisioned_now
        assert remains not in vm.domain_names(), "the killed provisioning's VM was left"
        packaged = vm.box_dir(golden.box)
        assert packaged is not None and sorted(p.name for p in (packaged / "include").iterdir()) == \
            ["_Vagrantfile", "initrd", "vmlinuz"]
        with golden.clone(tmp_path / "ws", test="included") as clone:
            assert clone.run("cat /home/vagrant/m", check=True).stdout == "included\n"
    finally:
        if remains is not None:
            vm.destroy_domain(remains)  # when the golden's remains were left, the rest of the stage goes on
        vm.remove_golden(golden.box)
        vm.remove_golden("buildenv-test/included")
        (vm._golden_records() / f"{golden.hash[:16]}.json").unlink(missing_ok=True)


def kill_provisioning_half_way(golden: GoldenVM) -> str:
    """SIGKILL to a provisioning's process group once `vagrant up` has made the golden's VM: the domain
    stays (libvirt runs it), the box is never added. The next `vagrant up` of it failed on the domain's
    name being taken; now the remains are removed first. Returns the domain's name."""
    import signal

    domain = f"golden-{golden.hash[:12]}_default"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from pytest_buildenv.kinds.vm import GoldenVM; "
                             "GoldenVM(sys.argv[1], sys.argv[2]).ensure()", str(golden.vagrantfile),
                             str(golden.state_dir)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while domain not in vm.domain_names():
            assert proc.poll() is None and time.monotonic() < deadline, "the golden's VM never appeared"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert golden.box not in installed_boxes(golden.state_dir)  # half-made
    return domain
