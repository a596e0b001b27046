"""``carlib bench``: every figure the issue names is produced, in the documented format (speed is never asserted)."""

from __future__ import annotations

import json

import pytest

from carlib.bench import speed as bench
from carlib.cli import main


@pytest.fixture(scope="module")
def figures(tiny_data_dir):
    return bench.run_benchmarks(("pipeline", "oldway", "transforms", "feed"), data_dir=str(tiny_data_dir),
                                image_size=32, batch_size=8, presets=("none", "light", "medium"),
                                feed_backbone="simple_cnn", rounds=1)


def test_every_named_figure_is_measured(figures):
    names = {f.figure for f in figures}
    assert {"decode_limit_ips", "oldway_ips", "oldway_speedup", "feed_ratio"} <= names
    for preset in ("none", "light", "medium"):
        assert {f"pipeline_{preset}_ips", f"pipeline_{preset}_ratio", f"pipeline_{preset}_first_epoch_ips"} <= names
    transforms = [f for f in figures if f.figure.startswith("transform_")]
    # heavy = medium's five + blur and noise (inside OneOf) + gray + dropout + the final resize
    assert {"transform_horizontal_flip_ips", "transform_random_resized_crop_ips", "transform_gaussian_blur_ips",
            "transform_gauss_noise_ips", "transform_coarse_dropout_ips", "transform_resize_ips"} <= names
    assert [f.value for f in transforms] == sorted(f.value for f in transforms)  # slowest first
    assert abs(sum(f.context["share_of_preset"] for f in transforms) - 1) < 0.01
    assert all(f.value > 0 for f in figures)


def test_ratios_are_computed_from_the_same_rounds(figures):
    by_name = {f.figure: f for f in figures}
    limit = by_name["decode_limit_ips"].value
    for preset in ("none", "light", "medium"):
        assert by_name[f"pipeline_{preset}_ratio"].value == pytest.approx(by_name[f"pipeline_{preset}_ips"].value
                                                                          / limit)
    feed = by_name["feed_ratio"]
    assert feed.value == pytest.approx(feed.context["pipeline_ips"] / feed.context["memory_ips"], rel=0.01)
    assert by_name["pipeline_light_ratio"].target == 0.85 and isinstance(by_name["pipeline_light_ratio"].met, bool)


def test_json_lines_have_figure_value_unit_and_context(tiny_data_dir, capsys):
    code = main(["bench", "decode", "transforms", "--data-dir", str(tiny_data_dir), "--image-size", "24",
                 "--rounds", "1", "--transforms-preset", "light", "--json"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["figure"] == "decode_limit_ips" and lines[0]["unit"] == "images/s"
    assert {"transform_horizontal_flip_ips", "transform_affine_ips", "transform_resize_ips"} <= {
        line["figure"] for line in lines}
    for line in lines:
        assert isinstance(line["value"], float) and line["cpus"] >= 1 and line["date"] and line["image_size"] == 24


def test_table_output_names_targets(tiny_data_dir, capsys):
    assert main(["bench", "pipeline", "--data-dir", str(tiny_data_dir), "--image-size", "24", "--rounds", "1",
                 "--presets", "light"]) == 0
    out = capsys.readouterr().out
    assert "pipeline_light_ratio" in out and ">= 0.85" in out and "decode_limit_ips" in out


@pytest.mark.parametrize("argv, message", [
    (["bench", "decod"], "unknown measurement(s) decod; known: decode, pipeline, oldway, transforms, feed, harness"),
    (["bench", "feed", "--feed-backbone", "resnet"], "unknown backbone 'resnet'. Did you mean 'resnet_tiny'? Known: cnn_small,"),
    (["bench", "pipeline", "--presets", "strong"], "unknown augmentation 'strong'. Known: heavy, light, medium, none;"),
    (["bench", "pipeline", "--rounds", "0"], "rounds=0: expected an integer >= 1."),
    (["bench", "harness", "--harness-epochs", "0"], "harness_epochs=0: expected an integer >= 1."),
    (["bench", "transforms", "--transforms-preset", "none"], "augmentation preset 'none' has no transforms to time"),
])
def test_bad_arguments_say_what_is_allowed(argv, message, tiny_data_dir, capsys):
    assert main([*argv, "--data-dir", str(tiny_data_dir)]) == 2
    assert message in capsys.readouterr().err


def test_harness_overhead_compares_papermill_with_a_direct_run(tiny_data_dir):
    (figure,) = bench.measure_harness(str(tiny_data_dir), epochs=1, image_size=16, rounds=1)
    assert figure.figure == "harness_overhead_s" and figure.unit == "s"
    context = figure.context
    assert context["papermill_s"] > 0 and context["direct_s"] > 0 and context["kernel_start_s"] > 0
    assert figure.value == pytest.approx(context["papermill_around_run_s"] - context["direct_around_run_s"], abs=0.02)
    assert 0 < context["direct_around_run_s"] < context["direct_s"]  # interpreter start, imports, exit
    assert context["target"] == pytest.approx(context["kernel_start_s"] + 0.05 * context["direct_s"], abs=0.02)


def test_bench_recipe_is_its_own_benchmark_with_its_own_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "recipe", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: carlib bench recipe") and "--baseline-epochs" in out and "--seeds" in out
