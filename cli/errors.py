"""A CLI failure the user can fix: printed as one line, exit status 2, nothing written."""

import argparse
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from server.settings import S


class UsageError(Exception):
    pass


class OneLineParser(argparse.ArgumentParser):
    """argparse prints a usage block on error; one `prog: error: ...` line reads better."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: error: {message}")


def fail(line: str) -> NoReturn:
    print(line, file=sys.stderr)
    raise SystemExit(2)


def settings_or_exit(cls: "type[S]", command: str) -> "S":
    """Settings from env, or one line naming every problem and exit 2 (no secret is echoed)."""
    from server.settings import SettingsError, load_settings

    try:
        return load_settings(cls)
    except SettingsError as exc:
        fail(f"{command}: refusing to start: {exc}")
