"""`python -m pytest_buildenv reap|doctor`."""

from __future__ import annotations

import argparse
import sys
from typing import Optional
from collections.abc import Sequence

from .doctor import run_doctor
from .engine.endpoint import resolve
from .errors import BuildEnvError
from .kinds import discover
from .naming import Owner, new_session_id
from .reaper import reap_kinds
from .registry import Registry
from .services import Services


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_buildenv")
    commands = parser.add_subparsers(dest="command", required=True)
    reap = commands.add_parser("reap", help="remove resources whose owning session is dead")
    reap.add_argument("--dry-run", action="store_true", help="list what would be removed, and why")
    reap.add_argument("--session", help="only this session's resources")
    reap.add_argument("--include-kept", action="store_true", help="also resources kept with --buildenv-keep")
    reap.add_argument("--include-cache", action="store_true", help="also cached provisioned snapshots")
    reap.add_argument("--include-reusable", action="store_true",
                      help="also environments kept for later sessions (ini buildenv_reuse) that no session holds")
    reap.add_argument("--buildenv", default="", metavar="KIND[,KIND...]", help="only these kinds' resources")
    reap.add_argument("--older-than", type=float, metavar="HOURS",
                      help="also remove other hosts' resources older than this")
    doctor = commands.add_parser("doctor", help="say, for each kind, whether it is usable here and why not")
    doctor.add_argument("--buildenv", default="", metavar="KIND[,KIND...]",
                        help="exit non-zero if one of these kinds is unavailable")
    doctor.add_argument("--kind-bin", default="kind", help="the kind executable to check")
    for command in (reap, doctor):
        command.add_argument("--engine", metavar="URL", help="the container engine (default: DOCKER_HOST, the "
                             "Docker CLI's current context, the default socket)")
        command.add_argument("--kube-context", help="the pod kind's kubeconfig context (the kubeconfig: KUBECONFIG, "
                             "then ~/.kube/config)")
    args = parser.parse_args(argv)
    try:
        registry = discover()  # as pytest finds them: the built-ins and every installed plugin's kinds
        services = Services(Owner(new_session_id()), endpoint=resolve(args.engine, "--engine"),
                            defaults={"pod": {"kube_context": args.kube_context}})
        if args.command == "reap":
            return _reap(args, registry, services)
        return run_doctor(args.buildenv, defaults={"kind_bin": args.kind_bin, "kube_context": args.kube_context},
                          registry=registry, services=services)
    except BuildEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _reap(args: argparse.Namespace, registry: Registry, services: Services) -> int:
    """Every kind's leftovers; what cannot be looked at (an engine that does not answer) is named."""
    max_age = args.older_than * 3600 if args.older_than is not None else None
    kinds = [k.strip() for k in args.buildenv.split(",") if k.strip()] or list(registry)
    unknown = [k for k in kinds if k not in registry]
    if unknown:
        print(f"unknown kind {unknown[0]!r}; choose from {', '.join(registry.names)}", file=sys.stderr)
        return 2
    findings = reap_kinds(kinds, registry, services, dry_run=args.dry_run, session=args.session, include_kept=args.include_kept,
                          foreign_max_age=max_age, include_cache=args.include_cache,
                          include_reusable=args.include_reusable,
                          unreachable=lambda why: print(f"not looked at: {why}"))
    for finding in findings:
        verb = "would remove" if args.dry_run and finding.action == "remove" else finding.action
        print(f"{verb}: {finding.resource} {finding.name} (session {finding.session}: {finding.reason})")
    removed = sum(f.action == "remove" for f in findings)
    print(f"{'would remove' if args.dry_run else 'removed'} {removed} of {len(findings)} labelled resources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
