"""`rollout agent`: the host agent daemon (PROTOCOL §6); configured only through the env."""

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "agent",
        help="run the host agent (configured through the environment)",
        description="Poll the control plane and run signed update jobs. See docs/agent.md.",
    )
    p.add_argument(
        "--check", action="store_true", help="validate the configuration and exit (0 or 2)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.main import main  # the daemon loads only when asked for

    return main(check_only=args.check)
