"""The pytest layer: options, markers, fixtures, report hooks. The work happens elsewhere."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

import pytest

from .config import KINDS, Layer, load_config_file, parse_selection
from .errors import BuildEnvError
from .naming import Owner, new_session_id

SESSION_KEY = pytest.StashKey["Any"]()
ENVS_KEY = pytest.StashKey[list]()
T = TypeVar("T")

FIXTURE_KINDS = {"builder_container": "container", "dind_sibling": "dind", "kind_cluster": "kind",
                 "golden_vm": "vm", "vm_clone": "vm"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("buildenv", "throwaway build environments")
    group.addoption("--buildenv", default=None, metavar="KIND[,KIND...]",
                    help=f"kinds enabled in this run: {', '.join(KINDS)} or auto (default: local)")
    group.addoption("--buildenv-keep", action="store_true", default=False,
                    help="keep every environment and print how to reach and remove it")
    group.addoption("--buildenv-artifacts", default=None, metavar="DIR",
                    help="copy a failing test's workspace and logs to DIR/<test id>/")
    group.addoption("--kind-bin", default="kind", metavar="PATH", help="the kind executable (default: kind on PATH)")
    group.addoption("--kind-image", default=None, metavar="IMAGE", help="KIND node image (kind create cluster --image)")
    group.addoption("--kind-cluster", default=None, metavar="NAME",
                    help="reuse this existing KIND cluster instead of creating one; it is never deleted")
    group.addoption("--vagrantfile", default=None, metavar="PATH", help="the golden VM's Vagrantfile (vm kind)")
    parser.addini("buildenv", "kinds enabled by default (overridden by PYTEST_BUILDENV and --buildenv)")
    parser.addini("buildenv_config", "settings file with one section per kind (default: buildenv.yaml in rootdir)")
    parser.addini("buildenv_image", "default image for container and dind")
    parser.addini("buildenv_timeout", "default per-command timeout in seconds")
    parser.addini("buildenv_spares", "builders pre-started per settings while tests run (0: none)", default="2")
    parser.addini("buildenv_share_network", "builders of one process join a holder's network namespace "
                  "(one open builder per holder) instead of each making one", type="bool", default=True)


def pytest_configure(config: pytest.Config) -> None:
    for kind in KINDS:
        config.addinivalue_line("markers", f"{kind}(**settings): needs the {kind} environment kind; keywords configure it")
    if config.option.help or config.option.version:
        return
    try:
        config.stash[SESSION_KEY] = _make_session(config)
    except BuildEnvError as exc:
        raise pytest.UsageError(str(exc)) from None
    from .reaper import OwnerLock

    config.stash[SESSION_KEY].owner_lock = OwnerLock()
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM tears down like Ctrl-C


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _make_session(config: pytest.Config) -> Any:
    from .backends import available
    from .session import BuildEnvSession

    workerinput = getattr(config, "workerinput", None)
    if workerinput:
        session_id, session_pid = workerinput["buildenv_session"], workerinput["buildenv_session_pid"]
    else:
        session_id, session_pid = new_session_id(), os.getpid()
    text, source = _selection_text(config)
    keep, kind_bin = config.option.buildenv_keep, config.option.kind_bin
    artifacts = config.option.buildenv_artifacts
    return BuildEnvSession(
        parse_selection(text, source, lambda kind: available(kind, kind_bin)),
        Owner(session_id, keep=keep),
        session_owner=Owner(session_id, pid=session_pid, keep=keep),
        file_layers=_config_file_layers(config),
        ini_layers=_ini_layers(config),
        is_session_owner=not workerinput,
        kind_bin=kind_bin,
        artifacts_dir=Path(artifacts).resolve() if artifacts else None,
        progress=_progress_writer(config),
        share_network=config.getini("buildenv_share_network"),
    )


def _ini_layers(config: pytest.Config) -> dict[str, Layer]:
    """Defaults from ini and command-line options, weakest of the settings layers."""
    timeout = config.getini("buildenv_timeout") or None
    image = config.getini("buildenv_image") or None
    per_kind = {
        "local": {"timeout": timeout},
        "container": {"timeout": timeout, "image": image},
        "dind": {"timeout": timeout, "image": image},
        "kind": {"timeout": timeout, "image": config.option.kind_image, "cluster": config.option.kind_cluster},
        "vm": {"timeout": timeout, "vagrantfile": config.option.vagrantfile},
    }
    return {kind: Layer({k: v for k, v in values.items() if v is not None}, config.rootpath, "ini and options")
            for kind, values in per_kind.items()}


def _selection_text(config: pytest.Config) -> tuple[Optional[str], str]:
    if config.option.buildenv:
        return config.option.buildenv, "--buildenv"
    if os.environ.get("PYTEST_BUILDENV"):
        return os.environ["PYTEST_BUILDENV"], "PYTEST_BUILDENV"
    return config.getini("buildenv") or None, "ini buildenv"


def _config_file_layers(config: pytest.Config) -> dict[str, Layer]:
    named = config.getini("buildenv_config")
    path = config.rootpath / (named or "buildenv.yaml")
    if named or path.exists():
        return load_config_file(path)
    return {}


def _progress_writer(config: pytest.Config) -> Any:
    def write(line: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and config.get_verbosity() >= 0:
            reporter.write_line(f"[buildenv] {line}")
    return write


def _session(config: pytest.Config) -> Any:
    return config.stash[SESSION_KEY]


def pytest_report_header(config: pytest.Config) -> str:
    selection = _session(config).selection
    return f"buildenv: kinds {', '.join(selection.kinds)} (from {selection.source})"


# --- session start and end ---------------------------------------------------
def pytest_sessionstart(session: pytest.Session) -> None:
    bs = _session(session.config)
    if not bs.is_session_owner:
        return
    try:
        bs.check_explicit_kinds()
        if bs.reaps:
            for finding in bs.reap_dead():
                bs.progress(f"reaped {finding.resource} {finding.name} ({finding.reason})")
    except BuildEnvError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    bs = _session(node.config)
    node.workerinput["buildenv_session"] = bs.owner.session
    node.workerinput["buildenv_session_pid"] = os.getpid()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    stats = getattr(node, "workeroutput", {}).get("buildenv_stats")
    if stats:
        _session(node.config).stats.add(stats)
    if getattr(node, "workeroutput", {}).get("buildenv_failed"):
        _session(node.config).failed = True


def pytest_sessionfinish(session: pytest.Session) -> None:
    bs = _session(session.config)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        bs.wait_for_teardown()
        workeroutput["buildenv_stats"] = bs.stats.as_dict()
        workeroutput["buildenv_failed"] = bs.failed
    elif bs.is_session_owner:
        bs.finish()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Optional[pytest.Item]) -> None:
    # Under xdist too, nextitem is None only for a worker's last test: spares made then would be wasted.
    _session(item.config).more_tests_coming = nextitem is not None


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    bs = config.stash.get(SESSION_KEY, None)
    if bs is not None and bs.is_session_owner:
        for line in bs.summary_lines():
            terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    bs = config.stash.get(SESSION_KEY, None)
    if bs is not None:
        bs.owner_lock.release()


# --- selection -----------------------------------------------------------------
def _marked_kinds(node: Any) -> list[str]:
    marked = {m.name for m in node.iter_markers()}
    return [kind for kind in KINDS if kind in marked]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`buildenv` runs once per enabled kind the test allows; a marked but disabled kind is a skip."""
    if "buildenv" not in metafunc.fixturenames:
        return
    selection = _session(metafunc.config).selection
    marked = _marked_kinds(metafunc.definition)
    kinds = marked or list(selection.kinds)
    params = [pytest.param(kind, id=kind, marks=() if selection.enabled(kind)
                           else pytest.mark.skip(reason=f"run with --buildenv={kind}"))
              for kind in kinds]
    metafunc.parametrize("buildenv", params, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selection = _session(config).selection
    for item in items:
        if "buildenv" in getattr(item, "fixturenames", ()):
            continue  # skipped per parameter above
        needed = _marked_kinds(item) + [k for f, k in FIXTURE_KINDS.items() if f in getattr(item, "fixturenames", ())]
        missing = [kind for kind in KINDS if kind in needed and not selection.enabled(kind)]
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"run with --buildenv={','.join(missing)}"))


# --- fixtures --------------------------------------------------------------------
def _test_settings(request: pytest.FixtureRequest, kind: str) -> Any:
    """The kind's settings for this test: ini < buildenv.yaml < the test's marker."""
    marker = request.node.get_closest_marker(kind)
    return _session(request.config).settings(kind, marker.kwargs if marker else {}, request.node.path.parent,
                                             request.node.nodeid)


def _or_fail(make: Callable[[], T]) -> T:
    """`make()`, or the test fails in the error's one line (raised outside the except: no chained traceback)."""
    try:
        return make()
    except BuildEnvError as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)


def _open_env(request: pytest.FixtureRequest, kind: str, workspace: Path) -> Iterator[Any]:
    bs = _session(request.config)
    env = _or_fail(lambda: bs.open(kind, _test_settings(request, kind), workspace, request.node.nodeid))
    request.node.stash.setdefault(ENVS_KEY, []).append(env)
    try:
        yield env
    finally:
        bs.close(env)


def _workspace(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    bs = _session(request.config)
    spares = int(request.config.getini("buildenv_spares") or 0)
    if bs.spares is None and spares > 0:
        from .spares import SparePool

        # Under basetemp, so that it is on a bind mount when pytest runs in a runner container.
        root = request.getfixturevalue("tmp_path_factory").getbasetemp() / "buildenv-workspaces"
        bs.spares = SparePool(root, depth=spares)
    # One per environment: a test may open two (say `buildenv` and `builder_container`).
    workspace = next(p for p in (tmp_path / f"workspace{n or ''}" for n in itertools.count()) if not p.exists())
    workspace.mkdir()
    return workspace


@pytest.fixture
def buildenv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh environment of each enabled kind the test allows (ids [local], [container], ...)."""
    kind = getattr(request, "param", "local")
    yield from _open_env(request, kind, _workspace(request, tmp_path))


@pytest.fixture
def builder_container(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh builder container, workspace at /work, running as you."""
    yield from _open_env(request, "container", _workspace(request, tmp_path))


@pytest.fixture
def dind_sibling(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A builder holding the Docker socket; `.sibling(image)` starts containers sharing its workspace."""
    yield from _open_env(request, "dind", _workspace(request, tmp_path))


@pytest.fixture
def kind_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The run's throwaway KIND cluster (one per distinct settings, shared by all xdist workers)."""
    for env in _open_env(request, "kind", _workspace(request, tmp_path)):
        yield env.cluster


@pytest.fixture
def golden_vm(request: pytest.FixtureRequest) -> Any:
    """The run's golden VM: the Vagrantfile provisioned once and frozen into a box (cached by content)."""
    return _or_fail(lambda: _session(request.config).goldens.golden_for(_test_settings(request, "vm")))


@pytest.fixture
def vm_clone(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A throwaway clone of the golden VM; commands run over SSH."""
    yield from _open_env(request, "vm", _workspace(request, tmp_path))


# --- reports ---------------------------------------------------------------------
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    envs = item.stash.get(ENVS_KEY, None)
    if report.failed:
        _session(item.config).failed = True
    if not envs or not report.failed or report.when == "teardown":
        return
    from .reports import SECTION, save_artifacts, transcript_text

    text = transcript_text(envs)
    report.sections.append((SECTION, text))
    item.user_properties.append(("buildenv_transcript", text))  # junitxml reads them at teardown
    artifacts = item.config.option.buildenv_artifacts
    if artifacts:
        save_artifacts(envs, item.nodeid, Path(artifacts))
