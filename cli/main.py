"""Entry point of `rollout`; each subcommand module registers its own parser."""

import importlib
import sys

from cli.errors import OneLineParser
from cli.output import discard

# Module per subcommand, imported lazily so a host with only the agent extra can run `agent`.
_SUBCOMMANDS = [
    "cli.release_manifest",
    "cli.keys",
    "cli.api",
    "cli.dev",
    "cli.releases",
    "cli.rollouts",
    "cli.jobs",
    "cli.instances",
    "cli.freeze",
    "cli.windows",
    "cli.webhooks",
    "cli.agent",
    "cli.worker",
    "cli.simulate",
]


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="rollout", description="Signed releases and fleet rollouts.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for module_name in _SUBCOMMANDS:
        importlib.import_module(module_name).add_parser(sub)
    return parser


# Exit statuses a shell gives a command killed by SIGINT / SIGPIPE.
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """Ctrl-C and a reader that went away (`rollout ... | head`) end a command quietly."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        discard(sys.stdout)
        return EXIT_BROKEN_PIPE
    return code


if __name__ == "__main__":
    raise SystemExit(main())
