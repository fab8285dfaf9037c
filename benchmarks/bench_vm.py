"""VM figures, as printed, measured in one run (root; libvirt, Vagrant and the test box installed):

  - a clone's qcow2 overlay against the golden volume it is backed by
  - time to a ready clone / `vagrant up` of the bare box (cloning should add nothing to booting)
  - per-command latency over the reused SSH connection, a fresh SSH connection, and `vagrant ssh -c`
  - a snapshot restore of a clone against making a fresh clone

    python benchmarks/bench_vm.py [VAGRANTFILE]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_buildenv.kinds.vm import GoldenVM, _vagrant

HERE = Path(__file__).resolve().parent
VAGRANTFILE = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "tests" / "data" / "vm" / "golden" / "Vagrantfile"


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def chain(domain: str) -> list[dict]:
    path = subprocess.run(["virsh", "-c", "qemu:///system", "vol-path", "--pool", "default", f"{domain}.img"],
                          capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", "--backing-chain", path],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="bench-vm-"))
    golden = GoldenVM(VAGRANTFILE, state, progress=print)
    golden.ensure()

    bare_dir = state / "bare"
    bare_dir.mkdir()
    bare_dir.joinpath("Vagrantfile").write_text(f'Vagrant.configure("2") do |c|\n  c.vm.box = "{golden.base_box}"\nend\n')
    bare = _vagrant(bare_dir, bare_dir / "log")
    t_bare = timed(lambda: bare.up(no_provision=True, provider="libvirt"))
    bare.destroy()

    clone_holder = []
    (state / "ws").mkdir()
    t_clone = timed(lambda: clone_holder.append(golden.clone(state / "ws")))
    clone = clone_holder[0]
    try:
        layers = chain(clone.domain)
        overlay, base = layers[0], layers[-1]
        print(f"clone overlay: {overlay['actual-size'] / 2**20:.1f} MiB on a golden volume of "
              f"{base['actual-size'] / 2**20:.0f} MiB (virtual {base['virtual-size'] / 2**30:.0f} GiB)")
        print(f"time to a ready clone {t_clone:.1f} s / vagrant up of the bare box {t_bare:.1f} s = "
              f"{t_clone / t_bare:.2f}")

        reused = statistics.median(timed(lambda: clone.run(["true"])) for _ in range(20))
        fresh_ssh = statistics.median(timed(lambda: subprocess.run(
            ["ssh", "-F", str(clone.ssh_config), "-o", "ControlPath=none", "default", "true"], check=True))
            for _ in range(5))
        vagrant_ssh = statistics.median(timed(lambda: subprocess.run(
            ["vagrant", "ssh", "-c", "true"], cwd=clone.dir, capture_output=True, check=True)) for _ in range(3))
        print(f"per command: reused connection {reused * 1000:.0f} ms, fresh ssh {fresh_ssh * 1000:.0f} ms, "
              f"vagrant ssh {vagrant_ssh * 1000:.0f} ms (reuse is {fresh_ssh / reused:.1f}x faster than fresh ssh)")

        machine = _vagrant(clone.dir, clone.dir / "snap.log")
        t_save = timed(lambda: machine.snapshot_save("boot"))
        clone.run("echo dirty > dirty", check=True)
        t_restore = timed(lambda: (machine.snapshot_restore("boot"), clone.reconnect()))
        clean = not clone.artifact("dirty").exists
        print(f"snapshot: save {t_save:.1f} s, restore {t_restore:.1f} s (state reset: {clean}); "
              f"restore / fresh clone = {t_restore / t_clone:.2f}")
    finally:
        clone.close()


if __name__ == "__main__":
    main()
