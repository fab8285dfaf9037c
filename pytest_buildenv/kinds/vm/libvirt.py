"""libvirt helpers: the domains carrying our labels (clones of golden VMs) and the volumes golden boxes
take in a storage pool, through virsh."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Optional

DESCRIPTION_MARK = "pytest-buildenv "  # libvirt domain descriptions start with it, then JSON labels
LABEL_BOX = "pytest-buildenv.box"  # on a clone's domain: the golden box it was made from


# --- for the reaper: domains carry our labels in their description --------------
def domain_names(uri: str = "qemu:///system") -> list[str]:
    """Every domain's name, ours or not (none without virsh)."""
    if shutil.which("virsh") is None:
        return []
    names = subprocess.run(["virsh", "-c", uri, "list", "--all", "--name"], capture_output=True, text=True)
    return [line.strip() for line in names.stdout.splitlines() if line.strip()]


def labelled_domains(uri: str = "qemu:///system") -> list[tuple[str, dict[str, str]]]:
    found = []
    for name in domain_names(uri):
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


def boxes_in_use(uri: str = "qemu:///system") -> set[str]:
    """Golden boxes that clones (existing libvirt domains) were made from."""
    return {labels[LABEL_BOX] for _, labels in labelled_domains(uri) if LABEL_BOX in labels}


def _pool_volumes(pool: str = "default", uri: str = "qemu:///system") -> list[str]:
    listed = subprocess.run(["virsh", "-c", uri, "vol-list", pool], capture_output=True, text=True)
    return [line.split()[0] for line in listed.stdout.splitlines()[2:] if line.strip()]  # below the header


def _box_volumes(box: str, pool: str = "default", uri: str = "qemu:///system",
                 volumes: Optional[list[str]] = None) -> list[str]:
    """vagrant-libvirt uploads a box into the pool as <box, / as -VAGRANTSLASH->_vagrant_box_image_<...>."""
    prefix = box.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"
    return [name for name in (volumes if volumes is not None else _pool_volumes(pool, uri)) if name.startswith(prefix)]


def _volume_bytes(volume: str, pool: str = "default", uri: str = "qemu:///system") -> int:
    info = subprocess.run(["virsh", "-c", uri, "vol-info", "--pool", pool, volume, "--bytes"],
                          capture_output=True, text=True).stdout
    match = re.search(r"^Allocation:\s+(\d+)", info, re.MULTILINE)
    return int(match.group(1)) if match else 0
