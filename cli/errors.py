"""A CLI failure the user can fix: printed as one line, exit status 2, nothing written."""

import argparse
import sys
from typing import NoReturn


class UsageError(Exception):
    pass


class OneLineParser(argparse.ArgumentParser):
    """argparse prints a usage block on error; one `prog: error: ...` line reads better."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: error: {message}")


def fail(line: str) -> NoReturn:
    print(line, file=sys.stderr)
    raise SystemExit(2)
