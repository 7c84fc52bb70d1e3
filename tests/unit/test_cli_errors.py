"""Expected CLI failures print one line with the fix and exit 2; unexpected ones keep their traceback."""

from __future__ import annotations

import pytest

from ecgmodel.errors import UserError
from flows import cli


def _parser_with(func):
    parser = cli.argparse.ArgumentParser(prog="ecgssl")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("boom")
    p.set_defaults(func=func)
    return parser


def test_user_error_is_one_line_with_fix(monkeypatch, capsys):
    def fail(args):
        raise UserError("store data/x.zarr: no commit.json (rule: a store is readable only once committed)",
                        "ecgssl inspect data/x.zarr --recover")

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_with(fail))
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "no commit.json" in err and "fix: ecgssl inspect data/x.zarr --recover" in err


def test_unexpected_error_keeps_traceback(monkeypatch):
    def fail(args):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_with(fail))
    with pytest.raises(ZeroDivisionError):
        cli.main(["boom"])
