"""`raypipe models pull` against a real S3 protocol server (moto) on loopback, then workers' loading path.

Runs only inside a loopback-only network namespace (see tests/conftest.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import yaml

from raypipe.anonymize.models import FACEID_ADAPTER, TINY_WEIGHT_NAME, load_models, save_tiny_models
from raypipe.config import ModelsConfig
from raypipe.staging import StagingError, add_models_commands, stage_models

pytestmark = pytest.mark.isolated


def run_models_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="raypipe")
    add_models_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def s3_env(bucket, s3_server: str, aws_env: pytest.MonkeyPatch):
    """Production configuration through the environment only: AWS_ENDPOINT_URL names the server."""
    aws_env.setenv("AWS_ENDPOINT_URL", s3_server)
    return bucket


def test_pull_tiny_then_load_from_s3_with_the_faceid_lora(
    s3_env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, client = s3_env
    written = tmp_path / "models.yaml"
    code = run_models_command(
        ["models", "pull", "--to", f"s3://{name}/models", "--preset", "tiny", "--write-config", str(written)]
    )
    assert code == 0

    keys = {obj["Key"] for obj in client.list_objects_v2(Bucket=name)["Contents"]}
    assert f"models/ip-adapter/{TINY_WEIGHT_NAME}" in keys
    assert {"models/sdxl/model_index.json", "models/sdxl/unet/diffusion_pytorch_model.safetensors"} <= keys
    assert not any("/." in key for key in keys)  # no hidden files (e.g. download metadata) uploaded

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == yaml.safe_load(written.read_text())
    assert printed["models"]["sdxl"] == f"s3://{name}/models/sdxl"
    assert printed["models"]["ip_adapter"] == f"s3://{name}/models/ip-adapter"

    cache = tmp_path / "cache"
    config = ModelsConfig(
        preset="sdxl",
        sdxl=f"s3://{name}/models/sdxl",
        ip_adapter=f"s3://{name}/models/ip-adapter",
        cache_dir=str(cache),
        device="cpu",
        dtype="float32",
    )
    models = load_models(config)
    assert FACEID_ADAPTER in models.pipe.unet.peft_config

    reference = tmp_path / "reference"
    save_tiny_models(reference, id_embed_dim=512, seed=0)
    assert_same_weights(models, reference)
    cached = sorted(p for p in cache.rglob("*") if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in cached}

    # Second load: the bucket is empty now, so only the local cache can answer.
    for key in keys:
        client.delete_object(Bucket=name, Key=key)
    again = load_models(config)
    assert FACEID_ADAPTER in again.pipe.unet.peft_config
    assert again.weight_hashes == models.weight_hashes
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == mtimes


def assert_same_weights(models, reference: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    saved = StableDiffusionXLPipeline.from_pretrained(reference / "sdxl", torch_dtype=torch.float32)
    pipe = models.pipe
    torch.testing.assert_close(pipe.unet.conv_in.weight, saved.unet.conv_in.weight, rtol=0, atol=0)
    torch.testing.assert_close(pipe.vae.encoder.conv_in.weight, saved.vae.encoder.conv_in.weight, rtol=0, atol=0)
    text = pipe.text_encoder_2.text_model.embeddings.token_embedding.weight
    saved_text = saved.text_encoder_2.text_model.embeddings.token_embedding.weight
    torch.testing.assert_close(text, saved_text, rtol=0, atol=0)

    faceid = torch.load(reference / "ip-adapter" / TINY_WEIGHT_NAME, weights_only=True)
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    torch.testing.assert_close(projection.ff.net[0].proj.weight, faceid["image_proj"]["proj.0.weight"], rtol=0, atol=0)
    lora_down = [
        module.lora_A[FACEID_ADAPTER].weight
        for name, module in pipe.unet.named_modules()
        if name.endswith("attn1.to_q") and hasattr(module, "lora_A")
    ]
    assert lora_down, "no FaceID LoRA layer on the UNet"
    torch.testing.assert_close(lora_down[0], faceid["ip_adapter"]["0.to_q_lora.down.weight"], rtol=0, atol=0)


def test_pull_into_a_prefix_that_holds_weights_is_refused_unless_overwrite(s3_env, tmp_path: Path) -> None:
    name, client = s3_env
    client.put_object(Bucket=name, Key="models/sdxl/model_index.json", Body=b"{}")
    client.put_object(Bucket=name, Key="models/sdxl/old.bin", Body=b"old")

    with pytest.raises(StagingError, match="already holds 2 file"):
        stage_models(f"s3://{name}/models", preset="tiny")

    stage_models(f"s3://{name}/models", preset="tiny", overwrite=True)
    keys = {obj["Key"] for obj in client.list_objects_v2(Bucket=name)["Contents"]}
    assert "models/sdxl/old.bin" not in keys
    assert "models/sdxl/unet/config.json" in keys


def test_pull_of_the_real_weights_offline_says_where_to_run_it(s3_env, tmp_path: Path) -> None:
    name, client = s3_env
    with pytest.raises(StagingError) as caught:
        stage_models(f"s3://{name}/models", preset="sdxl", download_dir=str(tmp_path))
    message = str(caught.value)
    assert "stabilityai/stable-diffusion-xl-base-1.0" in message
    assert "huggingface.co" in message
    assert "Contents" not in client.list_objects_v2(Bucket=name)  # nothing half-staged


def test_pull_sdxl_from_local_folders_stages_all_three(
    s3_env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The production path without a network: sources named by a job config as local folders."""
    name, client = s3_env
    local = save_tiny_models(tmp_path / "downloaded", id_embed_dim=512, seed=0)
    pack = tmp_path / "downloaded" / "buffalo_l"
    pack.mkdir()
    (pack / "det_10g.onnx").write_bytes(b"detector")
    (pack / "w600k_r50.onnx").write_bytes(b"recognizer")
    (pack / "README.txt").write_text("not a model")
    # A local copy of the whole hub repository holds more than loading needs.
    (Path(local["sdxl"]) / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"variant")
    (Path(local["sdxl"]) / "README.md").write_text("model card")
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump({"models": {"sdxl": local["sdxl"], "ip_adapter": local["ip_adapter"], "insightface": str(pack)}})
    )

    assert run_models_command(["models", "pull", "--to", f"s3://{name}/models/v1", "--config", str(job)]) == 0

    keys = {obj["Key"] for obj in client.list_objects_v2(Bucket=name)["Contents"]}
    assert {"models/v1/buffalo_l/det_10g.onnx", "models/v1/buffalo_l/w600k_r50.onnx"} <= keys
    assert "models/v1/buffalo_l/README.txt" not in keys
    assert f"models/v1/ip-adapter/{TINY_WEIGHT_NAME}" in keys
    assert "models/v1/sdxl/unet/diffusion_pytorch_model.safetensors" in keys
    assert "models/v1/sdxl/tokenizer_2/tokenizer.json" in keys
    assert not {"models/v1/sdxl/unet/diffusion_pytorch_model.fp16.safetensors", "models/v1/sdxl/README.md"} & keys
    block = yaml.safe_load(capsys.readouterr().out)["models"]
    assert block == {
        "preset": "sdxl",
        "sdxl": f"s3://{name}/models/v1/sdxl",
        "ip_adapter": f"s3://{name}/models/v1/ip-adapter",
        "ip_adapter_weight_name": TINY_WEIGHT_NAME,
        "insightface": f"s3://{name}/models/v1/buffalo_l",
        "analyzer": "insightface",
    }
    body = client.get_object(Bucket=name, Key="models/v1/buffalo_l/det_10g.onnx")["Body"].read()
    assert body == b"detector"
