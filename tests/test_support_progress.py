"""Progress output: a tqdm bar on a terminal, lines at each tenth elsewhere, nothing when
quiet; the command line's --quiet."""
import io
import re

from lego_tvm.cli import main
from lego_tvm.support.progress import Progress, as_progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_lines_at_each_tenth_without_a_terminal():
    lines = []
    progress = as_progress(lines.append)
    assert not progress.interactive
    with progress.bar(20, "trials", "tuning") as bar:
        progress("a status line")
        for n in range(20):
            bar.set_postfix_str(f"best {n}")
            bar.update(1)
    assert lines[0] == "a status line"
    assert [line.split(", about")[0] for line in lines[1:]] == [
        f"tuning: {n}/20 trials, best {n - 1}" for n in range(2, 21, 2)]
    assert all(re.search(r", about \d+ s left$", line) for line in lines[1:-1])
    assert lines[-1].endswith("best 19")        # nothing left


def test_quiet_prints_nothing():
    stream = Terminal()
    progress = Progress(quiet=True, stream=stream)
    with progress.bar(5, "trials", "tuning") as bar:
        progress("a status line")
        bar.update(5)
    assert stream.getvalue() == "" and as_progress(None).quiet


def test_a_terminal_gets_a_bar_with_the_latest_line():
    stream = Terminal()
    progress = Progress(stream=stream)
    assert progress.interactive
    with progress.bar(4, "benchmarks", "bench") as bar:
        progress("[lego_vgg16] compiling: lego-tvm")
        bar.update(4)
    shown = stream.getvalue()
    assert "[lego_vgg16] compiling: lego-tvm" in shown and "4/4" in shown
    progress("after the bar")
    assert stream.getvalue().endswith("after the bar\n")


def test_cli_quiet_compile_prints_no_progress(capsys):
    main(["--quiet", "compile", "lego_vgg16", "--no-check"])
    captured = capsys.readouterr()
    assert "Lego layers rewritten: 14" in captured.out
    assert captured.err == ""
    main(["compile", "lego_vgg16", "--no-check"])
    assert "scheduling and building for llvm" in capsys.readouterr().err
