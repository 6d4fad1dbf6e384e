"""`rollout dev`: run the whole control plane on embedded defaults."""

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dev",
        help="run the control plane on embedded defaults (data in $ROLLOUT_DATA_DIR or .data)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from devstack.stack import main

    return main()
