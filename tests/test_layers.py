"""What may import what: each folder holds what its name says, and the layers only look down.

Read from the source (ast), so no module is run: every `import` and `from ... import` of every
module counts, inside functions and `if TYPE_CHECKING:` too. A rule names modules (a package or
one module) and the imports they must not make (a package, a module, or a third-party
distribution's import name), with the reason; `allowed` lists what a forbidden prefix still
allows. A failure lists each module, the import, and the rule it breaks.
"""

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = (
    "contract",
    "runtime",
    "domain",
    "store",
    "server",
    "temporal_client",
    "services",
    "api",
    "activities",
    "workflows",
    "worker",
    "agent",
    "cli",
    "devstack",
    "simulator",
    "benchmarks",
)
# What only the server installs (the `[server]` extra): hosts never have it.
SERVER_LIBRARIES = (
    "temporalio",
    "fastapi",
    "starlette",
    "uvicorn",
    "asyncpg",
    "pydantic_settings",
    "prometheus_client",
)
SERVER_SIDE = (
    "server",
    "store",
    "domain",
    "temporal_client",
    "services",
    "api",
    "activities",
    "workflows",
    "worker",
    "devstack",
)
NOT_BELOW_STORE = ("services", "api", "workflows", "activities", "temporal_client", "worker")


@dataclass(frozen=True)
class Rule:
    modules: str
    forbidden: tuple[str, ...]
    why: str
    allowed: tuple[str, ...] = ()


RULES = (
    Rule(
        "agent",
        (*SERVER_LIBRARIES, *SERVER_SIDE, "cli", "simulator"),
        "the agent installs without the server's dependencies and shares only contract/ and"
        " runtime/ with it",
    ),
    Rule(
        "contract",
        (*SERVER_LIBRARIES, "httpx", *(p for p in FIRST_PARTY if p != "contract")),
        "the wire contract is all that agents and the control plane share: it depends on"
        " nothing of either",
    ),
    Rule(
        "runtime",
        (*SERVER_LIBRARIES, "httpx", "pydantic", *(p for p in FIRST_PARTY if p != "runtime")),
        "process plumbing every process (the agent included) runs on: standard library only",
    ),
    Rule(
        "domain",
        (*SERVER_LIBRARIES, "httpx", *(p for p in FIRST_PARTY if p not in ("domain", "contract"))),
        "records shared by the workflow code and the store: plain pydantic, no I/O",
    ),
    Rule(
        "workflows",
        ("asyncpg", "fastapi", "starlette", "uvicorn", "httpx", "prometheus_client", "store")
        + ("temporalio.client", "temporalio.service", "api", "services", "temporal_client")
        + ("worker", "cli"),
        "workflow code is deterministic and does no I/O: SQL belongs to activities, calls on"
        " Temporal to temporal_client",
    ),
    Rule(
        "workflows.rollout_machine",
        ("temporalio", "store", "activities", "workflows.rollout", "workflows.read_model_writer"),
        "the state machine is plain Python, the same in a test, a replay and a live workflow",
    ),
    Rule(
        "workflows.rollout_text",
        ("temporalio", "store", "activities"),
        "the words people see are plain Python, like the machine that uses them",
    ),
    Rule(
        "store",
        (*NOT_BELOW_STORE, "temporalio", "fastapi", "starlette", "httpx"),
        "the store is SQL only; everything above it may use it, it uses none of them",
    ),
    Rule(
        "server",
        (*NOT_BELOW_STORE, "store", "temporalio", "fastapi"),
        "settings from the environment, read by every server process: below all of them",
    ),
    Rule(
        "temporal_client",
        ("api", "services", "store", "worker", "cli", "fastapi", "asyncpg"),
        "the client side of Temporal, called by the API's services, the worker and tests",
    ),
    Rule(
        "services",
        ("api", "fastapi", "starlette", "uvicorn", "worker", "cli"),
        "flows in domain terms: the API maps them to HTTP, not the other way round",
    ),
    Rule(
        "activities",
        ("api", "services", "temporal_client", "fastapi", "worker", "cli"),
        "activities are the workflow's I/O against the store, run by the worker",
    ),
    Rule(
        "api",
        ("workflows", "activities", "worker"),
        "the API reaches workflows through services and temporal_client; of workflows/ it may"
        " read the payload models only",
        allowed=("workflows.rollout_models",),
    ),
    Rule(
        "simulator",
        (*SERVER_SIDE,),
        "the simulator drives the control plane as agents and operators do: over HTTP",
    ),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every module the file imports, absolute; `from a import b` counts as `a` and `a.b`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _all_modules() -> dict[str, set[str]]:
    modules = {}
    for package in FIRST_PARTY:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = _module_name(path)
            modules[name] = _imports(path, name)
    return modules


MODULES = _all_modules()


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _breaks(rule: Rule, imported: str) -> bool:
    forbidden = any(_within(imported, f) for f in rule.forbidden)
    return forbidden and not any(_within(imported, a) for a in rule.allowed)


def test_the_rules_name_modules_that_exist() -> None:
    for rule in RULES:
        assert any(_within(m, rule.modules) for m in MODULES), f"no module {rule.modules}"


def _broken_imports(rule: Rule, imports: set[str]) -> list[str]:
    """The imports breaking `rule`, each once: `store.jobs`, not also `store.jobs.JobWrite`."""
    broken = {imported for imported in imports if _breaks(rule, imported)}
    return sorted(i for i in broken if not any(o != i and _within(i, o) for o in broken))


def test_every_module_keeps_to_its_layer() -> None:
    broken = [
        f"{module} imports {imported}; rule for {rule.modules}: {rule.why}"
        for rule in RULES
        for module, imports in sorted(MODULES.items())
        if _within(module, rule.modules)
        for imported in _broken_imports(rule, imports)
    ]
    assert not broken, "layering broken:\n" + "\n".join(broken)


def _reached_from(module: str) -> set[str]:
    """Every first-party module `module` loads, through any chain of imports."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for imported in MODULES.get(current, ()):
            if imported in MODULES and imported not in seen:
                seen.add(imported)
                todo.append(imported)
                # Importing a.b.c runs a/__init__ and a/b/__init__ first.
                parent = imported.rpartition(".")[0]
                while parent:
                    if parent in MODULES and parent not in seen:
                        seen.add(parent)
                        todo.append(parent)
                    parent = parent.rpartition(".")[0]
    return seen


def test_the_state_machine_loads_nothing_of_temporal_or_the_database_even_indirectly() -> None:
    """Not only its own imports: nothing it loads may load Temporal, asyncpg or the store."""
    for pure in ("workflows.rollout_machine", "workflows.rollout_text"):
        chains = {
            f"{through} imports {imported}"
            for through in {pure} | _reached_from(pure)
            for imported in MODULES[through]
            if any(_within(imported, f) for f in ("temporalio", "asyncpg", "store"))
        }
        assert not chains, f"{pure} loads, indirectly: {sorted(chains)}"


def test_the_agent_loads_nothing_server_side_even_indirectly() -> None:
    """`pip install '.[agent]'` has none of the server's libraries: an indirect import of one
    would fail on a host."""
    agent_modules = [m for m in MODULES if _within(m, "agent")]
    reached = set(agent_modules).union(*(_reached_from(m) for m in agent_modules))
    chains = sorted(
        f"{module} imports {imported}"
        for module in reached
        for imported in MODULES[module]
        if any(_within(imported, f) for f in SERVER_LIBRARIES)
    )
    assert not chains, f"the agent loads server libraries: {chains}"
