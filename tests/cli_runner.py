"""Run the ``minunet`` command line inside the test process, and check its one-line errors."""
from minunet.cli.main import main


def run(args, capsys):
    """(exit status, stdout, stderr) of ``minunet ARGS``."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    """A user mistake: exit status 2 and exactly one line 'Error: ...' containing every fragment."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
