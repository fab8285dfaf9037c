"""Vagrant helpers: the vagrant CLI (through python-vagrant) and its failures, what a Vagrantfile
defines (asked of Vagrant itself), and where an installed box lives."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from collections.abc import Mapping

from ...errors import ConfigError, VMError, tail

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


_STEP = re.compile(r"^(==> |Bringing machine |[\w.-]+: )")  # Vagrant's steps, and a machine's output under them


def log_cause(text: str) -> str:
    """The line that says why: libvirt's first error, else the last error line, else Vagrant's own last
    words (the lines after its last step, which it wraps at 80 columns) as one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _FRAME.search(line)]
    found = _CAUSES[0].search(text)
    if found:
        return found.group(0).strip()[:400]
    errors = [line for line in lines if _CAUSES[1].match(line)]
    if errors:
        return errors[-1][:400]
    last: list[str] = []
    for line in reversed(lines):
        if _STEP.match(line):
            break
        last.insert(0, line)
    return " ".join(last or lines[-1:] or ["no output"])[:400]


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
