"""An mkdocs hook: a project's documentation site includes its generated policy pages.

Each page is rendered at build time by
[render_policy][libc_service.tools.docs.render_policy] (what ``libc-service docs``
prints), so the published documentation of a policy is always the policy
that is in the repository. List the pages under ``extra`` in ``mkdocs.yml``
and register the hook:

```yaml
hooks:
  - hooks/libc_service_policies.py   # contains: from libc_service.tools.mkdocs_hook import *
extra:
  libc_service_policies:
    policies/readonly.md: examples/readonly_tree.py        # a file, relative to mkdocs.yml
    policies/jobs.md: mypackage.policies:jobs_router        # or module:attr
    policies/tree.md:                                       # or with environment variables
      policy: examples/readonly_tree.py                     # set while the policy is imported
      env: {LIBC_SERVICE_ROOT: /srv/data}
nav:
  - Policies:
      - policies/readonly.md
```

mkdocs loads hooks from a file path, so the one-line file re-exports this
module's ``on_*`` functions; a project whose ``mkdocs.yml`` sits next to the
``libc_service`` sources may list ``libc_service/tools/mkdocs_hook.py`` itself.
A generated page may exist in ``docs_dir`` only as a placeholder: a file
containing the line ``<!-- libc-service: generated page -->``, which the
build replaces with the generated page. Outside the built site (on a forge,
in an editor) the placeholder is what a link to the page finds, so it should
say where the policy is and how to render it; any other file there fails
the build, since it would silently hide the generated page. A policy
that cannot be loaded fails the build with its one-line error. Under
``mkdocs serve`` the policy files are watched, so editing a policy rebuilds
its page.

The hook also replaces the marker ``<!-- libc-service: cli-help -->`` in any
page with the ``--help`` text of ``libc-service`` and of each of its commands,
and shows Sphinx roles left in docstrings rendered by mkdocstrings
(``:class:`~libc_service.Slave` ``) as plain code (``Slave``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.livereload import LiveReloadServer
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

from libc_service.tools.docs import render_policy
from libc_service.tools.policy_file import PolicyError, load_policy

__all__ = [
    "CLI_HELP_MARKER",
    "EXTRA_KEY",
    "PLACEHOLDER_MARKER",
    "PolicyPage",
    "cli_help",
    "on_config",
    "on_files",
    "on_page_content",
    "on_page_markdown",
    "on_serve",
    "policy_pages",
    "render_page",
]

#: The ``extra`` key of ``mkdocs.yml`` that lists the generated pages.
EXTRA_KEY: Final = "libc_service_policies"
#: A page line replaced by the command line's help texts.
CLI_HELP_MARKER: Final = "<!-- libc-service: cli-help -->"
#: A line marking a file in ``docs_dir`` as the placeholder of a generated page.
PLACEHOLDER_MARKER: Final = "<!-- libc-service: generated page -->"
#: Help texts are wrapped at this width, whatever the terminal.
HELP_COLUMNS: Final = 88


@dataclass(frozen=True)
class PolicyPage:
    """One generated page: where it goes, which policy, with which environment."""

    page: str
    policy: str
    env: Mapping[str, str] = field(default_factory=dict)

    def watched_file(self) -> str | None:
        """The policy file to watch under ``mkdocs serve`` (``None`` for ``module:attr``)."""
        return self.policy if self.policy.endswith(".py") or "/" in self.policy else None


def policy_pages(extra: Mapping[str, Any], base: str | os.PathLike[str]) -> list[PolicyPage]:
    """Parse ``extra.libc_service_policies``; relative policy files are taken from ``base``."""
    listed = extra.get(EXTRA_KEY) or {}
    if not isinstance(listed, Mapping):
        raise PluginError(f"extra.{EXTRA_KEY} must map page paths to policies, not {type(listed).__name__}")
    pages = []
    for page, value in listed.items():
        if not isinstance(page, str) or not page.endswith(".md"):
            raise PluginError(f"extra.{EXTRA_KEY}: {page!r} is not a Markdown page path (…/name.md)")
        env: Mapping[str, str] = {}
        if isinstance(value, Mapping):
            spec = value.get("policy")
            raw_env = value.get("env") or {}
            if not isinstance(raw_env, Mapping):
                raise PluginError(f"extra.{EXTRA_KEY}: {page}: env must be a mapping")
            env = {str(key): str(item) for key, item in raw_env.items()}
        else:
            spec = value
        if not isinstance(spec, str) or not spec:
            raise PluginError(f"extra.{EXTRA_KEY}: {page}: give the policy as path/to/file.py or module:attr")
        if (spec.endswith(".py") or "/" in spec) and not os.path.isabs(spec):
            spec = os.path.join(os.fspath(base), spec)
        pages.append(PolicyPage(page.lstrip("/"), spec, env))
    return pages


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def render_page(page: PolicyPage) -> str:
    """The page's Markdown; a policy that cannot be loaded raises ``PluginError``."""
    with _environment(page.env):
        try:
            policy = load_policy(page.policy)
            return render_policy(policy, fmt="md")
        except PolicyError as exc:
            raise PluginError(f"extra.{EXTRA_KEY}: {page.page}: {exc}") from None


_pages: list[PolicyPage] = []


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Read the list of generated pages (every build, so ``mkdocs serve`` sees edits)."""
    base = os.path.dirname(config.config_file_path or "mkdocs.yml")
    _pages[:] = policy_pages(config.extra, base or ".")
    return config


def _is_placeholder(file: File) -> bool:
    """Whether a file of ``docs_dir`` says it stands for a generated page."""
    try:
        return any(line.strip() == PLACEHOLDER_MARKER for line in file.content_string.splitlines())
    except (OSError, UnicodeDecodeError):
        return False


def on_files(files: Files, /, *, config: MkDocsConfig) -> Files:
    """Add a generated file per policy page, in place of its placeholder if there is one."""
    for page in _pages:
        existing = files.get_file_from_path(page.page)
        if existing is not None:
            if not _is_placeholder(existing):
                raise PluginError(
                    f"extra.{EXTRA_KEY}: {page.page} is generated from {os.path.basename(page.policy)}, "
                    f"but {page.page} also exists in the docs directory: remove it, or make it a "
                    f"placeholder containing the line {PLACEHOLDER_MARKER}"
                )
            files.remove(existing)
        files.append(File.generated(config, page.page, content=render_page(page)))
    return files


def on_serve(server: LiveReloadServer, /, *, config: MkDocsConfig, builder: Callable[..., Any]) -> LiveReloadServer:
    """Rebuild when a policy file changes."""
    for page in _pages:
        watched = page.watched_file()
        if watched is not None:
            server.watch(watched)
    return server


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse exposes subparsers only through its actions
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_help(heading: str = "##") -> str:
    """The ``--help`` of ``libc-service`` and of each command, as Markdown sections."""
    from libc_service.tools.cli_args import build_parser

    with _environment({"COLUMNS": str(HELP_COLUMNS)}):
        parser = build_parser()
        sections = [(parser.prog, parser.format_help())]
        for name, sub in _subcommands(parser).items():
            sections.append((f"{parser.prog} {name}", sub.format_help()))
    return "\n\n".join(f"{heading} `{title}`\n\n```text\n{text.rstrip()}\n```" for title, text in sections) + "\n"


def on_page_markdown(markdown: str, /, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace the CLI help marker with the generated help texts."""
    if CLI_HELP_MARKER in markdown:
        markdown = markdown.replace(CLI_HELP_MARKER, cli_help())
    return markdown


_SPHINX_ROLE: Final = re.compile(r":(?:py:)?(?:class|meth|func|data|attr|mod|exc|obj|const):<code>~?([^<]*)</code>")


def _plain_role(match: re.Match[str]) -> str:
    target = match.group(1)
    shown = target.rsplit(".", 1)[-1] if match.group(0).split("<code>", 1)[1].startswith("~") else target
    return f"<code>{shown}</code>"


def on_page_content(html: str, /, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Show Sphinx roles (``:class:`X` ``) that mkdocstrings leaves in docstrings as plain code."""
    return _SPHINX_ROLE.sub(_plain_role, html)
