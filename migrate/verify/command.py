"""The `tf-migrate verify` subcommand: parses options, runs session.verify, prints the report."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click


def _lengths(ctx, param, value: str) -> list[int]:
    from tf_migrate.bench import parse_lengths

    try:
        return parse_lengths(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _tolerance(ctx, param, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise click.BadParameter(f"{value} is not a finite number >= 0")
    return value


@click.command("verify")
@click.argument("before", type=click.Path(path_type=Path))
@click.argument("after", type=click.Path(path_type=Path))
@click.option("--build", "build", required=True, metavar="EXPR",
              help="Python expression giving the model, evaluated in each side's module.")
@click.option("--input", "inputs", multiple=True, metavar="EXPR",
              help="Forward arguments (a tuple = several). Repeatable. Default: inferred.")
@click.option("--plan", "plan", type=click.Path(path_type=Path, dir_okay=False),
              help="Checkpoint plan JSON from `tf-migrate --plan`. Default: recomputed from BEFORE.")
@click.option("--entry", metavar="RELPATH", help="With directory BEFORE/AFTER: the file that defines the model.")
@click.option("--select", multiple=True, help="Rules for the recomputed plan (default: exact).")
@click.option("--rtol", type=float, default=1e-4, show_default=True, callback=_tolerance,
              help="float32 relative tolerance.")
@click.option("--atol", type=float, default=1e-5, show_default=True, callback=_tolerance,
              help="float32 absolute tolerance.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--bench", is_flag=True, help="Also time both models and measure their peak memory.")
@click.option("--bench-lengths", default="128,512,1024", show_default=True, metavar="T,T,...", callback=_lengths,
              help="Sequence lengths for --bench (lengths a model cannot take are skipped).")
@click.option("--bench-input", metavar="EXPR", help="Forward arguments for --bench with `T` (length) and `B` bound.")
def verify_command(before, after, build, inputs, plan, entry, select, rtol, atol, fmt,
                   bench, bench_lengths, bench_input) -> None:
    """Prove that AFTER (migrated) computes what BEFORE did, and that the checkpoint maps across.

    Exit status: 0 verified, 1 not verified (an exact rule is not equivalent, the checkpoint does
    not load, or a structural change is missing), 2 usage or import error.
    """
    try:
        from tf_migrate.verify.loading import LoadError
        from tf_migrate.verify.session import VerifyOptions, verify
    except ImportError as exc:
        click.echo(f"tf-migrate: error: verify needs torch ({exc}); pip install 'tf-migrate[torch]'", err=True)
        sys.exit(2)
    options = VerifyOptions(before, after, build, list(inputs), plan, entry,
                            [s for value in select for s in value.split(",") if s] or ["exact"], rtol, atol)
    try:
        result = verify(options)
    except LoadError as exc:
        click.echo(f"tf-migrate: error: {exc}", err=True)
        sys.exit(2)
    from tf_migrate.verify import report

    document = report.json_document(result) if fmt == "json" else "\n".join(report.text_lines(result))
    if bench:
        from tf_migrate.bench.report import bench_pair

        document = bench_pair(document, fmt, before, after, build, entry, bench_lengths, bench_input)
    click.echo(document)
    sys.exit(0 if result.verified else 1)
