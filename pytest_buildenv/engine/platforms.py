"""Which platforms a builder can run here: this machine's own, and those its binfmt handlers emulate.

An arm64 builder on an amd64 machine runs under qemu-user-static, registered with binfmt_misc's F flag
(the kernel opens the interpreter once, so it works inside containers too). Emulation is slow: a
command's timeout is scaled by EMULATION_FACTOR there (README: Platforms, where the figure is measured).
"""

from __future__ import annotations

import platform as host
from pathlib import Path
from typing import Optional

from ..errors import ConfigError

BINFMT = Path("/proc/sys/fs/binfmt_misc")
# benchmarks/bench_arm64.py runs a C compile and a checksum in linux/arm64 and linux/amd64 builders here:
# the compile was 21.5x slower emulated, the checksum 2.0x. A timeout is scaled by a little more than the
# worse, so a command that passes natively within its timeout passes emulated too.
EMULATION_FACTOR = 25.0

# Docker's architecture names -> the kernel's (uname -m), which binfmt handlers are named after (qemu-aarch64).
_MACHINES = {"amd64": "x86_64", "386": "i386", "arm64": "aarch64", "arm": "arm", "ppc64le": "ppc64le",
             "s390x": "s390x", "riscv64": "riscv64", "mips64le": "mips64el"}
FIX = ("install Debian's qemu-user-static (apt install qemu-user-static) and, without systemd, mount binfmt_misc "
       "(mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc) and register its handlers "
       "(/usr/lib/binfmt.d/qemu-*.conf into /proc/sys/fs/binfmt_misc/register)")


def native() -> str:
    """This machine's platform, as Docker names it."""
    machine = host.machine()
    arch = next((name for name, uname in _MACHINES.items() if uname == machine), machine)
    return f"linux/{arch}"


def machine_of(platform: str) -> str:
    arch = platform.split("/")[1]
    return _MACHINES.get(arch, arch)


def handler(platform: str) -> Optional[Path]:
    """The enabled binfmt handler that runs `platform`'s binaries here, if any."""
    entry = BINFMT / f"qemu-{machine_of(platform)}"
    return entry if handler_enabled(entry) else None


def emulated(platform: Optional[str]) -> bool:
    return platform is not None and platform.split("/")[:2] != native().split("/")[:2]


def require(platform: Optional[str], engine_is_local: bool) -> None:
    """ConfigError when `platform` cannot run on this machine's engine. An engine elsewhere has its own
    handlers, which it alone can tell (a builder that cannot start there says so)."""
    if platform is None or not emulated(platform) or not engine_is_local or handler(platform) is not None:
        return
    raise ConfigError(f"platform={platform}: this machine runs {native()} and has no binfmt handler for "
                      f"{machine_of(platform)} ({BINFMT}/qemu-{machine_of(platform)}); {FIX}")


def listing() -> str:
    """For doctor: the platforms a builder can run here, and what adds the others."""
    emulated_here = sorted(entry.name[len("qemu-"):] for entry in BINFMT.glob("qemu-*") if handler_enabled(entry))
    arches = [name for name, uname in _MACHINES.items() if uname in emulated_here and f"linux/{name}" != native()]
    runs = ", ".join([f"{native()} (native)", *(f"linux/{a} (emulated)" for a in arches)])
    missing = "" if "arm64" in arches or native() == "linux/arm64" else f"; for linux/arm64 and others, {FIX}"
    return f"platforms: {runs}{missing}"


def handler_enabled(entry: Path) -> bool:
    try:
        return entry.read_text().startswith("enabled")
    except OSError:
        return False
