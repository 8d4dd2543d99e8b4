"""`python -m tests.audit_writes ARGS...`: run `gptrecipe ARGS...`, logging every file this process writes.

Python-level writes (open/io.open for writing, os.replace/os.rename targets) are appended to
$AUDIT_DIR/rank$RANK.log, one path a line, so a torchrun test can check that only rank 0 writes shared files.
"""

import builtins
import io
import os
import sys

_open, _replace, _rename = builtins.open, os.replace, os.rename
_log = os.path.join(os.environ["AUDIT_DIR"], f"rank{os.environ.get('RANK', '0')}.log")


def _record(path) -> None:
    with _open(_log, "a") as f:
        f.write(os.path.abspath(os.fspath(path)) + "\n")


def _audited_open(file, mode="r", *args, **kwargs):
    if isinstance(file, str | bytes | os.PathLike) and any(c in mode for c in "wax+"):
        _record(file)
    return _open(file, mode, *args, **kwargs)


def _audited(fn):
    def wrapper(src, dst, *args, **kwargs):
        _record(dst)
        return fn(src, dst, *args, **kwargs)
    return wrapper


builtins.open = io.open = _audited_open
os.replace, os.rename = _audited(_replace), _audited(_rename)

from gptrecipe.cli import main  # noqa: E402  (after the patches, so every module sees them)

sys.exit(main(sys.argv[1:]))
