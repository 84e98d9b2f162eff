"""The measurement helpers the study and the benchmark share: the machine record, peak memory,
the text table and the failure test, including results written before they were shared."""

import torch

from longctx.experiments import measure


def test_cuda_memory_meter_measures_growth_over_the_block(monkeypatch):
    allocated = {"now": 100 * 2**20, "peak": 900 * 2**20}  # a peak left over from an earlier run
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda: allocated.update(peak=allocated["now"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: allocated["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: allocated["peak"])
    with measure.memory_meter("cuda") as memory:
        allocated.update(peak=allocated["now"] + 64 * 2**20)  # training: 64 MiB more at its peak
    assert memory.growth_mib == 64
    assert isinstance(measure.memory_meter("cpu"), measure.PeakRSS)


def test_peak_rss_sees_memory_held_inside_the_block():
    with measure.PeakRSS() as memory:
        held = torch.ones(16 * 2**20 // 4)  # 16 MiB, written: resident
    assert memory.growth_mib > 8
    del held


def test_environment_keys_and_the_machine_of_old_and_new_study_results():
    environment = measure.environment("cpu")
    assert {"device", "device_name", "torch_threads", "torch", "transformers", "longctx"} \
        <= set(environment)
    threads = torch.get_num_threads()
    assert measure.machine_summary(environment) == f"cpu, {threads} threads"
    # study_results.json written before the shared environment(): `cpu_threads`, `gpu`
    assert measure.machine_summary({"device": "cpu", "cpu_threads": 2}) == "cpu, 2 threads"
    assert measure.machine_summary({"device": "cuda", "gpu": "NVIDIA H100"}) == "NVIDIA H100"
    assert measure.machine_summary({"device": "cuda", "device_name": "NVIDIA H100"}) \
        == "NVIDIA H100"


def test_format_table_aligns_columns_and_lets_a_short_line_run_on():
    lines = [["a", "1", "10"], ["bbb", "22", "1,000"], ["c", "FAILED: a long message"]]
    assert measure.format_table(["name", "n", "value"], lines).splitlines() == [
        "name |  n | value",
        "-----+----+------",
        "a    |  1 |    10",
        "bbb  | 22 | 1,000",
        "c    | FAILED: a long message"]


def test_failed_reads_study_rows_and_benchmark_cells():
    assert measure.failed({"results": [{"errors": {}}, {"errors": {"classification": "x"}}]})
    assert not measure.failed({"results": [{"errors": {}, "skipped": ["classification"]}]})
    # benchmark cells: out of memory or an unsupported length is a result, not a failure
    assert not measure.failed({"results": [{"error_kind": None}, {"error_kind": "out_of_memory"},
                                           {"error_kind": "unsupported"}]})
    assert measure.failed({"results": [{"error_kind": "error"}]})
