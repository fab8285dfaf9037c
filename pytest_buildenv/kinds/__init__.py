"""The built-in kinds, registered through the same hook as any other package's (see registry.py).

Each entry names its module (imported when the kind is first used) and what pytest must know
before that: the fixtures that need the kind, the options and ini values that set its defaults.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, cast

import pluggy

from .. import hooks
from ..hooks import hookimpl
from ..registry import Default, Entry, Ini, Registry

IMAGE = Default("image", ini="buildenv_image", help="default image for container, dind and pod")
PIDS = Default("pids", ini="buildenv_pids", help="process limit of a builder (default 4096; 0: none)")
BUILDER_INI = (
    Ini("buildenv_engine_wait", "seconds to wait for an unreachable engine before failing a test", default="60"),
    Ini("buildenv_spares", "builders pre-started per settings while tests run (0: none)", default="2"),
    Ini("buildenv_share_network", "builders of one process join a holder's network namespace "
        "(one open builder per holder) instead of each making one", type="bool", default=True),
)

REUSE_INI = (
    Ini("buildenv_reuse", "kinds whose environments are kept for later sessions with the same settings, "
        "e.g. kind (default: none)"),
    Ini("buildenv_reuse_ttl", "how long a kept environment lives from when it is made: 24h, 90m, 30s "
        "(a bare number is hours)", default="24h"),
)

BUILTIN: dict[str, Entry] = {
    "local": Entry("pytest_buildenv.kinds.local"),
    "container": Entry("pytest_buildenv.kinds.container", ("builder_container",), (IMAGE, PIDS), BUILDER_INI),
    "dind": Entry("pytest_buildenv.kinds.dind", ("dind_sibling",), (IMAGE, PIDS), BUILDER_INI),
    "kind": Entry("pytest_buildenv.kinds.kind", ("kind_cluster",), (
        Default("kind_bin", option="--kind-bin", help="the kind executable (default: kind on PATH)"),
        Default("image", option="--kind-image", help="KIND node image (kind create cluster --image)"),
        Default("cluster", option="--kind-cluster",
                help="reuse this existing KIND cluster instead of creating one; it is never deleted"),
    ), REUSE_INI),
    "pod": Entry("pytest_buildenv.kinds.pod", ("pod_builder",), (
        IMAGE,
        Default("kubeconfig", ini="buildenv_kubeconfig", help="the pod kind's kubeconfig (default: KUBECONFIG, then "
                                                              "~/.kube/config)"),
        Default("kube_context", option="--buildenv-kube-context", help="the kubeconfig's context for the pod kind "
                                                                       "(default: its current context)"),
        Default("helper_image", ini="buildenv_pod_helper_image", help="the image whose static busybox every builder "
                                                                      "pod gets (default busybox:1.36)"),
    )),
    "vm": Entry("pytest_buildenv.kinds.vm", ("golden_vm", "vm_clone"), (
        Default("vagrantfile", option="--vagrantfile", help="the golden VM's Vagrantfile (vm kind)"),
    ), (Ini("buildenv_golden_keep", "golden boxes kept per Vagrantfile; older ones are removed (default 2)",
            default="2"),)),
}


@hookimpl(tryfirst=True)  # the built-ins first: they lead the listings
def pytest_buildenv_register_kinds(registry: Registry) -> None:
    for name, entry in BUILTIN.items():
        registry.add(name, entry)


class _Plugins(pluggy.PluginManager):
    """pytest's way of finding hook implementations: marked, or named pytest_buildenv_* (as a conftest writes them)."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Optional[pluggy.HookimplOpts]:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("pytest_buildenv_") and callable(getattr(plugin, name, None)):
            return cast(pluggy.HookimplOpts, {})
        return opts


def discover() -> Registry:
    """The registry as a pytest run builds it, for `python -m pytest_buildenv` and sessions made without
    pytest: the built-ins, then the kinds of every installed pytest plugin (its pytest11 entry point)."""
    plugins = _Plugins("pytest")
    plugins.add_hookspecs(hooks)
    plugins.register(sys.modules[__name__], "buildenv-builtin-kinds")
    plugins.load_setuptools_entrypoints("pytest11")
    return Registry.build(plugins.hook)
