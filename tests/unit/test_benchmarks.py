"""The benchmark scripts run here: ``core_gpu.py --tiny`` on the CPU, and its full-size SDXL configs are SDXL's."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def core_gpu() -> ModuleType:
    return load_benchmark("core_gpu")


def test_core_gpu_tiny_times_the_real_loop_and_writes_every_field(core_gpu: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "core.json"
    argv = ["--tiny", "--face-sizes", "128", "64", "--batches", "2", "--channels-last", "on", "--steps", "4", "2"]
    argv += ["--timed-steps", "1", "3", "--repeats", "1", "--exact", "--peak-tflops", "1.5", "--out", str(out)]
    assert core_gpu.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "core_gpu" and report["device"]["type"] == "cpu"
    by_size = {r["face_size"]: r for r in report["results"]}
    assert set(by_size) == {128, 64}
    for r in by_size.values():
        assert r["faces_per_batch"] == 2 and r["dtype"] == "float32" and r["channels_last"] and r["fuse_lora"]
        assert r["measured"]["steps"] == [1, 3] and all(s > 0 for s in r["measured"]["seconds"])
        assert r["per_step_s"] > 0 and r["unet_loop_tflops"] > 0
        assert r["mfu"] == pytest.approx(r["unet_loop_tflops"] / 1.5, rel=1e-3)
        assert r["peak_source"] == "--peak-tflops"
        assert set(r["seconds_per_face"]) == set(r["seconds_per_face_exact"]) == {"4", "2"}
        assert r["seconds_per_face"]["4"] >= r["seconds_per_face"]["2"] > 0
    # MFU on the fused basis whatever the configuration: the counted FLOPs are those of a fused call.
    assert report["flops_basis"]["fused_lora"] is True
    assert {r["unet_flops_per_face_call"] for r in by_size.values()} == set(
        report["flops_basis"]["unet_flops_per_face_call"].values()
    )
    # FLOPs counted on a UNet call grow with the pixels (text projections do not; attention does faster).
    ratio = by_size[128]["unet_flops_per_face_call"] / by_size[64]["unet_flops_per_face_call"]
    assert 2.0 < ratio <= 16.0


def test_full_size_configs_build_sdxl_base_on_the_meta_device(core_gpu: ModuleType) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**core_gpu.SDXL_UNET)
        vae = AutoencoderKL(**core_gpu.SDXL_VAE)
    assert sum(p.numel() for p in unet.parameters()) == core_gpu.SDXL_UNET_PARAMETERS == 2_567_463_684
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    # pooled text (1280) + 6 time ids x 256 must be what the addition embedding takes
    assert unet.add_embedding.linear_1.in_features == 2816
    assert [len(b.attentions) for b in unet.down_blocks if hasattr(b, "attentions")] == [2, 2]
    assert len(unet.down_blocks[2].attentions[0].transformer_blocks) == 10


@pytest.mark.parametrize(
    ("name", "dtype", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.0),
        ("NVIDIA H100 PCIe", "float16", 756.0),
        ("NVIDIA H200", "bfloat16", 989.0),
        ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
        ("NVIDIA L40S", "float16", 362.0),
        ("NVIDIA H100 80GB HBM3", "float32", None),
        ("Some Future GPU", "bfloat16", None),
    ],
)
def test_peak_table_by_device_name(core_gpu: ModuleType, name: str, dtype: str, peak: float | None) -> None:
    assert core_gpu.peak_for(name, dtype, None)[0] == peak
    assert core_gpu.peak_for(name, dtype, 123.0) == (123.0, "--peak-tflops")


def test_fast_profile_is_the_production_profile_with_fewer_steps_and_the_equivalent_speed_ups() -> None:
    from raypipe.config import load_config

    fast = load_config(str(ROOT / "jobs" / "configs" / "fast.yaml"))
    reference = load_config(str(ROOT / "jobs" / "configs" / "s3-gpu.yaml"))
    assert fast.method.num_steps < reference.method.num_steps
    assert fast.models.channels_last and fast.models.fuse_lora
    # everything that decides what a face becomes, except the step count, is the reference's
    same = ("guidance_scale", "skip", "id_scale", "ip_adapter_scale", "face_size", "attribute_prompt", "seed")
    assert all(getattr(fast.method, k) == getattr(reference.method, k) for k in same)
    assert (fast.models.sdxl, fast.models.ip_adapter, fast.models.dtype) == (
        reference.models.sdxl,
        reference.models.ip_adapter,
        reference.models.dtype,
    )
    assert fast.audit == reference.audit  # the re-identification gate is not relaxed


def test_compose_gate_quick_gives_the_same_verdicts_from_fewer_detections(tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    out = tmp_path / "gate.json"
    assert load_benchmark("compose_gate").main(["--quick", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["faces_found"] == 1 and row["same_verdicts"]
    assert row["per-face_s"] > 0 and row["shared_s"] > 0


def test_unet_fill_quick_counts_fuller_calls_with_the_queue(tmp_path: Path) -> None:
    out = tmp_path / "fill.json"
    assert load_benchmark("unet_fill").main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    before, after = report["results"]["before"], report["results"]["after"]
    assert report["photo_face_counts"]["t1.jpg"] == 6 and report["photo_face_counts"]["astronaut"] == 1
    assert after["full_fraction"] >= 0.95 and after["full_fraction"] > before["full_fraction"]
    assert after["calls_per_face"] < before["calls_per_face"]
    assert 2 * report["settings"]["num_steps"] / report["settings"]["face_batch_size"] <= after["calls_per_face"]


def test_preview_profile_is_the_production_profile_with_25_steps_at_512_px() -> None:
    from raypipe.config import load_config

    preview = load_config(str(ROOT / "jobs" / "configs" / "preview.yaml"))
    reference = load_config(str(ROOT / "jobs" / "configs" / "s3-gpu.yaml"))
    assert (preview.method.num_steps, preview.method.face_size) == (25, 512)
    same = ("guidance_scale", "skip", "id_scale", "ip_adapter_scale", "attribute_prompt", "seed")
    assert all(getattr(preview.method, k) == getattr(reference.method, k) for k in same)
    assert preview.audit == reference.audit  # the re-identification gate is not relaxed
    # The documented cost ratio is the counted one (benchmarks/results/core_gpu-count.json, fused basis).
    counted = {
        r["face_size"]: r["unet_flops_per_face_call"]
        for r in json.loads((ROOT / "benchmarks" / "results" / "core_gpu-count.json").read_text())["results"]
        if r["fuse_lora"]
    }
    ratio = (25 * counted[512]) / (100 * counted[1024])
    assert round(ratio, 3) == 0.059
    assert "0.059x" in (ROOT / "jobs" / "configs" / "preview.yaml").read_text()
    assert "0.059x" in (ROOT / "BENCHMARKS.md").read_text()


def test_the_memory_table_is_the_benchmarks() -> None:
    report = json.loads((ROOT / "benchmarks" / "results" / "memory_model.json").read_text())
    rows = {(r["face_size"], r["card_gb"]): r for r in report["results"]}
    assert {card for _, card in rows} == {24, 48, 80}
    text = (ROOT / "BENCHMARKS.md").read_text()
    big = rows[(1024, 24)]
    row = (
        f"| 1024 px | {big['each_further_face_gib']:.2f} GiB | {big['queue_per_call_face_gib']:.2f} GiB |"
        f" {big['vae_decode_one_face_gib']:.1f} GiB |"
    )
    assert row in text
    assert all(r["vae_fits"] for r in rows.values())


def test_the_gpu_session_script_asks_for_flags_the_benchmarks_have() -> None:
    import shlex
    import subprocess

    script = ROOT / "benchmarks" / "gpu_session.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text().replace("\\\n", " ")
    core = load_benchmark("core_gpu")
    (line,) = [line for line in text.splitlines() if "benchmarks/core_gpu.py" in line]
    argv = shlex.split(line.split("benchmarks/core_gpu.py", 1)[1].replace('"$OUT', '"/tmp'))
    args = core.parse_args(argv)
    assert args.compile == ["off", "on"] and args.fuse_lora == ["on"] and args.face_sizes == [1024]


def test_finalize_memory_quick_grows_with_a_sample_not_with_the_shard(tmp_path: Path) -> None:
    # A real finalize in a fresh process: 6x the shard (32 vs 192 MB) adds far less than the shard
    # would (holding the tar took 2.5-3.2x the shard before streaming).
    out = tmp_path / "finalize.json"
    assert load_benchmark("finalize_memory").main(["--quick", "--out", str(out)]) == 0
    small, large = json.loads(out.read_text())["rows"]
    assert large["input_shard_mb"] >= 5 * small["input_shard_mb"]
    assert large["output_shard_mb"] >= large["input_shard_mb"] * 0.99  # every sample released
    extra_shard = large["input_shard_mb"] - small["input_shard_mb"]
    assert large["finalize_growth_mb"] - small["finalize_growth_mb"] < 0.25 * extra_shard
    assert large["process_peak_mb"] < small["process_peak_mb"] + 0.25 * extra_shard


def test_finalize_memory_quick_of_a_table_grows_with_a_row_group_not_with_the_table(tmp_path: Path) -> None:
    out = tmp_path / "finalize.json"
    assert load_benchmark("finalize_memory").main(["--quick", "--format", "parquet", "--out", str(out)]) == 0
    small, large = json.loads(out.read_text())["rows"]
    assert large["input_shard_mb"] >= 5 * small["input_shard_mb"]
    assert large["output_shard_mb"] >= large["input_shard_mb"] * 0.99  # every row released
    extra = large["input_shard_mb"] - small["input_shard_mb"]
    assert large["finalize_growth_mb"] - small["finalize_growth_mb"] < 0.25 * extra


def test_the_finalize_memory_figures_of_tables_are_the_benchmarks() -> None:
    report = json.loads((ROOT / "benchmarks" / "results" / "finalize_memory_parquet.json").read_text())
    largest = report["rows"][-1]
    assert largest["input_shard_mb"] >= 1400 and largest["process_peak_mb"] < 1200
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert (
        f"A {largest['input_shard_mb']:.0f} MB table finalizes in a process of {largest['process_peak_mb']:.0f} MB"
        in text
    )


def test_the_finalize_memory_figures_are_the_benchmarks() -> None:
    report = json.loads((ROOT / "benchmarks" / "results" / "finalize_memory.json").read_text())
    largest = report["rows"][-1]
    assert largest["input_shard_mb"] >= 1400 and largest["process_peak_mb"] < 1200  # the target
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert f"{largest['input_shard_mb']:.0f} MB shard" in text
    assert f"{largest['process_peak_mb']:.0f} MB" in text


def test_row_bytes_quick_shows_the_gpu_hops_carry_crops_only(tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    out = tmp_path / "rows.json"
    assert load_benchmark("row_bytes").main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    hops = {r["hop"]: r for r in report["rows"]}
    crop_mb = 256 * 256 * 3 / 2**20  # one face's crop at the quick face size
    for hop in ("detect -> anonymize", "anonymize -> compose"):  # into and out of the GPU actor
        assert crop_mb <= hops[hop]["now_mb_per_face"] < 1.1 * crop_mb
        assert hops[hop]["before_mb_per_face"] > 2 * hops[hop]["now_mb_per_face"]
    assert hops["compose -> write"]["before_mb_per_face"] > 1.5 * hops["compose -> write"]["now_mb_per_face"]
    assert report["faces"] == 4 and report["faces_released"] == 4


def test_the_row_bytes_figures_are_the_benchmarks() -> None:
    report = json.loads((ROOT / "benchmarks" / "results" / "row_bytes.json").read_text())
    text = (ROOT / "BENCHMARKS.md").read_text()
    for row in report["rows"]:
        assert f"| {row['hop']} | {row['before_mb_per_face']:.2f} MB | {row['now_mb_per_face']:.2f} MB |" in text


def test_classic_cpu_quick_times_a_method_against_detection_alone(tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    out = tmp_path / "classic.json"
    assert load_benchmark("classic_cpu").main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["method"] == "blur" and row["statuses"] == {"anonymized": 1, "no_face": 1}  # the real gate passed it
    assert row["over_detection_alone"] > 1  # it detects, hides and checks: more than detection alone
    assert report["faces"] == 1 and report["date"]


def test_the_classic_cpu_figures_are_the_benchmarks() -> None:
    report = json.loads((ROOT / "benchmarks" / "results" / "classic_cpu.json").read_text())
    text = (ROOT / "BENCHMARKS.md").read_text()
    for row in report["rows"]:
        assert f"| {row['method']} | {row['seconds_per_image']:.3f} s | {row['over_detection_alone']:.2f}x |" in text


def test_the_cost_table_is_what_the_benchmark_results_give() -> None:
    assert load_benchmark("cost_table").main(["--check"]) == 0
