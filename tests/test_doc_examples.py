"""The documentation's examples, run as written: the command line page, the observer, the set-up, the site."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from libc_service.confinement.sandbox import landlock_abi, network_namespaces_available

from shimtools import needs_shim

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _examples(page: Path, *, skip: tuple[str, ...] = ()) -> list[tuple[str, list[str]]]:
    """The ``$ command`` lines of a page's ``console`` blocks, each with the lines it prints; the sections
    named in ``skip`` left out."""
    text = page.read_text()
    for section in skip:
        start = text.index(f"\n## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[:start] + (text[end:] if end != -1 else "")
    examples: list[tuple[str, list[str]]] = []
    for block in re.findall(r"^```console\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            if line.startswith("$ "):
                examples.append((line[2:], []))
            else:
                examples[-1][1].append(line)
    return examples


def _line_pattern(expected: str) -> str:
    return ".*".join(re.escape(part) for part in expected.split("..."))


def _matches(expected: list[str], output: list[str]) -> bool:
    """Whether ``output`` is ``expected``, where ``...`` in a line is any text and a ``...`` line any lines."""
    pattern = "".join(r"(?:[^\n]*\n)*?" if line == "..." else _line_pattern(line) + r"\n" for line in expected)
    return re.fullmatch(pattern, "".join(line + "\n" for line in output), flags=re.DOTALL) is not None


def test_the_matcher_elides_what_the_examples_say_it_does() -> None:
    assert _matches(["a", "...", "b ...z"], ["a", "x", "y", "b 123z"])
    assert _matches(["a", "...", "b"], ["a", "b"])
    assert not _matches(["a", "b"], ["a", "x", "b"])
    assert not _matches(["exit 2"], ["exit 1"])


@needs_shim
@pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")
@pytest.mark.skipif(network_namespaces_available() is not None, reason="no network namespaces here")
def test_every_example_of_the_command_line_page_prints_what_the_page_says(tmp_path: Path) -> None:
    # The trace section's examples run in a /tmp/example of their own and differ from run to run in process
    # ids, times and the order of two streams: tests/test_trace_output.py runs them with that set up.
    examples = _examples(ROOT / "docs" / "cli.md", skip=("trace",))
    assert len(examples) >= 12
    flags = {word for command, _ in examples for word in shlex.split(command) if word.startswith("--")}
    run_flags = {"--sandbox", "--seccomp", "--read", "--write", "--exec", "--connect", "--bind", "--refusals"}
    assert run_flags | {"--format", "--version"} <= flags  # every flag of run has an example
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp_path)}
    failures = []
    for command, expected in examples:
        programs = [word for word in shlex.split(command) if word.startswith("/usr/bin/")]
        if any(not Path(program).exists() for program in programs):
            continue  # the system has no such program
        if "--seccomp" in command:
            from libc_service.seccomp.availability import seccomp_unavailable

            if seccomp_unavailable() is not None:
                continue
        done = subprocess.run(
            ["sh", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        # Captured apart, stdout and stderr lose their order: the page's order is either.
        shown = (done.stdout + done.stderr).splitlines()
        if not (_matches(expected, shown) or _matches(expected, (done.stderr + done.stdout).splitlines())):
            failures.append(f"$ {command}\nexpected:\n" + "\n".join(expected) + "\ngot:\n" + "\n".join(shown))
    assert not failures, "\n\n".join(failures)


def _python_block(page: Path, section: str) -> str:
    text = page.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    match = re.search(r"^```python\n(.*?)^```", text[start:end], flags=re.MULTILINE | re.DOTALL)
    assert match is not None
    return match.group(1)


@needs_shim
def test_the_observer_example_of_the_policies_page_writes_the_line_it_says(tmp_path: Path) -> None:
    (tmp_path / "observer.py").write_text(_python_block(ROOT / "docs" / "policies.md", "Observers"))
    (tmp_path / "secret.txt").write_text("not for cat\n")
    done = subprocess.run(
        [sys.executable, "-m", "libc_service", "run", "observer.py", "--", "cat", "secret.txt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    # On the same stderr as cat's own message, which it may interleave with.
    assert '{"function": "open", "path": "secret.txt", "route": "no_secrets", "errno": "EACCES"}' in done.stderr


def test_the_readme_serves_the_site_from_the_environment_that_has_mkdocs() -> None:
    readme = (ROOT / "README.md").read_text()
    setups = re.findall(r"python3 -m venv --clear (\S+) && \. \S+/bin/activate && pip install (.*?) &&", readme)
    extras = {venv: install for venv, install in setups}
    serving = re.search(r"\(`\. (\S+)/bin/activate`[^)]*\), `mkdocs serve`", readme)
    assert serving is not None, "the README says in which environment `mkdocs serve` runs"
    assert "docs" in extras[serving.group(1)]  # that environment installs the docs extra (mkdocs)
    assert "docs" not in extras[".venv"]


def test_the_quickstart_runs_the_tests_in_an_environment_of_their_own() -> None:
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    environments = re.findall(
        r"python3 -m venv (?:--clear )?(\S+) && \. \S+/bin/activate && pip install (\S+)", quickstart
    )
    by_extras = {extras: venv for venv, extras in environments}
    assert by_extras["'.[fast]'"] != by_extras["-e"]  # the main install and the tests' are apart


def test_the_usage_lines_name_every_command_s_transport_flag() -> None:
    for page in (ROOT / "README.md", ROOT / "docs" / "cli.md"):
        text = page.read_text()
        # The usage line of trace lists its filters first (-e, --failed, -c), as strace's does.
        assert re.search(r"^libc-service trace \[.*\[--seccomp\]", text, flags=re.MULTILINE), page
        assert "[--read PATH]... [--write PATH]... [--exec PATH]..." in text, page


SITE = textwrap.dedent("""\
    site_name: anchors
    docs_dir: docs
    theme: mkdocs
""")


@pytest.mark.parametrize("anchor", ["#right-here", "#nowhere"])
def test_a_broken_anchor_fails_the_strict_build_with_the_project_s_validation(tmp_path: Path, anchor: str) -> None:
    mkdocs = shutil.which("mkdocs", path=str(BIN))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install '.[docs]')")
    config = (ROOT / "mkdocs.yml").read_text()
    validation = config[config.index("\nvalidation:") :]
    validation = validation[: validation.find("\n\n", 1) if "\n\n" in validation[1:] else len(validation)]
    (tmp_path / "mkdocs.yml").write_text(SITE + validation + "\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(f"# Home\n\nSee [there](other.md{anchor}).\n")
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Right here\n")
    done = subprocess.run(
        [mkdocs, "build", "--strict"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    if anchor == "#nowhere":
        assert done.returncode != 0 and "does not contain an anchor '#nowhere'" in done.stderr, done.stderr
    else:
        assert done.returncode == 0, done.stderr
