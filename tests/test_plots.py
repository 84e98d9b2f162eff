"""The shared plotting helpers: plain-number labels and byte-stable PNGs."""

import pytest

from longctx.experiments import plots


@pytest.mark.parametrize("value, label", [(1024, "1K"), (16384, "16K"), (1536, "1.5K"),
                                          (1 << 20, "1M"), (300, "300"), (0.25, "0.25")])
def test_plain_number(value, label):
    assert plots.plain_number(value) == label


def test_lines_against_length_labels_ticks_plainly_and_is_reproducible(tmp_path):
    series = {"a": [(1024, 3.0), (4096, 12.0), (16384, 50.0)], "b": [(1024, 2.0), (4096, None)]}
    first = plots.lines_against_length(series, tmp_path / "one.png", xlabel="length",
                                       ylabel="s", title="t")
    second = plots.lines_against_length(series, tmp_path / "two.png", xlabel="length",
                                        ylabel="s", title="t")
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()
    assert first.endswith("one.png") and second.endswith("two.png")

    import matplotlib.pyplot as plt
    figure, axes = plt.subplots()
    axes.plot([1024, 16384], [1, 2])
    plots.plain_log_axis(axes, "x", [1024, 4096, 16384])
    figure.canvas.draw()
    labels = [tick.get_text() for tick in axes.get_xticklabels()]
    plt.close(figure)
    assert labels == ["1K", "4K", "16K"]


def test_value_axes_are_labelled_in_decimal_numbers():
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots()
    axes.plot([1024, 4096], [900, 12000])
    plots.decimal_log_axis(axes)
    figure.canvas.draw()
    labels = {tick.get_text() for tick in axes.get_yticklabels()}
    plt.close(figure)
    assert {"1,000", "2,000", "5,000", "10,000"} <= labels
