"""`tf-migrate convert IN OUT --plan PLAN.json`: the click command, nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("convert")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--plan", "plan", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The checkpoint plan written by `tf-migrate ... --plan PLAN.json`.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (never the input).")
@click.option("--unsafe-pickle", is_flag=True,
              help="Load .pt/.bin files with weights_only=False. Runs code in the file: trusted files only.")
@click.option("--check-build", metavar="EXPR", help="Build the migrated model (e.g. 'GPT(vocab_size=100)') "
              "and load the result with strict=True before writing it. This imports and runs the "
              "--source file and EXPR: only for code you trust.")
@click.option("--source", "model_source", type=click.Path(path_type=Path, dir_okay=False),
              help="The migrated model's .py file, for --check-build.")
def convert_command(source, out, plan, force, unsafe_pickle, check_build, model_source) -> None:
    """Convert checkpoint SOURCE (.pt/.pth/.bin, .safetensors, or a sharded index) to OUT."""
    from tf_migrate.convert.errors import ConvertError
    from tf_migrate.convert.run import ConvertOptions, convert

    options = ConvertOptions(source, out, plan, force, unsafe_pickle, check_build, model_source)
    if check_build:
        click.echo(f"tf-migrate convert: --check-build imports and runs {model_source} and the build "
                   "expression", err=True)
    try:
        convert(options, sys.stdout)
    except ConvertError as exc:
        click.echo(f"tf-migrate convert: error: {exc}", err=True)
        sys.exit(2)
