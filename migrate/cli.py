"""The `tf-migrate` command line: parses options and hands them to the engine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tf_migrate import __version__
from tf_migrate.engine.source import DEFAULT_MAX_FILE_SIZE


class _DefaultGroup(click.Group):
    """`tf-migrate PATH...` runs `migrate`; `tf-migrate rules` etc. run subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["migrate", *args]
        elif not args:
            args = ["migrate", "--help"]
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
    """Migrate legacy PyTorch transformer code: `tf-migrate PATH...` (see `tf-migrate migrate -h`)."""


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--diff", "show_diff", is_flag=True, help="Print a unified diff; write nothing.")
@click.option("--write", is_flag=True, help="Rewrite the files in place (atomically).")
@click.option("--output-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Write migrated copies of every input file under DIR, mirroring the tree.")
@click.option("--select", multiple=True, help="Rules: codes, prefixes, names, or exact/compatible/retrain/all.")
@click.option("--ignore", multiple=True, help="Rules to leave out (same forms as --select).")
@click.option("--option", "rule_options", multiple=True, metavar="RULE.KEY=VALUE",
              help="A per-rule option, e.g. swiglu.ffn=geglu.")
@click.option("--ffn", type=click.Choice(["swiglu", "geglu", "match"]),
              help="TFM301's gated FFN (same as --option swiglu.ffn=...).")
@click.option("--ffn-hidden", type=click.Choice(["same", "param-matched"]),
              help="TFM301's hidden size policy (same as --option swiglu.hidden=...).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "github"]), default="text",
              help="sarif: SARIF 2.1.0 with fixes; github: GitHub Actions annotations.")
@click.option("--statistics", is_flag=True,
              help="Print only the census table: per rule, components by outcome, and the reasons.")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the checkpoint plan (JSON) to this file.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="pyproject.toml to read [tool.tf-migrate] from (default: the nearest one).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Worker processes (default: one per core).")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Result cache folder (default: .tf-migrate-cache beside the nearest pyproject.toml).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the result cache.")
@click.option("--max-file-size", type=click.IntRange(min=1), default=DEFAULT_MAX_FILE_SIZE,
              show_default=True,
              metavar="BYTES", help="Larger files are an error and never read (generated code).")
@click.option("--allow-empty", is_flag=True,
              help="With no PATHS, do nothing and exit 0 (for hooks that pass file names).")
def migrate(paths, show_diff, write, output_dir, select, ignore, rule_options, fmt, plan_path,
            config_path, jobs, cache_dir, no_cache, max_file_size, allow_empty, statistics=False, ffn=None,
            ffn_hidden=None) -> None:
    """Report (default), diff, or apply the migrations to PATHS."""
    if not paths:
        if allow_empty:
            sys.exit(0)
        raise click.UsageError("Missing argument 'PATHS...'.")
    from tf_migrate.engine.run import RunOptions, UsageError, run

    rule_options += tuple(f"swiglu.{key}={value}" for key, value in
                          (("ffn", ffn), ("hidden", ffn_hidden)) if value)

    options = RunOptions(
        paths=list(paths), diff=show_diff, write=write, output_dir=output_dir,
        select=_split(select), ignore=_split(ignore), rule_options=list(rule_options),
        fmt=fmt, plan_path=plan_path, config_path=config_path,
        jobs=jobs, cache_dir=cache_dir, use_cache=not no_cache, statistics=statistics,
        max_file_size=max_file_size,
    )
    try:
        code = run(options, sys.stdout)
    except UsageError as exc:
        click.echo(f"tf-migrate: error: {exc}", err=True)
        code = 2
    sys.exit(code)


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
