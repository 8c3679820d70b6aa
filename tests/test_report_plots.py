"""The report's plots, read back from the figure before it is saved: what a reader sees on the Pareto and the
sparsity plots, for the rows of tests/test_report_contents.py."""

import pytest
from test_report_contents import _bench, _lat, _report, _rows

from edgeqa.bench.report import make_row


@pytest.fixture
def figures(monkeypatch):
    from edgeqa.bench import report as report_module

    saved = []
    monkeypatch.setattr(report_module, "_save", lambda fig, path: saved.append((fig, path)))
    yield saved
    import matplotlib.pyplot as plt

    plt.close("all")


RED, GRAY = (0.839, 0.153, 0.157, 1.0), (0.498, 0.498, 0.498, 1.0)  # matplotlib's tab:red and tab:gray


def test_the_pareto_plot_marks_the_front_and_labels_every_point(figures, tmp_path):
    """Each row a point at (p50, F1), red on the front and gray off it, labelled with its name 6 points right and 4
    up; a label whose point nearly coincides with an earlier one (within 8% of the time span and 4% of the F1
    span) steps 11 points down; the front is a red step line from the fastest point."""
    from edgeqa.bench.report import plot_pareto

    rows = _rows()
    rows.append(make_row("twin-ish", _bench("m/t", 5, 1.0, [_lat(1, 384, 10.5)]), {"exact_match": 1, "f1": 79.8}))
    # 3 ms from int8 and 2.5 from twin-ish: more than 8% of the 30 ms between the fastest and the slowest point
    rows.append(make_row("apart", _bench("m/a", 5, 1.0, [_lat(1, 384, 13.0)]), {"exact_match": 1, "f1": 79.85}))
    report = _report(rows)
    plot_pareto(report, tmp_path / "p.png")
    ((fig, path),) = figures
    ax = fig.axes[0]
    assert path == tmp_path / "p.png"
    points = [(tuple(c.get_offsets()[0]), tuple(round(v, 3) for v in c.get_facecolor()[0])) for c in ax.collections]
    assert points == [((40.0, 80.456), RED), ((10.0, 79.9), RED), ((38.0, 75.0), GRAY), ((10.5, 79.8), GRAY),
                      ((13.0, 79.85), GRAY)]  # fmt: skip
    labels = [(t.get_text(), t.xy, t.xyann) for t in ax.texts]
    assert labels == [("fp32", (40.0, 80.456), (6, 4)), ("int8", (10.0, 79.9), (6, 4)),
                      ("sparse", (38.0, 75.0), (6, 4)), ("twin-ish", (10.5, 79.8), (6, -7)),
                      ("apart", (13.0, 79.85), (6, 4))]  # fmt: skip
    assert {(t.anncoords, t.get_fontsize()) for t in ax.texts} == {("offset points", 8)}
    (front,) = ax.lines
    assert list(front.get_xdata()) == [10.0, 40.0] and list(front.get_ydata()) == [79.9, 80.456]
    assert front.get_drawstyle() == "steps-post" and front.get_label() == "Pareto front"
    assert front.get_color() == "tab:red" and front.get_alpha() == 0.6
    assert {(c.get_sizes()[0], c.get_zorder()) for c in ax.collections} == {(60, 3)}  # points drawn over the line
    assert ax.get_legend() is not None
    assert ax.get_xlabel() == "p50 latency, ms (batch 1, sequence 384, 2 threads)"
    assert ax.get_ylabel() == "SQuAD F1" and ax.get_title() == "demo: F1 against latency"


def test_a_front_of_one_point_draws_no_line(figures, tmp_path):
    from edgeqa.bench.report import plot_pareto

    only = make_row("only", _bench("m", 1, 1.0, [_lat(1, 384, 2.0)]), {"exact_match": 1, "f1": 2.0})
    plot_pareto(_report([only], reference="only"), tmp_path / "p.png")
    ((fig, _),) = figures
    assert len(fig.axes[0].lines) == 0 and fig.axes[0].get_legend() is None


def test_the_sparsity_plot_draws_f1_and_compressed_size_against_zeros(figures, tmp_path):
    """Rows with an encoder sparsity, in order of it: F1 (left axis) at 0, 50 and 60%, and the gzip size in MB (right
    axis, from 0) of the rows that have one."""
    from edgeqa.bench.report import plot_sparsity

    rows = _rows()
    rows[0]["extra"]["weights"]["encoder_sparsity"] = 0.7  # now the sparsest
    rows.append(make_row("half", _bench("m/h", 90, 1.0, [_lat(1, 384, 30.0)]), {"exact_match": 1, "f1": 78.0},
                         {"weights": {"encoder_sparsity": 0.5}}))  # fmt: skip
    assert plot_sparsity(_report(rows), tmp_path / "s.png")
    ((fig, path),) = figures
    ax, right = fig.axes
    assert path == tmp_path / "s.png"
    (f1,) = ax.lines
    assert list(f1.get_xdata()) == [50.0, 60.0, 70.0] and list(f1.get_ydata()) == [78.0, 75.0, 80.456]
    assert (f1.get_marker(), f1.get_linestyle(), f1.get_color()) == ("o", "-", "tab:blue")
    labels = [(t.get_text(), t.xy, t.xyann) for t in ax.texts]
    assert labels == [
        ("half", (50.0, 78.0), (5, 5)),
        ("sparse", (60.0, 75.0), (5, 5)),
        ("fp32", (70.0, 80.456), (5, 5)),
    ]
    assert {t.anncoords for t in ax.texts} == {"offset points"}
    (size,) = right.lines
    assert list(size.get_xdata()) == [60.0, 70.0] and list(size.get_ydata()) == [50.0, 83.0]
    assert (size.get_marker(), size.get_linestyle(), size.get_color()) == ("s", "--", "tab:green")
    assert ax.yaxis.label.get_color() == "tab:blue" and right.yaxis.label.get_color() == "tab:green"
    assert right.get_ylim()[0] == 0 and ax.margins()[0] == 0.2  # room beside the outermost labels
    assert ax.get_xlabel() == "zeros in the encoder layers' weight matrices, % (measured on the file)"
    assert ax.get_ylabel() == "SQuAD F1" and right.get_ylabel() == "file size gzip-compressed, MB"
    assert ax.get_title() == "demo: F1 and compressed size against sparsity"


def test_no_sparsity_plot_without_a_sparse_row_and_something_to_compare(figures, tmp_path):
    from edgeqa.bench.report import plot_sparsity

    rows = _rows()
    assert not plot_sparsity(_report([rows[2]], reference="sparse"), tmp_path / "s.png")  # nothing to compare
    rows[2]["extra"]["weights"]["matrix_sparsity"] = 0.05  # zeros of int8 zero points, not pruning
    assert not plot_sparsity(_report(rows), tmp_path / "s.png")
    assert figures == []


def test_the_saved_plot_is_a_960_by_660_png_with_a_grid(tmp_path):
    import struct

    from edgeqa.bench.report import write_report

    paths = write_report(_report(), tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md", "pareto.png", "sparsity.png"]
    for name in ("pareto.png", "sparsity.png"):
        head = (tmp_path / name).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (960, 660)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png", "report.json", "report.md", "sparsity.png"]
    import matplotlib.pyplot as plt

    from edgeqa.bench.report import _save

    fig, ax = plt.subplots()
    _save(fig, tmp_path / "g.png")
    grid = ax.xaxis.get_gridlines()[0]
    assert grid.get_visible() and grid.get_alpha() == 0.3 and (tmp_path / "g.png").stat().st_size > 0
    assert not plt.fignum_exists(fig.number)  # closed: a report of many rows leaves no figures behind
