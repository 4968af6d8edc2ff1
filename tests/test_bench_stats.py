"""Bench statistics as tables: percentiles, deviation, sequence accounting with wraparound, drift, /proc parsing."""

import subprocess
import sys

import pytest

from eko_bench import procstat, stats

MS = 1_000_000


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], stats.Distribution(count=0, p50=None, p90=None, p99=None, max=None)),
        ([7], stats.Distribution(count=1, p50=7, p90=7, p99=7, max=7)),
        (list(range(100, 0, -1)), stats.Distribution(count=100, p50=50, p90=90, p99=99, max=100)),
        ([3, 1, 2], stats.Distribution(count=3, p50=2, p90=3, p99=3, max=3)),
        (list(range(1, 1001)), stats.Distribution(count=1000, p50=500, p90=900, p99=990, max=1000)),
    ],
)
def test_distribution_is_nearest_rank(values, expected):
    assert stats.distribution(values) == expected


def test_percentile_rejects_empty_and_bad_fraction():
    with pytest.raises(ValueError, match="percentile of no values"):
        stats.percentile([], 0.5)
    with pytest.raises(ValueError, match=r"fraction 0 is not in \(0, 1\]"):
        stats.percentile([1], 0)


def test_scaled_distribution_converts_units():
    found = stats.distribution([1 * MS, 3 * MS]).scaled(1e-6)
    assert (found.count, found.p50, found.max) == (2, 1.0, 3.0)


@pytest.mark.parametrize(
    ("arrivals", "deviations", "max_gap"),
    [
        ([], [], None),
        ([5], [], None),
        ([0, 20 * MS, 41 * MS, 60 * MS], [0, 1 * MS, 1 * MS], 21 * MS),
        ([0, 40 * MS], [20 * MS], 40 * MS),  # a lost packet shows as a 20 ms deviation
        ([0, 15 * MS], [5 * MS], 15 * MS),
    ],
)
def test_interarrival_deviation_and_max_gap(arrivals, deviations, max_gap):
    assert stats.interarrival_deviations(arrivals) == deviations
    assert stats.max_gap_ns(arrivals) == max_gap


@pytest.mark.parametrize(
    ("sequence_numbers", "received", "expected", "lost", "duplicates", "reordered"),
    [
        ([], 0, 0, 0, 0, 0),
        ([1, 2, 3], 3, 3, 0, 0, 0),
        ([1, 2, 4], 3, 4, 1, 0, 0),
        ([1, 2, 2, 3], 4, 3, 0, 1, 0),
        ([1, 3, 2, 4], 4, 4, 0, 0, 1),
        ([65534, 65535, 0, 1], 4, 4, 0, 0, 0),
        ([65535, 1], 2, 3, 1, 0, 0),
        ([0, 65535], 2, 2, 0, 0, 1),  # 65535 is just before 0, not 65535 later
        ([65535, 0, 65535, 1], 4, 3, 0, 1, 0),
        ([10, 14, 11, 11, 12, 13], 6, 5, 0, 1, 3),
    ],
)
def test_sequence_quality(sequence_numbers, received, expected, lost, duplicates, reordered):
    assert stats.sequence_quality(sequence_numbers) == stats.SequenceQuality(
        received=received, expected=expected, lost=lost, duplicates=duplicates, reordered=reordered)


def test_sequence_quality_adds_up():
    total = stats.sequence_quality([1, 3]) + stats.sequence_quality([5, 5])
    assert total == stats.SequenceQuality(received=4, expected=4, lost=1, duplicates=1, reordered=0)


@pytest.mark.parametrize(
    ("values", "bits", "expected"),
    [
        ([4294967200, 4294967295, 64, 224], 32, [4294967200, 4294967295, 4294967360, 4294967520]),
        ([5, 3, 65535], 16, [5, 3, -1]),
        ([0, 32767, 65534], 16, [0, 32767, 65534]),
        ([0, 32768], 16, [0, -32768]),  # exactly half a cycle ahead counts as behind
    ],
)
def test_unwrap(values, bits, expected):
    assert stats.unwrap(values, bits) == expected


def _stream(count, gap_ns, start_stamp=0, jitter_ns=0):
    arrivals = [index * gap_ns + (jitter_ns if index % 2 else 0) for index in range(count)]
    stamps = [(start_stamp + 160 * index) % (1 << 32) for index in range(count)]
    return arrivals, stamps


def test_drift_zero_for_an_exact_sender():
    assert stats.drift_ms_per_minute(*_stream(3000, 20 * MS)) == pytest.approx(0.0, abs=1e-9)


def test_drift_of_a_slow_sender_across_timestamp_wrap():
    # Packets 20.02 ms apart carrying 20 ms of media: arrival gains 1 - 20/20.02 s per second.
    arrivals, stamps = _stream(3000, 20 * MS + 20_000, start_stamp=(1 << 32) - 800)
    assert stats.drift_ms_per_minute(arrivals, stamps) == pytest.approx(60_000 * (1 - 20 / 20.02), rel=1e-6)


def test_drift_ignores_jitter_without_a_trend():
    assert abs(stats.drift_ms_per_minute(*_stream(3000, 20 * MS, jitter_ns=1 * MS))) < 0.01


def test_drift_needs_a_second_of_packets_and_matching_lengths():
    assert stats.drift_ms_per_minute(*_stream(50, 20 * MS)) is None
    with pytest.raises(ValueError, match="3 arrivals but 2 timestamps"):
        stats.drift_ms_per_minute([0, 1, 2], [0, 160])


def test_proc_stat_with_parentheses_in_the_name():
    line = "4242 (eko (rtp) x) S 1 4242 4242 0 -1 4194304 900 0 0 0 1234 567 0 0 20 0 3 0 100 1000000 2000\n"
    assert procstat.cpu_ticks_from_stat(line) == 1234 + 567


def test_proc_stat_rejects_garbage():
    with pytest.raises(ValueError, match="unrecognised /proc stat line"):
        procstat.cpu_ticks_from_stat("nonsense")


def test_proc_status_rss():
    text = "Name:\tpython\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n"
    assert procstat.rss_kib_from_status(text) == 12345
    with pytest.raises(ValueError, match="no 'VmRSS: N kB' line"):
        procstat.rss_kib_from_status("Name:\tkthreadd\n")


def test_cpu_percent_from_samples():
    first = procstat.Sample(at=10.0, cpu_ticks=100, rss_kib=1)
    last = procstat.Sample(at=12.0, cpu_ticks=100 + procstat.CLOCK_TICKS, rss_kib=1)
    assert procstat.cpu_percent(first, last) == pytest.approx(50.0)
    assert procstat.cpu_percent(last, last) is None


def test_sampling_this_process():
    import os
    import time
    found = procstat.sample(os.getpid(), time.monotonic())
    assert found.rss_kib > 1000 and found.cpu_ticks >= 0


def test_core_modules_import_neither_trio_nor_socket():
    code = ("import sys; import eko_bench.uac, eko_bench.stats, eko_bench.procstat;"
            " print(sorted(name for name in ('trio', 'socket') if name in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
