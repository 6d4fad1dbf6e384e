"""`python -m agent`: the same as `rollout agent`."""

import sys

from agent.main import main

sys.exit(main(check_only="--check" in sys.argv[1:]))
