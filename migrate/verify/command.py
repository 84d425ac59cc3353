"""The `tf-migrate verify` subcommand: parses options, runs the verification in a child process, prints it.

The user's files run in the child (verify/child.py); this process never imports them, so an
`os._exit` or `sys.exit(0)` in the user's code cannot pass for a result.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import click

NOTICE = "note: verify executes BEFORE and AFTER (imports them, runs --build and --input): use it on code you trust"


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
              help="Python expression giving the model, evaluated in each side's module; "
                   "`pkg.model:Transformer(...)` evaluates it in module pkg.model of directories BEFORE and AFTER.")
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
@click.option("-v", "--verbose", is_flag=True, help="On an error, show the traceback and the user code's output.")
def verify_command(before, after, build, inputs, plan, entry, select, rtol, atol, fmt,
                   bench, bench_lengths, bench_input, verbose) -> None:
    """Prove that AFTER (migrated) computes what BEFORE did, and that the checkpoint maps across.

    This EXECUTES the given files: BEFORE and AFTER are imported and --build/--input evaluated
    (in a child process). Run it only on code you trust.

    Exit status: 0 verified, 1 not verified (an exact rule is not equivalent, the checkpoint does
    not load, or a structural change is missing), 2 could not run (usage, import or build error,
    or the user's code ended the process).
    """
    from tf_migrate.verify.options import VerifyOptions

    options = VerifyOptions(before, after, build, list(inputs), plan, entry,
                            [s for value in select for s in value.split(",") if s] or ["exact"], rtol, atol)
    request = {"options": options.to_json(), "format": fmt,
               "bench": {"lengths": bench_lengths, "input": bench_input} if bench else None}
    click.echo(NOTICE, err=fmt == "json")
    answer, output = _run_child(request)
    if verbose and output:
        click.echo(output.rstrip(), err=True)
    if answer is None:
        click.echo("tf-migrate: error: could not run: the verification process ended without a result"
                   f" ({_ending(output)}); BEFORE or AFTER may call sys.exit or os._exit", err=True)
        sys.exit(2)
    if answer["exit"] == 2:
        if verbose and answer.get("traceback"):
            click.echo(answer["traceback"].rstrip(), err=True)
        error = answer["error"].strip()
        click.echo(f"tf-migrate: error: {error if verbose else (error.splitlines() or [''])[0]}", err=True)
        sys.exit(2)
    click.echo(answer["document"])
    sys.exit(answer["exit"])


def _run_child(request: dict) -> tuple[dict | None, str]:
    with tempfile.TemporaryDirectory(prefix="tfm-verify-") as folder:
        ask, answer = Path(folder) / "request.json", Path(folder) / "answer.json"
        ask.write_text(json.dumps(request))
        done = subprocess.run([sys.executable, "-m", "tf_migrate.verify.child", str(ask), str(answer)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        output = done.stdout + done.stderr
        try:
            found = json.loads(answer.read_text())
        except (OSError, ValueError):
            return None, output + f"\n[exit status {done.returncode}]"
        return found, output


def _ending(output: str) -> str:
    lines = output.strip().splitlines()
    return lines[-1].strip("[]") if lines else "no output"
