"""The `tf-migrate` command line: parses options and hands them to the engine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tf_migrate import __version__
from tf_migrate.engine.source import DEFAULT_MAX_FILE_SIZE


class _DefaultGroup(click.Group):
    """`tf-migrate PATH...` runs `migrate`; `tf-migrate check`, `rules` etc. run subcommands.

    A first word that names a subcommand is always the subcommand, also when a file or folder of
    that name exists (then a note says how to name the path: `tf-migrate check rules`, `./rules`).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["migrate", *args]
        elif not args:
            args = ["migrate", "--help"]
        elif args[0] in self.commands and args[0] not in ("check", "migrate") and os.path.exists(args[0]):
            click.echo(f"tf-migrate: note: `{args[0]}` runs the {args[0]} command; to migrate the path "
                       f"{args[0]!r}, use `tf-migrate check {args[0]}` or `tf-migrate ./{args[0]}`", err=True)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        """An exception nothing expected is a bug of ours: exit 2 (never 1, "would change")."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception:
            import traceback

            traceback.print_exc()
            click.echo("tf-migrate: internal error: a bug in tf-migrate, not in your files; please report "
                       "it with the traceback above and the command line", err=True)
            ctx.exit(2)


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tf-migrate")
def main() -> None:
    """Migrate legacy PyTorch transformer code: `tf-migrate check PATH...` (see `tf-migrate check -h`).

    `tf-migrate PATH...` is the same as `tf-migrate migrate PATH...` (report; --diff, --write).
    """


def _split(values: tuple[str, ...], option: str) -> list[str]:
    found = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if values and not found:
        raise click.UsageError(f"{option} {','.join(values)!r} names no rule (leave {option} out for "
                               "the configuration's selection)")
    return found


def _shared_options(command):
    """The options `check` and `migrate` have in common."""
    for decorator in reversed([
        click.argument("paths", nargs=-1, type=click.Path(path_type=Path, allow_dash=True)),
        click.option("--diff", "show_diff", is_flag=True, help="Print a unified diff; write nothing."),
        click.option("--output-dir", type=click.Path(path_type=Path, file_okay=False),
                     help="Write migrated copies of every input file under DIR, mirroring the tree."),
        click.option("--select", multiple=True,
                     help="Rules: codes, prefixes, names, or exact/compatible/retrain/all. Replaces the "
                          "configuration's select and ignore."),
        click.option("--extend-select", multiple=True, help="Rules to add to the configuration's selection."),
        click.option("--ignore", multiple=True, help="Rules to leave out (same forms as --select)."),
        click.option("--option", "rule_options", multiple=True, metavar="RULE.KEY=VALUE",
                     help="A per-rule option, e.g. swiglu.ffn=geglu."),
        click.option("--ffn", type=click.Choice(["swiglu", "geglu", "match"]),
                     help="TFM301's gated FFN (same as --option swiglu.ffn=...)."),
        click.option("--ffn-hidden", type=click.Choice(["same", "param-matched"]),
                     help="TFM301's hidden size policy (same as --option swiglu.hidden=...)."),
        click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "github"]), default="text",
                     help="sarif: SARIF 2.1.0 with fixes; github: GitHub Actions annotations."),
        click.option("--statistics", is_flag=True,
                     help="Print only the census table: per rule, components by outcome, and the reasons."),
        click.option("--plan", "plan_path", type=click.Path(path_type=Path, dir_okay=False),
                     help="Write the checkpoint plan (JSON) to this file."),
        click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
                     help="A TOML file with a [tool.tf-migrate] table (or a tf-migrate.toml) for every "
                          "path (default: each file's nearest one)."),
        click.option("--extend-exclude", multiple=True, metavar="PATTERN",
                     help="More gitignore-style patterns to leave out, relative to the working directory."),
        click.option("--no-respect-gitignore", is_flag=True,
                     help="Also walk into what .gitignore / .ignore files leave out."),
        click.option("--force-exclude", is_flag=True,
                     help="Apply exclude patterns to paths named on the command line too (for pre-commit)."),
        click.option("--stdin-filename", metavar="PATH",
                     help="With `-`: the file name standard input stands for (configuration, messages)."),
        click.option("--exit-zero", is_flag=True, help="Exit 0 even when something would change (errors: 2)."),
        click.option("--exit-non-zero-on-refusal", is_flag=True,
                     help="Exit 1 when a rule refused a candidate (default: refusals are reported, exit 0)."),
        click.option("--jobs", "-j", type=click.IntRange(min=1), help="Worker processes (default: one per core)."),
        click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
                     help="Result cache folder (default: .tf-migrate-cache beside the nearest pyproject.toml)."),
        click.option("--no-cache", is_flag=True, help="Neither read nor write the result cache."),
        click.option("--max-file-size", type=click.IntRange(min=1), default=DEFAULT_MAX_FILE_SIZE,
                     show_default=True, metavar="BYTES",
                     help="Larger files are an error and never read (generated code)."),
        click.option("--allow-empty", is_flag=True,
                     help="With no PATHS, do nothing and exit 0 (for hooks that pass file names)."),
    ]):
        command = decorator(command)
    return command


def _run(paths, show_diff, output_dir, select, extend_select, ignore, rule_options, fmt, plan_path,
         config_path, extend_exclude, no_respect_gitignore, force_exclude, stdin_filename, exit_zero,
         exit_non_zero_on_refusal, jobs, cache_dir, no_cache, max_file_size, allow_empty, statistics, ffn,
         ffn_hidden, **mode) -> None:
    if not paths:
        if allow_empty:
            sys.exit(0)
        raise click.UsageError("Missing argument 'PATHS...' (`-` reads standard input).")
    from tf_migrate.engine.run import RunOptions, UsageError, run

    rule_options += tuple(f"swiglu.{key}={value}" for key, value in
                          (("ffn", ffn), ("hidden", ffn_hidden)) if value)
    options = RunOptions(
        paths=list(paths), diff=show_diff, output_dir=output_dir,
        select=_split(select, "--select"), extend_select=_split(extend_select, "--extend-select"),
        ignore=_split(ignore, "--ignore"), rule_options=list(rule_options),
        fmt=fmt, plan_path=plan_path, config_path=config_path,
        jobs=jobs, cache_dir=cache_dir, use_cache=not no_cache, statistics=statistics,
        max_file_size=max_file_size,
        extend_exclude=list(extend_exclude), respect_gitignore=not no_respect_gitignore,
        force_exclude=force_exclude, stdin_filename=stdin_filename, exit_zero=exit_zero,
        exit_non_zero_on_refusal=exit_non_zero_on_refusal, **mode,
    )
    from tf_migrate.engine import collector

    collector.frozen_at_exit()  # the process ends with the run: its teardown need not walk what it kept
    try:
        with collector.owned():
            code = run(options, sys.stdout)
    except UsageError as exc:
        click.echo(f"tf-migrate: error: {exc}", err=True)
        code = 2
    sys.exit(code)


@main.command()
@_shared_options
@click.option("--fix", is_flag=True, help="Apply the exact rules' rewrites in place (atomically).")
@click.option("--unsafe-fixes", is_flag=True,
              help="Also the compatible and retrain rules (they change the model: fine-tune or retrain).")
@click.option("--exit-non-zero-on-fix", is_flag=True, help="With --fix: exit 1 when a file was changed.")
def check(fix, unsafe_fixes, exit_non_zero_on_fix, extend_select, **options) -> None:
    """Report (default), show (--diff) or apply (--fix) the migrations of PATHS (`-`: standard input).

    Exit codes: 0 nothing to change (or, with --fix, everything applied), 1 something would change,
    2 an error. Refusals are reported and exit 0 unless --exit-non-zero-on-refusal.
    """
    if unsafe_fixes and not options["select"]:  # an explicit --select says which rules already
        extend_select += ("compatible,retrain",)
    _run(write=fix, exit_non_zero_on_fix=exit_non_zero_on_fix, fixes_only_exact=fix and not unsafe_fixes,
         extend_select=extend_select, **options)


@main.command()
@_shared_options
@click.option("--write", is_flag=True, help="Rewrite the files in place (atomically).")
def migrate(write, **options) -> None:
    """Report (default), diff, or apply the migrations to PATHS (today's spelling of `check`).

    Exit codes: 0 nothing would change, 1 something would change (or was changed), 2 an error.
    """
    _run(write=write, **options)


@main.command("rules")
def list_rules() -> None:
    """List the rules: code, name, equivalence class, summary."""
    from tf_migrate.engine.registry import all_rules

    for rule in all_rules():
        click.echo(f"{rule.code}  {rule.name:<12} {rule.equivalence.value:<11} {rule.summary}")


@main.command()
@click.argument("code")
def explain(code: str) -> None:
    """Show a rule's documentation with a before/after example."""
    from tf_migrate.engine.registry import SelectionError, find_rule

    try:
        rule = find_rule(code)
    except SelectionError as exc:
        click.echo(f"tf-migrate: error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"{rule.code} [{rule.name}] ({rule.equivalence.value})\n")
    click.echo(rule.documentation())
    if rule.example_before:
        click.echo("\nBefore:\n" + _indent(rule.example_before) + "\nAfter:\n" + _indent(rule.example_after))


def _indent(code: str) -> str:
    return "".join("    " + line + "\n" for line in code.rstrip().splitlines())


from tf_migrate.convert.command import convert_command  # noqa: E402
from tf_migrate.verify.command import verify_command  # noqa: E402

main.add_command(verify_command)
main.add_command(convert_command)

if __name__ == "__main__":  # pragma: no cover
    main()
