"""The ``zero-shot`` table: registered rows and published numbers, row protocols, and an offline dry run
that lists every requirement and time estimate."""

from __future__ import annotations

import os
import subprocess
import sys


def test_table_rows_numbers_and_protocols():
    from corrbench.reproduce import get_table, paper_baseline
    from corrbench_sd.zero_shot_table import DINO_PLUGIN_DINOV2, TIMM_DINOV2

    table = get_table("zero-shot")
    labels = [r.label for r in table.rows]
    assert labels == ["DINOv2-B/14", "DIFT", "SD+DINO", "DHF one-step", "DHF"]
    methods = {r.label: r.method for r in table.rows}
    assert methods["DINOv2-B/14"] in (TIMM_DINOV2, DINO_PLUGIN_DINOV2)
    assert (methods["DIFT"], methods["SD+DINO"], methods["DHF"]) == ("dift", "sd-dino", "dhf")
    assert {r.label: r.protocol for r in table.rows} == {"DINOv2-B/14": "sd-dino", "DIFT": "dift",
                                                         "SD+DINO": "sd-dino", "DHF one-step": "dhf", "DHF": "dhf"}
    paper = {r.label: r.paper["spair"] for r in table.rows}
    assert paper["DIFT"] == {"bbox": 59.57, "img": 66.53} and paper["SD+DINO"] == {"bbox": 63.73, "img": 72.31}
    assert paper["DINOv2-B/14"] == {"bbox": 55.6}
    # every row states where its number comes from and whether it is per image or per keypoint
    assert all("per keypoint" in r.note and "[reported]" in r.note for r in table.rows)
    assert table.metric["average"] == "point" and table.datasets["spair"].split == "test"
    baseline = paper_baseline(table)
    assert baseline["rows"][1]["metrics"]["spair"] == {"pck@0.10_bbox": 59.57, "pck@0.10_img": 66.53}


def test_rows_with_different_protocols_run_separately():
    from corrbench.reproduce import get_table, make_plan
    from dataclasses import fields

    from corrbench.reproduce.run import _protocol_groups, _protocol_option
    from corrbench.runner import RunOptions

    plan = make_plan(get_table("zero-shot"), device="cpu")
    groups = [(protocol, sorted(methods), several) for _, protocol, methods, several in _protocol_groups(plan, {})]
    by_protocol = {p: m for p, m, _ in groups}
    assert sorted(by_protocol) == ["dhf", "dift", "sd-dino"] and all(s for _, _, s in groups)
    assert by_protocol["dhf"] == ["dhf", "dhf-one-step"] and "sd-dino" in by_protocol["sd-dino"]
    # the row's protocol reaches run_benchmark when RunOptions has the field (and nothing is passed otherwise)
    has_field = "protocol" in {f.name for f in fields(RunOptions)}
    assert _protocol_option("dift") == ({"protocol": "dift"} if has_field else {})
    assert _protocol_option(None) == {}


def test_dry_run_lists_every_requirement_and_estimate_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "CORRBENCH_DATA": str(tmp_path / "data"), "CORRBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "corrbench", "reproduce", "zero-shot", "--dry-run"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    for label in ("DINOv2-B/14", "DIFT", "SD+DINO", "DHF one-step", "DHF"):
        row = next(line for line in out.splitlines() if line.strip().split(". ", 1)[-1].startswith(label + " ["))
        assert "(estimate: spair ~" in row, row
    for protocol in ("dift", "sd-dino", "dhf"):
        assert f"protocol: {protocol}" in out
    # each model's weights and the dataset, with their status (nothing is cached in this HF_HOME)
    for needed in ("stabilityai/stable-diffusion-2-1", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                   "DINOv2 vit_base_patch14_dinov2.lvd142m", "aggregation_network_one-step.pt",
                   "aggregation_network.pt", "spair dataset"):
        line = next((line for line in out.splitlines() if needed in line and line.lstrip().startswith("[")), None)
        assert line is not None and "[missing]" in line, (needed, out)
    # every row's weights are listed against it
    from corrbench.reproduce import get_table

    listed = set()
    for line in out.splitlines():
        if line.lstrip().startswith("[") and "(rows: " in line:
            listed.update(m.strip() for m in line.rsplit("(rows: ", 1)[1].split(")")[0].split(","))
    assert {r.method for r in get_table("zero-shot").rows} <= listed, listed
    assert "Estimated time: ~" in out and "for 5 of 5 rows" in out


def test_plan_dict_has_protocols_and_estimates():
    from corrbench.reproduce import get_table, make_plan

    plan = make_plan(get_table("zero-shot"), device="cuda").as_dict()
    assert [r["protocol"] for r in plan["rows"]] == ["sd-dino", "dift", "sd-dino", "dhf", "dhf"]
    assert all(r["estimate_seconds"]["spair"] > 0 for r in plan["rows"])
