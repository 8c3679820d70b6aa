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
    """Each row a point at (p50, F1), red on the front and gray off it, labelled with its name 6 points off it at the
    first free spot: right of fp32 and sparse, left of int8 (the front runs right from it), below twin-ish and above
    apart (the front and the labels before them in the way); the front is a red step line from the fastest point."""
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
    assert labels == [("fp32", (40.0, 80.456), (6, 0)), ("int8", (10.0, 79.9), (-6, 0)),
                      ("sparse", (38.0, 75.0), (6, 0)), ("twin-ish", (10.5, 79.8), (0, -6)),
                      ("apart", (13.0, 79.85), (0, 6))]  # fmt: skip
    assert {(t.anncoords, t.get_fontsize()) for t in ax.texts} == {("offset points", 8)}
    (front,) = ax.lines
    assert list(front.get_xdata()) == [10.0, 40.0] and list(front.get_ydata()) == [79.9, 80.456]
    assert front.get_drawstyle() == "steps-post" and front.get_label() == "Pareto front"
    assert front.get_color() == "tab:red" and front.get_alpha() == 0.6
    assert {(c.get_sizes()[0], c.get_zorder()) for c in ax.collections} == {(60, 3)}  # points drawn over the line
    assert ax.get_legend() is not None
    assert ax.get_xlabel() == "p50 latency, ms (batch 1, sequence 384, 2 threads)"
    assert ax.get_ylabel() == "SQuAD F1" and ax.get_title() == "demo: F1 against latency"


QUICKSTART = [("pytorch-fp32", 60, 82.1), ("onnx-fp32", 45, 82.1), ("onnx-int8-dynamic", 20, 81.8),
              ("onnx-int8-dynamic-l0fp32", 21, 81.9), ("ort-int8-dynamic", 20.3, 81.8), ("onnx-int8-static", 19, 80.0),
              ("pytorch-int8", 35, 81.5)]  # fmt: skip


def test_labels_of_close_points_with_long_names_cover_nothing(figures):
    """As in the quickstart's report, where three int8 points sit within 1 ms and 0.1 F1: each name once, and no
    label over another label, a point or the front, or outside the axes; a label moved away has a line to its point."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    from edgeqa.bench.report import LABEL_SPOTS, pareto_figure

    rows = [make_row(n, _bench(f"m/{n}", 50, 100.0, [_lat(1, 384, ms)]), {"exact_match": 70, "f1": f1})
            for n, ms, f1 in QUICKSTART]  # fmt: skip
    fig, texts = pareto_figure(_report(rows, reference="pytorch-fp32"))
    ax = fig.axes[0]
    assert texts == list(ax.texts) and sorted(t.get_text() for t in texts) == sorted(n for n, _, _ in QUICKSTART)
    fig.tight_layout()  # as _save lays it out
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the text alone, without its leader line
    r = 60**0.5 / 2 * fig.dpi / 72  # the markers' radius in pixels
    xy = ax.transData.transform([(ms, f1) for _, ms, f1 in QUICKSTART])
    markers = [Bbox.from_extents(x - r, y - r, x + r, y + r) for x, y in xy]
    (front,) = ax.lines
    front = front.get_transform().transform_path(front.get_path())
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[i + 1 :] + markers), texts[i].get_text()
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
        assert ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1)
        assert not front.intersects_bbox(box, filled=False), texts[i].get_text()
    near = LABEL_SPOTS[0][0]
    assert all((t.arrow_patch is not None) == (max(map(abs, t.xyann)) > near) for t in texts)
    assert any(t.arrow_patch is not None for t in texts)  # here one had to move


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
    assert [(t.get_text(), t.xy) for t in ax.texts] == [("half", (50.0, 78.0)), ("sparse", (60.0, 75.0)),
                                                       ("fp32", (70.0, 80.456))]  # fmt: skip
    assert {t.anncoords for t in ax.texts} == {"offset points"}
    # placed as the Pareto plot's are: no label over another or across the F1 curve
    fig.canvas.draw()
    boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in ax.texts]
    curve = f1.get_transform().transform_path(f1.get_path())
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[i + 1 :]) and not curve.intersects_bbox(box, filled=False)
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
