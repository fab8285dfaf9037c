"""The pytest layer: options, markers, fixtures, report hooks. The work happens in BuildEnvSession.

Kinds come from the registry (registry.py); nothing here names one, except
the fixtures, which are typed so that an editor completes their methods.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, cast
from collections.abc import Iterator

import pytest

from . import hooks, kinds
from .engine.endpoint import Endpoint, resolve
from .errors import BuildEnvError
from .naming import Owner, new_session_id
from .progress import FOLLOWER
from .registry import Registry
from .reports import SECTION, save_artifacts, shorten, transcript_text
from .services import Services
from .session import BuildEnvSession
from .settings import SettingsLayer, load_config_file, parse_selection

if TYPE_CHECKING:
    from .handle import BuildEnv
    from .kinds.container import ContainerEnv
    from .kinds.dind import DindEnv
    from .kinds.kind import KindCluster, KindEnv
    from .kinds.pod import PodEnv
    from .kinds.vm import GoldenVM, VMClone

REGISTRY_KEY = pytest.StashKey[Registry]()
SESSION_KEY = pytest.StashKey[BuildEnvSession]()
ENVS_KEY = pytest.StashKey[list["BuildEnv"]]()
FAILED_KEY = pytest.StashKey[bool]()  # the test failed (setup or call): --buildenv-keep=failed keeps its environments
T = TypeVar("T")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)
    pluginmanager.register(kinds, "buildenv-builtin-kinds")  # the built-ins come through the hook too


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("buildenv", "throwaway build environments")
    group.addoption("--buildenv", default=None, metavar="KIND[,KIND...]",
                    help="kinds enabled in this run (see the markers: one per kind) or auto (default: local)")
    group.addoption("--buildenv-keep", nargs="?", const="all", default="", choices=("all", "failed"),
                    help="keep every environment (all), or those of failing tests (failed), and print how to "
                         "reach and remove them")
    group.addoption("--buildenv-engine", default=None, metavar="URL",
                    help="the container engine (unix://, tcp://, ssh://, or a socket's path); default: ini "
                         "buildenv_engine, DOCKER_HOST, the Docker CLI's current context, the default socket")
    parser.addini("buildenv_engine", "the container engine's URL (see --buildenv-engine)")
    group.addoption("--buildenv-artifacts", default=None, metavar="DIR",
                    help="copy a failing test's workspace and logs to DIR/<test id>/")
    parser.addini("buildenv", "kinds enabled by default (overridden by PYTEST_BUILDENV and --buildenv)")
    parser.addini("buildenv_config", "settings file with one section per kind (default: buildenv.yaml in rootdir)")


@pytest.hookimpl(hookwrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser) -> Iterator[None]:
    """Once every plugin and the initial conftests are loaded: the run's one registry, through the hook,
    and each kind's options and ini values from its entry (before the command line is parsed)."""
    yield
    registry = Registry.build(early_config.hook)
    group = parser.getgroup("buildenv")
    defaults = {(d.option, d.ini): d for kind in registry for d in registry.defaults(kind)}  # kinds share some
    for default in defaults.values():
        if default.option:
            group.addoption(default.option, default=None, metavar=default.key.upper(), help=default.help)
        else:
            parser.addini(default.ini, default.help)
    for ini in registry.all_ini():
        parser.addini(ini.name, ini.help, type=ini.type, default=ini.default)  # type: ignore[arg-type]
    early_config.stash[REGISTRY_KEY] = registry


def pytest_configure(config: pytest.Config) -> None:
    if REGISTRY_KEY not in config.stash:  # loaded by a conftest's pytest_plugins, after the options were parsed:
        config.stash[REGISTRY_KEY] = Registry.build(config.hook)  # the kinds' options are then absent (their defaults apply)
    registry = config.stash[REGISTRY_KEY]
    for kind in registry:
        config.addinivalue_line("markers", f"{kind}(**settings): needs the {kind} environment kind; keywords configure it")
    if config.option.help or config.option.version:
        return
    try:
        config.stash[SESSION_KEY] = _make_session(config, registry)
        config.stash[SESSION_KEY].check_settings()
    except BuildEnvError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SESSION_KEY].hold_owner_lock()
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM tears down like Ctrl-C


def _endpoint(config: pytest.Config) -> Endpoint:
    if config.option.buildenv_engine:
        return resolve(config.option.buildenv_engine, "--buildenv-engine")
    return resolve(config.getini("buildenv_engine") or None, "ini buildenv_engine")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _make_session(config: pytest.Config, registry: Registry) -> BuildEnvSession:
    workerinput = getattr(config, "workerinput", None)
    if workerinput:
        session_id, session_pid = workerinput["buildenv_session"], workerinput["buildenv_session_pid"]
    else:
        session_id, session_pid = new_session_id(), os.getpid()
    keep, artifacts = config.option.buildenv_keep or "", config.option.buildenv_artifacts
    owner = Owner(session_id, keep=bool(keep))
    defaults = _default_layers(config, registry)
    services = Services(owner, Owner(session_id, pid=session_pid, keep=bool(keep)), progress=_progress_writer(config),
                        ini={ini.name: _ini(config, ini.name, ini.default) for ini in registry.all_ini()},
                        endpoint=_endpoint(config), defaults={kind: layer.values for kind, layer in defaults.items()})
    text, source = _selection_text(config)
    selection = parse_selection(text, source, registry.names,
                                lambda kind: registry.available(kind, services, defaults[kind].values))
    return BuildEnvSession(selection, services, registry=registry, keep=keep, is_session_owner=not workerinput,
                           file_layers=_config_file_layers(config, registry), default_layers=defaults,
                           artifacts_dir=Path(artifacts).resolve() if artifacts else None)


def _ini(config: pytest.Config, name: str, default: Any = None) -> Any:
    """An ini value; `default` when it was never registered (the plugin loaded after the options were parsed)."""
    try:
        return config.getini(name)
    except ValueError:
        return default


def _default_layers(config: pytest.Config, registry: Registry) -> dict[str, SettingsLayer]:
    """Each kind's defaults from its command-line options and ini values: the weakest settings layer."""
    layers = {}
    for kind in registry:
        values = {d.key: config.getoption(d.option, None) if d.option else _ini(config, d.ini)
                  for d in registry.defaults(kind)}
        layers[kind] = SettingsLayer({k: v for k, v in values.items() if v not in (None, "")}, config.rootpath,
                                     "ini and options")
    return layers


def _selection_text(config: pytest.Config) -> tuple[Optional[str], str]:
    if config.option.buildenv:
        return config.option.buildenv, "--buildenv"
    if os.environ.get("PYTEST_BUILDENV"):
        return os.environ["PYTEST_BUILDENV"], "PYTEST_BUILDENV"
    return config.getini("buildenv") or None, "ini buildenv"


def _config_file_layers(config: pytest.Config, registry: Registry) -> dict[str, SettingsLayer]:
    named = config.getini("buildenv_config")
    path = config.rootpath / (named or "buildenv.yaml")
    if named or path.exists():
        return load_config_file(path, registry)
    return {}


def _progress_writer(config: pytest.Config) -> Callable[[str], None]:
    def write(line: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or config.option.verbose < 0:
            return
        # In a fixture's setup pytest captures the terminal too: the line would show only if the test
        # failed. Capture is lifted for it, as pytest's live logging does, from the main thread, which
        # owns capture, or from progress.follow()'s reader, whose main thread waits in follow's body
        # meanwhile. Another thread's line stays in the test's capture.
        capture = config.pluginmanager.get_plugin("capturemanager")
        owns = threading.current_thread() is threading.main_thread() or threading.current_thread().name == FOLLOWER
        lifted = capture.global_and_fixture_disabled() if capture is not None and owns else contextlib.nullcontext()
        with lifted:
            reporter.write_line(f"[buildenv] {line}")
    return write


def _session(config: pytest.Config) -> BuildEnvSession:
    return config.stash[SESSION_KEY]


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = _session(config)
    selection = session.selection
    return [f"buildenv: kinds {', '.join(selection.kinds)} (from {selection.source})", *session.header_lines()]


# --- session start and end ---------------------------------------------------
def pytest_sessionstart(session: pytest.Session) -> None:
    bs = _session(session.config)
    if not bs.is_session_owner:
        return
    try:
        for finding in bs.start():
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
    output = getattr(node, "workeroutput", {}).get("buildenv")
    if output:
        _session(node.config).add_worker_output(output)


def pytest_sessionfinish(session: pytest.Session) -> None:
    bs = _session(session.config)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["buildenv"] = bs.finish_process()
    elif bs.is_session_owner:
        bs.finish()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Optional[pytest.Item]) -> None:
    # Under xdist too, nextitem is None only for a worker's last test: spares made then would be wasted.
    _session(item.config).test_starting(last=nextitem is None)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    bs = config.stash.get(SESSION_KEY, None)
    if bs is not None and bs.is_session_owner:
        for line in bs.summary_lines():
            terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    bs = config.stash.get(SESSION_KEY, None)
    if bs is not None:
        bs.release_owner_lock()


# --- selection -----------------------------------------------------------------
def _marked_kinds(node: Any, registry: Registry) -> list[str]:
    marked = {m.name for m in node.iter_markers()}
    return [kind for kind in registry if kind in marked]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`buildenv` runs once per enabled kind the test allows (a marked but disabled kind is a skip), and
    once per variant of a matrix (image=[...]): ids [container], [container-builder:12]. A kind's own
    fixture (builder_container, ...) runs once per variant through `buildenv_variant`."""
    bs = _session(metafunc.config)
    if "buildenv" in metafunc.fixturenames:
        kinds = _marked_kinds(metafunc.definition, bs.registry) or list(bs.selection.kinds)
        params = [pytest.param((kind, variant), id=f"{kind}-{part}" if part else kind,
                               marks=() if bs.selection.enabled(kind) else pytest.mark.skip(reason=f"run with --buildenv={kind}"))
                  for kind in kinds for part, variant in _variants(metafunc, kind)]
        metafunc.parametrize("buildenv", params, indirect=True)
        return
    kind = next(filter(None, map(bs.registry.kind_of_fixture, metafunc.fixturenames)), None)
    variants = _variants(metafunc, kind) if kind is not None else []
    if len(variants) > 1:
        metafunc.parametrize("buildenv_variant", [pytest.param(v, id=f"{kind}-{part}") for part, v in variants],
                             indirect=True)


def _variants(metafunc: pytest.Metafunc, kind: str) -> list[tuple[str, dict[str, Any]]]:
    marker = metafunc.definition.get_closest_marker(kind)
    try:
        return _session(metafunc.config).variants(kind, marker.kwargs if marker else {}, metafunc.definition.path.parent)
    except BuildEnvError:
        return [("", {})]  # the test's setup reports it, in one line


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    bs = _session(config)
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "buildenv" in fixtures:
            continue  # skipped per parameter above
        needed = {*_marked_kinds(item, bs.registry), *filter(None, map(bs.registry.kind_of_fixture, fixtures))}
        missing = [kind for kind in bs.registry if kind in needed and not bs.selection.enabled(kind)]
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"run with --buildenv={','.join(missing)}"))


# --- fixtures --------------------------------------------------------------------
def _or_fail(make: Callable[[], T]) -> T:
    """`make()`, or the test fails in the error's one line (raised outside the except: no chained traceback)."""
    try:
        return make()
    except BuildEnvError as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)


def _test_settings(request: pytest.FixtureRequest, kind: str, variant: Optional[dict[str, Any]] = None) -> Any:
    marker = request.node.get_closest_marker(kind)
    return _session(request.config).settings(kind, marker.kwargs if marker else {}, request.node.path.parent,
                                             request.node.nodeid, variant)


def open_environment(request: pytest.FixtureRequest, kind: str,
                     variant: Optional[dict[str, Any]] = None) -> Iterator[BuildEnv]:
    """A fresh environment of `kind` for the requesting test, closed after it (for kinds' fixtures)."""
    bs = _session(request.config)
    tmp_path: Path = request.getfixturevalue("tmp_path")
    # One workspace per environment: a test may open two (say `buildenv` and `builder_container`).
    workspace = next(p for p in (tmp_path / f"workspace{n or ''}" for n in itertools.count()) if not p.exists())
    try:
        workspace.mkdir()
    except OSError as exc:
        pytest.fail(f"cannot make the workspace {workspace} ({exc.strerror}); "
                    "free space there, or point --basetemp at another filesystem", pytrace=False)
    scratch = request.getfixturevalue("tmp_path_factory").getbasetemp()
    env = _or_fail(lambda: bs.open(kind, _test_settings(request, kind, variant), workspace, request.node.nodeid, scratch))
    request.node.stash.setdefault(ENVS_KEY, []).append(env)
    try:
        yield env
    finally:
        bs.close(env, failed=request.node.stash.get(FAILED_KEY, False))


@pytest.fixture
def buildenv_variant(request: pytest.FixtureRequest) -> Optional[dict[str, Any]]:
    """This test's variant of a settings matrix (image=[...] in its marker or buildenv.yaml), if any."""
    return getattr(request, "param", None)


@pytest.fixture
def buildenv(request: pytest.FixtureRequest) -> Iterator[BuildEnv]:
    """A fresh environment of each enabled kind the test allows (ids [local], [container], ...)."""
    kind, variant = getattr(request, "param", ("local", {}))
    yield from open_environment(request, kind, variant)


@pytest.fixture
def builder_container(request: pytest.FixtureRequest, buildenv_variant: Optional[dict[str, Any]]) -> Iterator[ContainerEnv]:
    """A fresh builder container, workspace at /work, running as you."""
    for env in open_environment(request, "container", buildenv_variant):
        yield cast("ContainerEnv", env)


@pytest.fixture
def dind_sibling(request: pytest.FixtureRequest, buildenv_variant: Optional[dict[str, Any]]) -> Iterator[DindEnv]:
    """A builder holding the Docker socket; `.sibling(image)` starts containers sharing its workspace."""
    for env in open_environment(request, "dind", buildenv_variant):
        yield cast("DindEnv", env)


@pytest.fixture
def kind_cluster(request: pytest.FixtureRequest, buildenv_variant: Optional[dict[str, Any]]) -> Iterator[KindCluster]:
    """The run's throwaway KIND cluster (one per distinct settings, shared by all xdist workers)."""
    for env in open_environment(request, "kind", buildenv_variant):
        yield cast("KindEnv", env).cluster


@pytest.fixture
def pod_builder(request: pytest.FixtureRequest, buildenv_variant: Optional[dict[str, Any]]) -> Iterator[PodEnv]:
    """A fresh builder pod on the cluster (KUBECONFIG or ini buildenv_kubeconfig), running as you;
    the workspace copied in and out."""
    for env in open_environment(request, "pod", buildenv_variant):
        yield cast("PodEnv", env)


@pytest.fixture
def golden_vm(request: pytest.FixtureRequest) -> GoldenVM:
    """The run's golden VM: the Vagrantfile provisioned once and frozen into a box (cached by content)."""
    from .kinds.vm import Goldens  # the vm kind's module: imported when a test asks for a golden

    goldens = _session(request.config).manager_of("vm", Goldens)
    return _or_fail(lambda: goldens.golden_for(_test_settings(request, "vm")))


@pytest.fixture
def vm_clone(request: pytest.FixtureRequest, buildenv_variant: Optional[dict[str, Any]]) -> Iterator[VMClone]:
    """A throwaway clone of the golden VM; commands run over SSH."""
    for env in open_environment(request, "vm", buildenv_variant):
        yield cast("VMClone", env)


# --- reports ---------------------------------------------------------------------
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    config = item.config
    if call.excinfo is not None and config.option.verbose < 1 and not config.getoption("fulltrace", False):
        shorten(call.excinfo)  # our one line, not the 500 lines of frames and chained errors under it
    outcome: Any = yield
    report = outcome.get_result()
    envs = item.stash.get(ENVS_KEY, None)
    if report.failed:
        _session(item.config).test_failed()
        item.stash[FAILED_KEY] = True
    if report.when == "teardown" and envs is not None:
        del item.stash[ENVS_KEY]  # closed, and never read again: a session of 400 tests would hold 400
    if not envs or not report.failed or report.when == "teardown":
        return
    text = transcript_text(envs)
    report.sections.append((SECTION, text))
    item.user_properties.append(("buildenv_transcript", text))  # junitxml reads them at teardown
    artifacts = item.config.option.buildenv_artifacts
    if artifacts:
        save_artifacts(envs, item.nodeid, Path(artifacts))
