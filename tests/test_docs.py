"""libc-service docs: a policy's documentation, generated from its router.

A reviewer reads the Markdown page, a tool the JSON document; both must say
exactly what the router does, the same way every time.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from libc_service.tools.docs import JSON_SCHEMA, describe_policy, render_policy
from libc_service.tools.policy_file import LoadedPolicy, load_policy
from libc_service.protocol.requests import FUNCTIONS

ROOT = Path(__file__).resolve().parent.parent

POLICY = '''\
"""A policy for the documentation tests.

It refuses writes and serves one tree.
"""
import errno
from libc_service import PASS, Errno, Router, Sandbox, WithFds, deny
from libc_service.policy.conditions import named, to, under, writing
from libc_service.acting.safepath import open_beneath

router = Router(default=deny(errno.EPERM), timeout=2.5)
sandbox = Sandbox(allow_read=["/usr/share"], allow_write=["/tmp/scratch"], allow_exec=["/usr/bin"])


@router.on("open", "openat", "unlink", when=writing())
def refuse_writes(req):
    """Nothing is written.

    A second paragraph that the summary leaves out.
    """
    raise Errno(errno.EROFS)


@router.on("open", "openat", when=[under("/srv/data"), ~writing()])
def serve_data(req):
    """Files under /srv/data are opened by the master."""
    return WithFds(0, [open_beneath("/srv/data", req)])


@router.on("connect_inet", when=to("127.0.0.1:8080") | to("10.0.0.0/8:*"))
async def local_web(req):
    return PASS


@router.on("getaddrinfo", when=named("db.internal"))
def db(req):
    """The database's address."""
    return "noname"


@router.on("getaddrinfo")
def everything_else(req):
    """No other name resolves."""
    return "noname"
'''


def write_policy(directory: Path, text: str = POLICY, name: str = "policy.py") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture
def policy(tmp_path: Path) -> LoadedPolicy:
    return load_policy(str(write_policy(tmp_path / "a")))


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libc_service", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


# --------------------------------------------------------------- determinism


def test_two_renders_of_a_policy_are_identical(policy: LoadedPolicy) -> None:
    for fmt in ("md", "json"):
        assert render_policy(policy, fmt=fmt) == render_policy(policy, fmt=fmt)  # type: ignore[arg-type]


def test_the_same_policy_in_two_places_renders_the_same_bytes(tmp_path: Path) -> None:
    first = load_policy(str(write_policy(tmp_path / "one" / "deep")))
    second = load_policy(str(write_policy(tmp_path / "two")))
    for fmt in ("md", "json"):
        text = render_policy(first, fmt=fmt)  # type: ignore[arg-type]
        assert text == render_policy(second, fmt=fmt)  # type: ignore[arg-type]
        assert str(tmp_path) not in text
        assert not re.search(r"0x[0-9a-f]{6,}", text), "a memory address leaked into the output"


def test_a_fresh_process_renders_the_same_bytes(tmp_path: Path) -> None:
    path = write_policy(tmp_path)
    runs = [cli("docs", "--format", fmt, str(path)) for fmt in ("md", "json", "md", "json")]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    assert runs[0].stdout == runs[2].stdout and runs[1].stdout == runs[3].stdout
    assert runs[0].stdout == render_policy(load_policy(str(path)), fmt="md")


# --------------------------------------------------------------- Markdown page


def test_every_function_is_listed_in_the_protocols_order(policy: LoadedPolicy) -> None:
    page = render_policy(policy, fmt="md")
    rows = re.findall(r"^\| `(\w+)` \|", page, flags=re.MULTILINE)
    assert tuple(rows) == FUNCTIONS


def test_handlers_are_shown_in_order_with_summary_conditions_and_source(policy: LoadedPolicy) -> None:
    page = render_policy(policy, fmt="md")
    section = page.split("### `open`, `openat`", 1)[1].split("\n### ", 1)[0]
    lines = POLICY.splitlines()
    refuse_line = lines.index('@router.on("open", "openat", "unlink", when=writing())') + 1
    serve_line = lines.index('@router.on("open", "openat", when=[under("/srv/data"), ~writing()])') + 1
    assert section.index("refuse_writes") < section.index("serve_data")
    assert "1. **`refuse_writes`** — Nothing is written." in section
    assert "A second paragraph" not in section  # only the first paragraph in the lists
    assert f"source: `policy.py:{refuse_line}`" in section
    assert f"source: `policy.py:{serve_line}`" in section
    assert "when: the path is `/srv/data` or beneath it and not (the call writes (opens" in section
    assert "Otherwise: refused with `EPERM`" in section
    # the whole docstring is in the handlers section
    assert "A second paragraph that the summary leaves out." in page


def test_a_handler_without_docstring_and_combined_conditions(policy: LoadedPolicy) -> None:
    page = render_policy(policy, fmt="md")
    assert "**`local_web`** — *(no docstring)*" in page
    assert "the address is one of `127.0.0.1:8080` or the address is one of `10.0.0.0/8:*`" in page


def test_an_unconditional_handler_means_the_default_comes_only_after_pass(policy: LoadedPolicy) -> None:
    page = render_policy(policy, fmt="md")
    assert "| `getaddrinfo` | `db`, `everything_else` | `EPERM`, only after `PASS` |" in page
    assert "only a call it hands on with `PASS` gets that far" in page


def test_unhandled_functions_are_named_with_the_default(policy: LoadedPolicy) -> None:
    page = render_policy(policy, fmt="md")
    handled = {"open", "openat", "unlink", "connect_inet", "getaddrinfo"}
    unhandled = [name for name in FUNCTIONS if name not in handled]
    listed = ", ".join(f"`{name}`" for name in unhandled)
    assert f"{listed}: every call is refused with `EPERM` (Operation not permitted)." in page


def test_failure_timeout_and_sandbox_are_documented(policy: LoadedPolicy) -> None:
    page = render_policy(policy, fmt="md")
    assert "**Handler failure**" in page and "`EPERM` (Operation not permitted) — the policy fails closed" in page
    assert "**Time limit** of an async handler: 2.5 s, then `ETIMEDOUT`" in page
    assert "| `/usr/share` | read |" in page
    assert "| `/tmp/scratch` | read, write |" in page
    assert "| `/usr/bin` | read, execute |" in page
    assert "Network: none." in page
    assert "Metadata: `chmod`, `chown`, `utime` and extended-attribute calls are refused" in page


@pytest.mark.parametrize(
    ("default", "text"),
    [
        ("FORWARD", "**Default** (a call no handler decides): forwarded — the slave does it itself"),
        ("deny(errno.EPERM)", "refused with `EPERM` (Operation not permitted)"),
        ("deny(errno.ENOENT)", "refused with `ENOENT` (No such file or directory)"),
        ("deny()", "refused with `EPERM`"),
        ("fallback", "decided by the default handler `fallback`"),
    ],
)
def test_the_default_is_rendered_in_words(tmp_path: Path, default: str, text: str) -> None:
    source = textwrap.dedent(f'''\
        import errno
        from libc_service import FORWARD, Errno, Router, deny

        def fallback(req):
            """Whatever is left fails with ENOSYS."""
            raise Errno(errno.ENOSYS)

        router = Router(default={default})
        ''')
    loaded = load_policy(str(write_policy(tmp_path, source)))
    page = render_policy(loaded, fmt="md")
    assert text in page
    assert "Every handler in registration order" not in page  # no handlers at all
    assert all(f"| `{name}` | — |" in page for name in FUNCTIONS)
    if default == "fallback":
        assert "Whatever is left fails with ENOSYS." in page and "source: `policy.py:4`" in page
        assert "### The default handler" in page


def test_handlers_defined_in_another_module_are_named_by_module_path(tmp_path: Path) -> None:
    library = tmp_path / "lib" / "sharedrules"
    library.mkdir(parents=True)
    (library / "__init__.py").write_text("")
    (library / "files.py").write_text('def refuse(req):\n    """Refused."""\n    raise OSError(13, "no")\n')
    source = textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(tmp_path / "lib")!r})
        from libc_service import Router
        from sharedrules.files import refuse
        router = Router()
        router.on("stat")(refuse)
        """)
    try:
        loaded = load_policy(str(write_policy(tmp_path / "policies", source)))
        page = render_policy(loaded, fmt="md")
    finally:
        sys.path.remove(str(tmp_path / "lib"))
        for name in [n for n in sys.modules if n.startswith("sharedrules")]:
            del sys.modules[name]
    assert "source: `sharedrules/files.py:1`" in page
    assert str(tmp_path) not in page


def test_no_sandbox_defined_says_what_dash_dash_sandbox_does(tmp_path: Path) -> None:
    loaded = load_policy(str(write_policy(tmp_path, "from libc_service import Router\nrouter = Router()\n")))
    page = render_policy(loaded, fmt="md")
    assert "The policy defines no `sandbox`." in page
    assert json.loads(render_policy(loaded, fmt="json"))["sandbox"] is None


# ------------------------------------------------------------------ JSON


def test_json_document_has_the_documented_keys(policy: LoadedPolicy) -> None:
    document = json.loads(render_policy(policy, fmt="json"))
    assert list(document) == [
        "schema",
        "policy",
        "description",
        "default",
        "failure",
        "timeout",
        "concurrent",
        "handlers",
        "observers",
        "functions",
        "unhandled",
        "sandbox",
    ]
    assert document["schema"] == JSON_SCHEMA
    assert document["policy"] == "policy.py"
    assert document["description"].startswith("A policy for the documentation tests.")
    assert document["default"] == {"action": "deny", "errno": errno.EPERM, "errno_name": "EPERM", "handler": None}
    assert document["failure"] == {"errno": errno.EPERM, "errno_name": "EPERM"}
    assert document["timeout"] == {"seconds": 2.5, "errno": errno.ETIMEDOUT, "errno_name": "ETIMEDOUT"}
    assert document["concurrent"] is False
    handler = document["handlers"][0]
    assert list(handler) == ["index", "name", "summary", "doc", "functions", "conditions", "when", "source"]
    assert handler["functions"] == ["open", "openat", "unlink"]
    assert handler["source"]["file"] == "policy.py"
    assert [h["index"] for h in document["handlers"]] == list(range(len(document["handlers"])))
    assert [f["function"] for f in document["functions"]] == list(FUNCTIONS)
    by_name = {f["function"]: f for f in document["functions"]}
    assert list(by_name["open"]) == ["function", "handlers", "default"]
    assert by_name["open"] == {"function": "open", "handlers": [0, 1], "default": "yes"}
    assert by_name["getaddrinfo"]["default"] == "only_by_pass"
    assert by_name["stat"] == {"function": "stat", "handlers": [], "default": "unhandled"}
    assert document["unhandled"] == [name for name in FUNCTIONS if not by_name[name]["handlers"]]
    assert document["sandbox"] == {
        "rules": [
            {"path": "/usr/share", "access": ["read"]},
            {"path": "/tmp/scratch", "access": ["read", "write"]},
            {"path": "/usr/bin", "access": ["read", "execute"]},
        ],
        "network": False,
        "metadata": False,
        "system_libraries": True,
    }


def _keys(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in _keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in _keys(item)}
    return set()


def test_every_json_key_is_described_in_the_schema_page(tmp_path: Path) -> None:
    schema_page = (ROOT / "docs" / "policy-json.md").read_text()
    described = set(re.findall(r"^\| `(\w+)` \|", schema_page, flags=re.MULTILINE))
    default_handler = textwrap.dedent("""\
        from libc_service import Router
        def fallback(req):
            return 0
        router = Router(default=fallback, timeout=1)
        """)
    keys = _keys(json.loads(render_policy(load_policy(str(write_policy(tmp_path / "a"))), fmt="json")))
    keys |= _keys(
        json.loads(render_policy(load_policy(str(write_policy(tmp_path / "b", default_handler))), fmt="json"))
    )
    keys |= _keys(json.loads(render_policy(load_policy(str(write_policy(tmp_path / "c", OBSERVED))), fmt="json")))
    keys |= _keys(json.loads(render_policy(load_policy(str(write_policy(tmp_path / "d", BY_NAME))), fmt="json")))
    keys |= {"seconds", "file", "line", "path", "access"}
    assert keys <= described, f"undocumented keys: {sorted(keys - described)}"
    assert JSON_SCHEMA in schema_page


def test_json_conditions_are_data_a_tool_can_read(policy: LoadedPolicy) -> None:
    handlers = json.loads(render_policy(policy, fmt="json"))["handlers"]
    writes = "the call writes (opens for writing, creates, truncates, or changes a directory)"
    assert handlers[1]["when"] == [
        {"kind": "under", "roots": ["/srv/data"], "text": "the path is `/srv/data` or beneath it"},
        {"kind": "not", "part": {"kind": "writing", "text": writes}, "text": f"not ({writes})"},
    ]
    web = handlers[2]["when"][0]
    assert web["kind"] == "any_of"
    assert [part["endpoints"] for part in web["parts"]] == [[["127.0.0.1", 8080]], [["10.0.0.0/8", None]]]
    assert handlers[3]["when"] == [
        {"kind": "named", "names": ["db.internal"], "text": "the name looked up is one of `db.internal`"}
    ]
    assert handlers[0]["when"] == [{"kind": "writing", "text": writes}]


BY_NAME = textwrap.dedent("""\
    from libc_service import FORWARD, Router, perform
    from libc_service.policy.conditions import named, resolved

    router = Router(default=FORWARD)
    router.on("getaddrinfo", when=named("pypi.org", "*.Python.org"))(perform)
    router.on("connect_inet", when=resolved("pypi.org", "*.pythonhosted.org", ports=[443, 80]))(perform)
    router.on("connect_inet6", when=resolved("pypi.org"))(perform)
    """)


def test_json_name_conditions_give_their_patterns_and_ports_as_data(tmp_path: Path) -> None:
    document = json.loads(render_policy(load_policy(str(write_policy(tmp_path, BY_NAME))), fmt="json"))
    whens = [handler["when"][0] for handler in document["handlers"]]
    assert [{key: value for key, value in when.items() if key != "text"} for when in whens] == [
        {"kind": "named", "names": ["*.python.org", "pypi.org"]},
        {"kind": "resolved", "names": ["*.pythonhosted.org", "pypi.org"], "ports": [80, 443]},
        {"kind": "resolved", "names": ["pypi.org"], "ports": None},
    ]


OBSERVED = textwrap.dedent('''
    """A policy with observers."""
    from libc_service import FORWARD, Router, Sandbox

    router = Router(default=FORWARD)
    sandbox = Sandbox(allow_read=["/usr", "/etc"], allow_exec=["/usr/"])

    @router.observe
    def audit(decision):
        """Log each decision's route and errno."""

    class Counter:
        """Count the decisions by outcome."""

        def __call__(self, decision):
            pass

    router.observe(Counter())
''')


def test_observers_are_documented_and_a_path_is_listed_once(tmp_path: Path) -> None:
    loaded = load_policy(str(write_policy(tmp_path, OBSERVED)))
    document = json.loads(render_policy(loaded, fmt="json"))
    assert document["observers"] == [
        {
            "name": "audit",
            "summary": "Log each decision's route and errno.",
            "doc": "Log each decision's route and errno.",
            "source": {"file": "policy.py", "line": 8},
        },
        {
            "name": "Counter",
            "summary": "Count the decisions by outcome.",
            "doc": "Count the decisions by outcome.",
            "source": {"file": "policy.py", "line": 12},
        },
    ]
    assert document["sandbox"]["rules"] == [
        {"path": "/usr", "access": ["read", "execute"]},
        {"path": "/etc", "access": ["read"]},
    ]
    page = render_policy(loaded, fmt="md")
    assert "## Observers" in page and "### `audit`" in page and "### `Counter`" in page
    assert page.count("| `/usr` |") == 1


def test_describe_policy_is_the_data_both_renderers_use(policy: LoadedPolicy) -> None:
    doc = describe_policy(policy)
    assert [f.function for f in doc.functions] == list(FUNCTIONS)
    assert doc.unhandled == tuple(
        name for name in FUNCTIONS if name not in {"open", "openat", "unlink", "connect_inet", "getaddrinfo"}
    )
    assert doc.handlers[1].conditions == (
        "the path is `/srv/data` or beneath it",
        "not (the call writes (opens for writing, creates, truncates, or changes a directory))",
    )


# ------------------------------------------------------------- the command


def test_cli_writes_markdown_to_a_file(tmp_path: Path) -> None:
    path = write_policy(tmp_path)
    out = tmp_path / "policy.md"
    run = cli("docs", "-o", str(out), str(path))
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    assert out.read_text().startswith("# Policy `policy.py`")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("router = (\n", "syntax error on line 1"),
        ("import errno\n", "defines no 'router'"),
        ("router = 42\n", "'router' is an int, not a libc_service.Router"),
        ("raise RuntimeError('boom')\n", "failed to import: RuntimeError: boom"),
        (
            "from libc_service import Router\nrouter = Router()\n@router.on('nonsense')\ndef h(r): pass\n",
            "unknown function(s) 'nonsense'",
        ),
        (
            "from libc_service import Router\nrouter = Router()\nsandbox = 'everything'\n",
            "'sandbox' is a str, not a libc_service.Sandbox",
        ),
    ],
)
def test_a_bad_policy_gets_one_line_and_status_2(tmp_path: Path, source: str, message: str) -> None:
    path = write_policy(tmp_path, source, name="bad.py")
    for fmt in ("md", "json"):
        run = cli("docs", "--format", fmt, str(path))
        assert run.returncode == 2
        assert run.stdout == ""
        assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
        assert run.stderr.startswith("libc-service: error: policy ") and message in run.stderr


def test_a_missing_policy_file_gets_one_line_and_status_2(tmp_path: Path) -> None:
    run = cli("docs", str(tmp_path / "nowhere.py"))
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == f"libc-service: error: policy {tmp_path / 'nowhere.py'}: no such file\n"


def test_the_readonly_tree_example_page_reads_without_the_code(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "libc_service", "docs", "examples/readonly_tree.py"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={"LIBC_SERVICE_ROOT": "/srv/data", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    page = run.stdout
    for expected in (
        "# Policy `readonly_tree.py`",
        "Read-only access to one directory tree",
        "**Default** (a call no handler decides): refused with `EACCES`",
        "### `open`, `openat`",
        "**`refuse_writes`** — Nothing is written, anywhere: the call fails with `EROFS`.",
        "the path is `/srv/data` or beneath it",
        "### `unlink`, `rename`, `mkdir`, `rmdir`",
        "**`programs_on_path`** — Looking up and reading the programs of the `PATH` directories",
        "| `/usr/bin` | read, execute |",
        "| `/bin` | read, execute |",
    ):
        assert expected in page, expected


# ------------------------------------------------------- links outside the site

#: An inline Markdown link or image: ``[text](target)``, the target without a title.
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.MULTILINE | re.DOTALL)


def _relative_links(page: Path) -> list[str]:
    """The relative link targets of a Markdown file, code blocks and inline code left out."""
    text = _FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    return [target for target in _LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:|#|/", target)]


def test_every_relative_link_of_the_readme_and_the_docs_leads_to_a_file_of_the_repository() -> None:
    # A reader on a forge or in an editor follows links between files, not between built pages.
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in _relative_links(page):
            path = target.split("#", 1)[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
    assert "examples/readonly_tree.md" in _relative_links(ROOT / "docs" / "quickstart.md")


def test_every_generated_page_has_a_placeholder_in_the_docs_directory() -> None:
    # Links to a generated page (the quickstart's, the index's) find the placeholder outside the
    # site; it names the policy, which exists, and the build replaces it (the marker line).
    config = (ROOT / "mkdocs.yml").read_text()
    listed = re.findall(r"^    (examples/\w+\.md):", config, flags=re.MULTILINE)
    assert sorted(listed) == sorted(f"examples/{path.stem}.md" for path in (ROOT / "examples").glob("*.py"))
    for page in listed:
        text = (ROOT / "docs" / page).read_text()
        assert "<!-- libc-service: generated page -->" in text.splitlines(), page
        assert f"(../../{page.removesuffix('.md')}.py)" in text, page


# ------------------------------------------------------------ the mkdocs hook


@pytest.mark.slow
def test_the_mkdocs_hook_generates_policy_pages_and_the_cli_help(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install '.[docs]')")
    site = tmp_path / "project"
    (site / "docs").mkdir(parents=True)
    (site / "hooks").mkdir()
    (site / "hooks" / "policies.py").write_text("from libc_service.tools.mkdocs_hook import *  # noqa: F403\n")
    write_policy(site / "policies")
    (site / "docs" / "index.md").write_text("# Home\n\n<!-- libc-service: cli-help -->\n")
    (site / "mkdocs.yml").write_text(
        textwrap.dedent(f"""\
        site_name: test
        theme: mkdocs
        hooks:
          - hooks/policies.py
        nav:
          - index.md
          - policies/web.md
          - policies/tree.md
        extra:
          libc_service_policies:
            policies/web.md: policies/policy.py
            policies/tree.md:
              policy: {ROOT / "examples" / "readonly_tree.py"}
              env: {{LIBC_SERVICE_ROOT: /srv/tree}}
        """)
    )
    run = subprocess.run([mkdocs, "build", "--strict"], cwd=site, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    web = (site / "site" / "policies" / "web" / "index.html").read_text()
    assert "refuse_writes" in web and "policy.py:" in web
    tree = (site / "site" / "policies" / "tree" / "index.html").read_text()
    assert "/srv/tree" in tree
    home = (site / "site" / "index.html").read_text()
    assert "libc-service docs" in home and "--format" in home

    # A placeholder of the page (what a link finds outside the site) is replaced by the page.
    (site / "docs" / "policies").mkdir()
    (site / "docs" / "policies" / "web.md").write_text(
        "# web\n\n<!-- libc-service: generated page -->\n\nSee [the policy](../../policies/policy.py).\n"
    )
    run = subprocess.run([mkdocs, "build", "--strict"], cwd=site, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    web = (site / "site" / "policies" / "web" / "index.html").read_text()
    assert "refuse_writes" in web and "See the policy" not in web

    # A page that also exists as any other file, and a policy that does not load, fail the build.
    (site / "docs" / "policies" / "web.md").write_text("# stale\n")
    run = subprocess.run([mkdocs, "build", "--strict"], cwd=site, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "also exists in the docs directory" in run.stderr
    (site / "docs" / "policies" / "web.md").unlink()
    (site / "policies" / "policy.py").write_text("router = None\n")
    run = subprocess.run([mkdocs, "build", "--strict"], cwd=site, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "defines no 'router'" in run.stderr


def test_ci_runs_exactly_the_readme_set_up_commands() -> None:
    """The README's two set-up commands are what CI runs, verbatim, the tests in their own environment."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = [block.split("\n", 1)[1].strip() for block in section.split("```")[1::2]]
    assert len(commands) == 2
    main_job, tests = commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert main_job in ci and tests in ci
    assert ".venv-test" in tests and ".venv/" not in tests
