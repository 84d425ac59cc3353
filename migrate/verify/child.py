"""The process that runs the user's code for `tf-migrate verify`.

verify imports BEFORE and AFTER and evaluates --build and --input, which execute the user's
files. That code may call `sys.exit` or `os._exit` at import, print, or crash the interpreter, so
it runs here, in a child process, and the parent trusts only the result this process writes to
the file it was given. Any other ending of this process is "could not run" (exit 2).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def run(request: dict) -> dict:
    """{"exit": 0|1|2, "document": report text or JSON, "error": one line}."""
    try:
        from tf_migrate.verify.loading import LoadError
        from tf_migrate.verify.session import verify
    except ImportError as exc:
        return {"exit": 2, "error": f"verify needs torch ({exc}); pip install 'tf-migrate[torch]'"}
    from tf_migrate.verify.options import VerifyOptions

    options = VerifyOptions.from_json(request["options"])
    try:
        result = verify(options)
        document = _document(result, request)
    except LoadError as exc:
        return {"exit": 2, "error": str(exc), "traceback": traceback.format_exc()}
    except BaseException as exc:  # noqa: BLE001 - whatever the user's code raises, the parent says so in one line
        return {"exit": 2, "error": f"could not run: {type(exc).__name__}: {str(exc).strip()[:300]}",
                "traceback": traceback.format_exc()}
    return {"exit": 0 if result.verified else 1, "document": document}


def _document(result, request: dict) -> str:
    from tf_migrate.verify import report

    fmt = request["format"]
    document = report.json_document(result) if fmt == "json" else "\n".join(report.text_lines(result))
    bench = request.get("bench")
    if bench:
        from tf_migrate.bench.report import bench_pair

        options = request["options"]
        document = bench_pair(document, fmt, options["before"], options["after"], options["build"],
                              options["entry"], bench["lengths"], bench["input"])
    return document


if __name__ == "__main__":
    out = Path(sys.argv[2])
    answer = run(json.loads(Path(sys.argv[1]).read_text()))
    out.write_text(json.dumps(answer))
