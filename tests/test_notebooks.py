"""Notebook tier: hygiene of the committed notebooks; the smoke profile run end to end once, checked by named
tests; and every Summary's claims checked against flipped numbers (a claim must follow the record, not be
typed in).

(``make test-all`` additionally executes every notebook in ``notebooks/`` with its own defaults through
nbval.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest

import lib

NOTEBOOKS = sorted(lib.runner.paths.NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_are_clean(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), (
                f"{path.name} cell {i} has outputs: strip them (make clean-notebooks)"
            )
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert nb["cells"].index(tagged[0]) <= 2, "the parameters cell belongs near the top"
    sources = ["".join(c["source"]) for c in nb["cells"]]
    assert any(s.startswith("## Summary") for s in sources) and any(
        s.startswith("## Exercises") for s in sources
    )
    assert "sys.path" not in "".join(sources), "import lib as an installed package, no sys.path hacks"


# What each "section N" of a notebook's text means: a word of that heading. A reference to a section not
# here fails until it is added; a heading renumbered under a reference fails here too.
SECTION_REFS = {
    "01_lora_finetune": {2: "mechanism", 3: "rank sweep", 5: "speed", 7: "Merge"},
    "05_distributed": {3: "Proof", 4: "Measured", 5: "evaluation", 6: "scaling model"},
    "06_explain": {5: "agree", 7: "Cost"},
    "07_privacy": {2: "DP-SGD", 3: "Training", 5: "audit", 7: "saved and timed"},
    "08_federated": {
        1: "frozen encoder",
        2: "clients",
        3: "mechanism",
        4: "reference",
        5: "Simulation",
        6: "costs",
        7: "Deployment",
    },
    "09_robustness": {2: "Behaviour", 3: "attacks", 5: "Adversarial training"},
    "10_report": {2: "table", 3: "stacked", 4: "Pareto", 5: "choice"},
    "11_serve": {1: "What is served", 3: "Latency under load", 5: "cache", 6: "Overload"},
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_section_references_name_the_right_section(path):
    text = "\n".join("".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"])
    headings = {int(n): title for n, title in re.findall(r"^## (\d+) · (.*)$", text, re.M)}
    meant = SECTION_REFS.get(path.stem, {})
    for n in sorted({int(n) for n in re.findall(r"[Ss]ection (\d+)", text)}):
        assert n in meant, f"{path.name} refers to section {n}: add what it means to SECTION_REFS"
        assert meant[n].lower() in headings.get(n, "").lower(), (
            f"{path.name}: section {n} is '{headings.get(n)}', not the '{meant[n]}' section the text means"
        )


# The figures a notebook's markdown may state: fixed facts (a paper's number, a format, a definition, a
# default), each with its source. A measured quantity is printed by a cell from the run, never typed: a new
# typed figure fails here until it is shown to be such a fact.
FIXED_FACTS = {
    "00_baseline": {"1B": "all-MiniLM-L6-v2's model card: trained on about 1B sentence pairs"},
    "03_quantize": {"4×": "an int8 weight has 8 bits, an fp32 one 32"},
    "04_distill": {
        "97%": "DistilBERT's retention (Sanh et al., 2019)",
        "1.6×": "DistilBERT's speed-up (ibid.)",
    },
    "05_distributed": {
        "1 Gb/s": "a network of the scaling model, named by an exercise",
        "50%": "the exercise's bar",
    },
    "06_explain": {"50%": "the largest k of the AOPC (lib.explain's default ks)"},
    "07_privacy": {
        "1%": "the FPR at which an audit reads the TPR (Carlini et al., 2022)",
        "0.1%": "the same",
    },
    "08_federated": {"95%": "the level of every interval (lib.verdict.LEVEL)"},
    "09_robustness": {"95%": "the level of every interval (lib.verdict.LEVEL)"},
    "11_serve": {"0.1 s": "the scrape interval of /metrics (lib.loadgen.open_loop's scrape_every default)"},
}
FIGURE = re.compile(
    r"(?<![\w.`/-])\d+(?:[.,]\d+)?\s*(?:%|×|x\b|M\b|MB|GB|KB|ms|s\b|sec|seconds?|min\b|minutes?|hours?|points?"
    r"|GiB|Gb/s|B\b|k\b|cores?|threads?|times)"
)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_markdown_states_no_measured_figure(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    typed = {
        m.group(0)
        for c in cells
        if c["cell_type"] == "markdown"
        for m in FIGURE.finditer("".join(c["source"]))
    }
    unknown = sorted(typed - set(FIXED_FACTS.get(path.stem, {})))
    assert not unknown, (
        f"{path.name} states {unknown} in markdown: print a measured value from a cell, or add a fixed fact "
        "(with its source) to FIXED_FACTS"
    )


def test_no_model_files_are_committed():
    """Models and run outputs are written under outputs/ (git-ignored); a weights file in git is a mistake."""
    try:
        tracked = subprocess.run(
            ["git", "ls-files"], cwd=lib.runner.paths.ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    binary = (".onnx", ".data", ".safetensors", ".bin", ".pt", ".pth", ".ckpt")
    assert not [f for f in tracked.splitlines() if f.endswith(binary)]


def test_every_notebook_is_in_the_catalog():
    assert [p.stem for p in NOTEBOOKS] == [nb.name for nb in lib.runner.catalog.NOTEBOOKS]


def test_every_parameter_rule_is_used_by_a_notebook():
    declared = {name for nb in lib.runner.catalog.NOTEBOOKS for name in lib.runner.params.declared(nb.name)}
    assert not set(lib.runner.params.Rules.model_fields) - declared, (
        "rules for parameters no notebook declares: remove them"
    )


# ------------------------------------------------------------------------ the smoke run


# The smoke run as runner invocations on two cores, each a run of its own (`--only`), started once a core is
# free and the runs whose artifacts it reads have completed (a run takes artifacts from the newest complete
# run that has them; 10_report takes a record its run lacks the same way). 01..04 and 07 need only the
# teacher, 06 needs 03 and 04, 09 needs 01..04: the chain is split so that it never waits for a free core.
# Each job: its notebooks and the jobs it waits for, in order of priority. Measured on a 2-core Zen 4:
# DEVELOPERS.md.
JOBS = {
    "teacher": (("00_baseline",), ()),
    "lora": (("01_lora_finetune",), ("teacher",)),
    "prune": (("02_prune",), ("teacher",)),
    "compress": (("03_quantize", "04_distill"), ("teacher",)),
    "probe": (("06_explain", "09_robustness"), ("lora", "prune", "compress")),
    "distributed": (("05_distributed",), ()),  # these two need no artifact: they fill the other core
    "federated": (("08_federated",), ()),
    "privacy": (("07_privacy",), ("teacher",)),  # it times its model beside the teacher
}
JOBS["last"] = (("10_report", "11_serve"), tuple(JOBS))  # they read every record
PAGE_JOB = "last"  # the one job whose run writes its report.html (the others run with --no-html)
ALONE = "last"  # it waits for every other job, so it runs at both cores' threads (10_report 34 -> 29 s, CI)
CORES = 2  # jobs at once (each notebook at one thread, MUXL_THREADS=1; the ALONE job at CORES threads)


def _run_jobs(out, jobs, cores=CORES):
    """Run the smoke profile's ``jobs`` (``name -> (notebooks, jobs it waits for)``), at most ``cores`` at a
    time, each as soon as what it waits for has succeeded (a job whose input failed never starts); returns
    each job's exit code (-1: not started) and log, in the order of ``jobs``. A job counts as done once its
    run's manifest says complete: its runner then only writes the run's page (``PAGE_JOB``'s), beside the
    next job."""
    env = {**os.environ, "MUXL_OUTPUTS": str(out)}
    logs = {name: out / f"job-{name}.log" for name in jobs}
    codes: dict[str, int] = {}
    running: dict[str, subprocess.Popen] = {}
    runs = {}  # job -> its run folder (its manifest names the runner's pid)

    def start(name):
        cmd = [sys.executable, "-m", "lib.runner", "--profile", "smoke", "--quiet", "--only", *jobs[name][0]]
        cmd += [] if name == PAGE_JOB else ["--no-html"]  # a page: ~3 s of CPU (nbconvert); one is tested
        threads = {"MUXL_THREADS": str(cores), "OMP_NUM_THREADS": str(cores)} if name == ALONE else {}
        with logs[name].open("w") as log:  # the child keeps its own copy of the file
            running[name] = subprocess.Popen(
                cmd, env={**env, **threads}, stdout=log, stderr=subprocess.STDOUT, cwd=lib.runner.paths.ROOT
            )

    def complete(name):  # its run (found by the runner's pid in the manifest) has completed
        if name not in runs:
            pid = running[name].pid
            found = [
                d
                for d in lib.runner.folders.all_runs("smoke")
                if lib.runner.folders.peek(d).get("pid") == pid
            ]
            if not found:
                return False
            runs[name] = found[0]
        return lib.runner.folders.peek(runs[name]).get("status") == "complete"

    try:
        while len(codes) < len(jobs):
            codes |= {name: p.returncode for name, p in running.items() if p.poll() is not None}
            done = {n for n, c in codes.items() if c == 0} | {
                n for n in running if n not in codes and complete(n)
            }
            busy = [n for n in running if n not in codes and n not in done]
            for name, (_, needs) in jobs.items():
                if name in codes or name in running:
                    continue
                if any(codes.get(n, 0) != 0 for n in needs):  # an input failed: this job cannot run
                    codes[name] = -1
                elif len(busy) < cores and all(n in done for n in needs):
                    start(name)
                    busy.append(name)
            time.sleep(0.2)
    finally:
        for p in running.values():  # an error in this loop: stop what it started
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = [logs[n].read_text(encoding="utf-8") if logs[n].exists() else "" for n in jobs]
    return [codes[n] for n in jobs], texts


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Run every notebook once on the smoke profile (into a temp folder); the tests below read what it
    wrote. ``roots[name]``: the run folder that holds ``name``'s record, figures and models."""
    every = sorted(n for names, _ in JOBS.values() for n in names)
    assert every == [nb.name for nb in lib.runner.catalog.NOTEBOOKS]  # a new notebook joins a job
    maker = {a: nb.name for nb in lib.runner.catalog.NOTEBOOKS for a in nb.produces}
    job_of = {n: job for job, (names, _) in JOBS.items() for n in names}

    def before(job):  # the jobs that finish before ``job`` starts
        return {w for waits in JOBS[job][1] for w in (waits, *before(waits))}

    for nb in lib.runner.catalog.NOTEBOOKS:  # each artifact a notebook needs is made before it starts
        names, waits_for = JOBS[job_of[nb.name]][0], before(job_of[nb.name])
        for made_by in (maker[need] for need in nb.needs):
            same_job_before = made_by in names and names.index(made_by) < names.index(nb.name)
            assert job_of[made_by] in waits_for or same_job_before, f"{nb.name}'s job must wait for {made_by}"
    out = tmp_path_factory.mktemp("smoke-outputs")
    old = os.environ.get("MUXL_OUTPUTS")
    os.environ["MUXL_OUTPUTS"] = str(out)
    try:
        codes, logs = _run_jobs(out, JOBS)
        runs = lib.runner.folders.all_runs("smoke")
        roots = {
            nb.name: next((d for d in runs if (d / "metrics" / f"{nb.name}.json").exists()), out)
            for nb in lib.runner.catalog.NOTEBOOKS
        }
        yield SimpleNamespace(
            code=max(codes, key=abs),
            logs=logs,
            roots=roots,
            rec={nb.name: _load("smoke", nb.name) for nb in lib.runner.catalog.NOTEBOOKS},
        )
    finally:
        if old is None:
            os.environ.pop("MUXL_OUTPUTS", None)
        else:
            os.environ["MUXL_OUTPUTS"] = old


def _load(profile, name):
    try:
        return lib.runner.records.load(profile, name)
    except FileNotFoundError:
        return None


def by_name(rec):
    return {v["name"]: v for v in rec["variants"]}


@pytest.mark.notebook
def test_smoke_run_finishes_every_notebook(smoke):
    assert smoke.code == 0, "\n".join(log[-3000:] for log in smoke.logs)
    for nb in lib.runner.catalog.NOTEBOOKS:
        assert smoke.rec[nb.name] is not None, f"{nb.name} wrote no record"
        assert (smoke.roots[nb.name] / "notebooks" / f"{nb.name}.ipynb").exists()


@pytest.mark.notebook
@pytest.mark.parametrize("name", [nb.name for nb in lib.runner.catalog.NOTEBOOKS])
def test_smoke_records_are_valid_timed_and_have_their_figures(smoke, name):
    rec = smoke.rec[name]
    lib.runner.records.validate_record(rec)
    ran_with = lib.runner.params.resolve("smoke", name)
    ran_with.update(ran_with.pop("data_contract"))  # the contract's fields, flat, beside the notebook's own
    assert rec["profile"] == "smoke" and rec["params"] == ran_with
    assert rec["run_seconds"] > 0  # stamped by the runner
    assert rec["env"]["isa"] == lib.utils.isa()  # every speed figure names the CPU class
    for fig in rec["figures"]:
        assert (smoke.roots[name] / fig).stat().st_size > 1000


@pytest.mark.notebook
def test_smoke_artifacts_reload_and_nothing_half_written(smoke):
    for nb in lib.runner.catalog.NOTEBOOKS:
        for artifact in nb.produces:
            assert lib.runner.catalog.check_artifact(smoke.roots[nb.name] / "models" / artifact) is None
    assert not [p for root in set(smoke.roots.values()) for p in root.rglob("*.tmp")]


@pytest.mark.notebook
def test_smoke_00_split_and_real_teacher(smoke):
    f = smoke.rec["00_baseline"]["findings"]
    assert f["rows_train"] == 128 and f["rows_test"] == 64 and f["groups_in_two_splits"] == 0
    assert f["reload_max_abs_logit_diff"] == 0.0
    teacher = by_name(smoke.rec["00_baseline"])["teacher"]
    assert 20e6 < teacher["num_params"] < 25e6 and 80 < teacher["size_mb"] < 100  # the real MiniLM


@pytest.mark.notebook
def test_smoke_00_lib_loop_computes_what_the_trainer_computes(smoke):
    f = smoke.rec["00_baseline"]["findings"]
    assert f["lib_final_loss"] == pytest.approx(
        f["trainer_final_loss"], abs=1e-5
    )  # same batches, same updates


@pytest.mark.notebook
def test_smoke_01_adapter_is_small_and_merge_exact(smoke):
    f = smoke.rec["01_lora_finetune"]["findings"]
    assert f["adapter_mb"] < f["full_checkpoint_mb"] / 50
    assert f["merged_max_abs_logit_diff"] < 1e-3 and f["merged_label_agreement"] == 1.0
    assert f["merged_vs_peft_max_abs_logit_diff"] < 1e-4  # the notebook's merge equals peft's


@pytest.mark.notebook
def test_smoke_02_zeros_stay_zeros_and_cost_the_same_file(smoke):
    v = by_name(smoke.rec["02_prune"])
    assert abs(v["unstructured-90%"]["sparsity"] - 0.9) < 0.01  # zeros held through recovery
    assert v["unstructured-90%"]["size_mb"] > 0.95 * v["teacher"]["size_mb"]


@pytest.mark.notebook
def test_smoke_02_structured_model_is_smaller_and_reloads(smoke):
    rec = smoke.rec["02_prune"]
    v = by_name(rec)
    pruned = v["structured-50%"]
    assert pruned["num_params"] < v["teacher"]["num_params"] and 0.4 < pruned["sparsity"] < 0.6
    assert rec["findings"]["reload_max_abs_logit_diff"] == 0.0  # the pruned model reloads with its shapes


@pytest.mark.notebook
def test_smoke_03_best_int8_is_small_and_reloads_exactly(smoke):
    rec = smoke.rec["03_quantize"]
    f, v = rec["findings"], by_name(rec)
    assert {(x["backend"], x["dtype"]) for x in rec["variants"]} >= {
        ("torch", "int8"),
        ("onnxruntime", "int8"),
    }
    best = v[f["best_int8"]]
    assert (
        best["dtype"] == "int8" and best["size_mb"] < v["fp32"]["size_mb"] / 3.5
    )  # embeddings quantized too
    assert (
        best["max_abs_logit_diff"] > 0
    )  # int8 really changed the numbers (agreement is measured, not assumed)
    assert f["reload_label_agreement"] == 1.0 and f["reload_max_abs_logit_diff"] == 0.0
    assert 0.5 < f["embedding_share"] < 0.6  # MiniLM: half its weights are the embedding table


@pytest.mark.notebook
def test_smoke_04_students_are_smaller_and_reload(smoke):
    rec = smoke.rec["04_distill"]
    f, v = rec["findings"], by_name(rec)
    assert {"teacher", "student-kd", "student-labels"} <= set(v) and v["teacher"]["role"] == "reference"
    assert v["student-kd"]["layers"] == 3 and v["student-kd"]["num_params"] < v["teacher"]["num_params"]
    assert f["teacher_logits_cached"] == 128 and f["reload_max_abs_logit_diff"] == 0.0
    assert any(x.get("sweep") for x in rec["variants"])


@pytest.mark.notebook
def test_smoke_05_ranks_equal_one_process_and_bytes_are_measured(smoke):
    rec = smoke.rec["05_distributed"]
    f, v = rec["findings"], by_name(rec)
    assert f["equivalence_dtype"] == "float64" and f["max_abs_weight_diff"] < 1e-10  # the same arithmetic
    assert f["by_hand_vs_ddp_max_abs_weight_diff"] < 1e-10  # the notebook's all-reduce by hand: DDP's update
    assert f["by_hand_allreduce_calls_per_step"] > f["ddp_allreduce_calls_per_step"] >= 1  # one per tensor
    assert 0 < f["max_abs_weight_diff_fp32_train"] < 1e-3  # float32: round-off, amplified by Adam, but small
    assert f["eval_identical"] is True and f["eval_max_abs_logit_diff"] < 1e-5 and f["eval_examples"] == 64
    assert set(f["throughput"]) == {"1", "2"} and all(x > 0 for x in f["throughput"].values())
    assert f["grad_bytes_per_step"] == 4 * v["1process"]["num_params"]  # every fp32 gradient, once per step
    hooks = f["comm_hooks"]
    assert (
        set(hooks) == {"allreduce", *rec["params"]["comm_hooks"]}
        and hooks["powersgd"]["bytes_vs_allreduce"] < 0.1
    )
    assert v["1process"]["role"] == "reference" and v["1process"]["mb_per_step"] == 0
    assert (
        f["worker_failure_message"] is None
    )  # smoke launches no crashing worker: tests/test_distributed.py does
    split = f["step_split"]["2 ranks, allreduce"]
    assert split["comm_s"] > 0 and 0 <= split["exposed_comm_s"] <= split["comm_s"]


@pytest.mark.notebook
def test_smoke_06_every_method_is_measured_against_random(smoke):
    rec = smoke.rec["06_explain"]
    f = rec["findings"]
    methods = {"lime", "integrated_gradients", "random"}
    assert set(f["comprehensiveness"]) == set(f["sufficiency"]) == methods
    assert set(f["seconds_per_explanation"]) == {"lime", "integrated_gradients"}
    assert all(s > 0 for s in f["seconds_per_explanation"].values())
    assert (
        f["comprehensiveness"]["lime"] > f["comprehensiveness"]["random"]
    )  # LIME's words matter more than any
    assert {(r["model"], r["method"]) for r in f["survival"]} == {
        ("student", "lime"),
        ("student", "integrated_gradients"),
        ("int8", "lime"),
    }
    assert f["texts_explained"] == 4 and f["lime_vs_lime"] is not None
    htmls = list((smoke.roots["06_explain"] / "figures").glob("lime_*.html"))
    assert len(htmls) == 4 and all(h.stat().st_size > 1000 for h in htmls)


@pytest.mark.notebook
def test_smoke_07_private_models_spend_their_epsilon_and_are_audited(smoke):
    rec = smoke.rec["07_privacy"]
    f, v = rec["findings"], by_name(rec)
    assert set(v) == {"non-private", "dp-eps-8", "overfit"} and v["non-private"]["role"] == "reference"
    assert v["non-private"].get("epsilon") is None and v["overfit"].get("epsilon") is None
    assert (
        7.5 <= v["dp-eps-8"]["epsilon"] <= 8.0 * 1.01
        and v["dp-eps-8"]["delta"] == f["delta"] == 1 / f["n_train"]
    )
    assert (
        v["overfit"]["mia_auc"] > v["dp-eps-8"]["mia_auc"]
    )  # the memorising model leaks more than the private one
    assert f["audit_members"] == f["audit_nonmembers"] == 64
    checks = list(f["mechanism_checks"].values())
    assert (
        checks[0] < 1e-5 and checks[1] < 1e-5
    )  # per-example mean = batch gradient; the notebook's formula = Opacus
    assert v["overfit"]["epochs"] == 2 and v["dp-eps-8"]["epochs"] == 1
    # the private model saved: it reloads, reads the text as the cached features did, is timed beside the
    # teacher, and every model of the notebook (one architecture) carries that size and speed
    assert v["dp-eps-8"]["artifact"] == "private" and f["private_artifact"]["variant"] == "dp-eps-8"
    assert f["private_artifact"]["reload_max_abs_logit_diff"] < 1e-4
    model, _, meta = lib.artifacts.load(smoke.roots["07_privacy"] / "models" / "private")
    assert model.config.classifier_hidden == rec["params"]["head_hidden"] and meta["variant"] == "dp-eps-8"
    for row in v.values():
        assert row["size_mb"] == f["size_mb"] and row["speedup_vs_teacher"] == f["speedup_vs_teacher"] > 0
        assert row["throughput_b32"] > 0 and row["timed_as"] == "dp-eps-8"
    table = lib.report.variants_table([smoke.rec["00_baseline"], rec])
    assert table.loc["dp-eps-8", "speedup_vs_teacher"] == f["speedup_vs_teacher"]  # the report sees it


@pytest.mark.notebook
def test_smoke_08_federation_on_both_engines_aggregates_as_flower_does_and_stops_everything(smoke):
    rec = smoke.rec["08_federated"]
    f, v, p = rec["findings"], by_name(rec), rec["params"]
    splits = ["iid", *(f"dirichlet-{a:g}" for a in p["dirichlet_alphas"]), "by-movie"]
    assert set(v) == {"centralized", *(f"{s}-{st}" for s in splits for st in p["strategies"])}
    assert v["centralized"]["role"] == "reference" and len(f["central_curve"]) == p["num_rounds"] + 1
    assert f["aggregation_max_abs_diff"] < 1e-6 and f["proximal_gradient_max_abs_diff"] < 1e-6
    for name in v.keys() - {"centralized"}:
        run = v[name]
        assert (
            run["rounds"] == p["num_rounds"]
            and run["bytes_per_round"] == 2 * run["model_bytes"] * p["num_clients"]
        )
        assert 0 <= run["worst_client_accuracy"] <= run["mean_client_accuracy"] <= 1
    # the skewed split is skewed: its clients hold more of one label than the IID clients do
    skewed, iid = f["splits"][f"dirichlet-{min(p['dirichlet_alphas']):g}"], f["splits"]["iid"]
    assert skewed["mean majority share"] > iid["mean majority share"]
    d = f["deployment"]
    assert d["processes_left"] == 0 and d["deployed_accuracy"] == d["simulated_accuracy"]
    assert d["max_abs_weight_diff"] < 1e-6  # the same seeds on both engines: the same training
    assert not engines_left(["flower-super", "flwr-", "raylet", "gcs_server"])


def engines_left(names):
    """Processes still running whose command line holds any of ``names`` (servers and engines)."""
    return [
        q
        for q in psutil.process_iter(["cmdline"])
        if any(e in " ".join(q.info["cmdline"] or []) for e in names)
    ]


@pytest.mark.notebook
def test_smoke_09_every_variant_is_tested_attacked_and_checked_for_fairness(smoke):
    rec = smoke.rec["09_robustness"]
    f, v = rec["findings"], by_name(rec)
    assert set(f["variants"]) == {"teacher", "lora", "pruned", "quantized", "student"} and not f["absent"]
    for name in f["variants"]:  # the same texts for all: behaviour tests, attacks, fairness
        row = v[name]
        assert (
            row["artifact"] == name and row["accuracy"] is None
        )  # a column of the model's row in the report
        assert (
            0 <= row["robust_accuracy"] <= min(row["robust_accuracy_char"], row["robust_accuracy_word"]) <= 1
        )
        assert 0 <= row["checklist_failure_rate"] <= 1 and row["fairness_gap_low"] <= row["fairness_gap_high"]
        assert set(f["behaviour"][name]) == set(f["behaviour"]["teacher"])
        replayed = f["transfer"][f"{name}/char"]  # the teacher's successful attacks, the same strings for all
        assert replayed["transfer_texts"] == f["transfer"]["teacher/char"]["transfer_texts"]
    assert {r["attribute"] for r in f["fairness"]} >= {"gender (names)", "race (names)"}
    most = max(a["most_words_changed"] for a in f["attacks"].values())
    assert most <= rec["params"]["attack_max_words"]  # no attack went over its budget
    adv = v["student + adversarial training"]
    assert adv["accuracy"] is not None and f["adversarial_copies"] <= f["adversarial_crafted_from"]
    assert set(f["adversarial_robust_points"]) == {"char", "word", "both"}


@pytest.mark.notebook
def test_smoke_11_serves_the_choice_measures_every_config_and_stops_every_server(smoke):
    rec = smoke.rec["11_serve"]
    f, report = rec["findings"], smoke.rec["10_report"]["findings"]
    assert f["chosen"] == report["best_artifact"]["yours"]  # what the report chose, served
    configs = {v["config"] for v in rec["variants"]}
    assert {"unbatched", "batched, wait 2 ms"} <= configs and any("one group" in c for c in configs)
    for v in rec["variants"]:  # every served config has its knee, whatever it is
        assert v["max_rps_at_slo"] >= 0 and v["in_process_rps"] > 0 and 0 <= v["served_share"]
    assert f["best_config"][f["chosen"]] in configs and f["docs_status"] == 200
    assert (
        f["cache"]["cache on"]["hit_ratio"] > 0 and f["cache"]["cache off"]["hit_ratio"] == 0
    )  # no-cache honoured
    assert f["cache"]["cache on"]["errors"] == 0 and f["overload"]["unbounded queue"]["refused_share"] == 0
    assert 1 <= f["overload"]["limit"]
    assert [b["model calls"] for b in f["bursts"]] == [
        64,
        2,
    ]  # 64 texts: one call each, then two batches of 32
    assert not engines_left(["-m lib.serve", "lib.techniques.loadgen"])  # every server and generator stopped


@pytest.mark.notebook
def test_smoke_10_reports_every_variant_the_stack_and_the_choices(smoke):
    rec = smoke.rec["10_report"]
    f, v = rec["findings"], by_name(rec)
    sources = {x["source"] for x in rec["variants"]}
    before = [nb.name for nb in lib.runner.catalog.NOTEBOOKS][
        : [nb.name for nb in lib.runner.catalog.NOTEBOOKS].index("10_report") + 1
    ]
    assert sources == set(before) - {"06_explain"}  # 06 adds a column
    assert f["missing_notebooks"] == [] and f["records"] == before[:-1]
    stacked, bf16, small = (sorted(n for n in v if n.startswith("stacked")), f["stacked_bf16"],
                            f["stacked_compact"])  # fmt: skip
    assert stacked == sorted([f["stacked_name"], *(x["name"] for x in (bf16, small) if x)])
    assert all(v[n]["source"] == "10_report" for n in stacked)
    assert (bf16 is not None) == (lib.train.resolve_precision("auto") == "bf16")  # only where bf16 is native
    assert (small is not None) == (bf16 is not None)  # and read from a compact file beside it
    if bf16:  # measured rows beside the int8 stack, not artifacts
        assert v[bf16["name"]]["speedup_vs_teacher"] > 0 and not v[bf16["name"]].get("artifact")
        assert v[small["name"]]["speedup_vs_teacher"] > 0 and not v[small["name"]].get("artifact")
        assert small["size_mb"] < v[bf16["name"]]["size_mb"] / 2 and small["memory_mb"] > small["size_mb"]
    s = v[f["stacked_name"]]
    assert (
        s["size_mb"] < v["teacher"]["size_mb"] / 4 and s["speedup_vs_teacher"] > 1
    )  # student, trimmed, int8
    assert f["stacked_reload_max_abs_logit_diff"] == 0.0 and f["trim_train_max_abs_logit_diff"] < 1e-4
    assert 0 < f["vocabulary_kept"] < f["vocabulary_size"] and 0 <= f["test_tokens_unk"] < 0.5
    assert set(f["best_variant"]) == {"yours", "explanations first", "privacy required"}
    assert all(b in v for b in f["best_variant"].values())
    assert v["teacher"]["faithfulness"] is not None and v["dp-eps-8"]["epsilon"] is not None
    assert v["teacher"]["robust_accuracy"] is not None and v[f["stacked_name"]]["robust_accuracy"] is None
    page = (smoke.roots["10_report"] / "report.html").read_text(encoding="utf-8")
    assert f["stacked_name"] in page and 'src="figures/pareto.png"' in page
    assert all(f'href="html/{n}.html"' in page for n in JOBS[PAGE_JOB][0])  # it links the notebooks it ran
    others = set(smoke.roots.values()) - {smoke.roots["10_report"]}
    assert others and not any((root / "report.html").exists() for root in others)  # --no-html honoured


# ------------------------------------------------------------------------ Summaries


def summary_text(notebook, findings, params, env):
    """Run a notebook's Summary cell on the given numbers; return the markdown it writes."""
    cells = json.loads(lib.runner.paths.notebook_path(notebook).read_text(encoding="utf-8"))["cells"]
    at = next(i for i, c in enumerate(cells) if "".join(c["source"]).startswith("## Summary"))
    space = {"findings": findings, "P": SimpleNamespace(**params), "ENV": env, "Markdown": str, "lib": lib}
    exec("".join(cells[at + 1]["source"]).replace("Markdown(", "_text = Markdown(", 1), space)
    return space["_text"]


# Intervals (low, high) for a verdict: clearly above, clearly below, and straddling the point of comparison.
UP, DOWN, NOISE = {"low": 2.0, "high": 6.0}, {"low": -6.0, "high": -2.0}, {"low": -1.0, "high": 3.0}
FAST, SLOW, SAME = (1.5, 2.5), (0.6, 0.9), (0.9, 1.2)  # speed ratios' intervals


def iv(key, interval):
    """findings ``<key>_low``/``<key>_high`` from an interval (a dict or a pair)."""
    low, high = interval.values() if isinstance(interval, dict) else interval
    return {f"{key}_low": low, f"{key}_high": high}


BF16_STACK = {  # 10_report's stack cast to bf16, as measured on an AMX CPU
    "name": "stacked (student, pruned 30%, vocab, bf16 torch)",
    "speedup_vs_reference": 8.4,
    "speedup_low": 8.2,
    "speedup_high": 8.6,
    "smaller_x": 3.0,
    "points_vs_reference": -1.5,
    "points_low": -2.8,
    "points_high": -0.2,
}
COMPACT_STACK = {  # the same bf16 stack read from a file of int8 rows and 4-bit tables (lib.compact)
    **BF16_STACK,
    "name": "stacked (student, pruned 30%, vocab, bf16 torch, int8/4-bit file)",
    "smaller_x": 13.0,
    "size_mb": 6.9,
    "memory_mb": 17.3,
    "goals": {"speed": "meets", "size": "meets", "points": "meets"},
}
FLIPS = [  # notebook, numbers where the claim is false, numbers where it is true, the claim's phrase
    (
        "00_baseline",
        iv("teacher_minus_tfidf", UP),
        iv("teacher_minus_tfidf", DOWN),
        "worse than the classical",
    ),
    (
        "00_baseline",
        iv("teacher_minus_tfidf", UP),
        iv("teacher_minus_tfidf", NOISE),
        "within noise of the classical",
    ),
    (
        "00_baseline",
        iv("teacher_minus_tfidf", NOISE),
        iv("teacher_minus_tfidf", UP),
        "over the classical reference",
    ),
    (
        "00_baseline",
        iv("lib_vs_trainer_speed", FAST),
        iv("lib_vs_trainer_speed", SAME),
        "**within noise** of Trainer",
    ),
    (
        "00_baseline",
        iv("lib_vs_trainer_speed", SAME),
        iv("lib_vs_trainer_speed", SLOW),
        "slower than Trainer",
    ),
    (
        "00_baseline",
        {"group_by": "movie", "groups_in_two_splits": 0},
        {"group_by": "movie", "groups_in_two_splits": 3},
        "3 movie groups in two splits",
    ),
    (
        "00_baseline",
        {"group_by": "movie", "groups_in_two_splits": 0},
        {"group_by": "", "groups_in_two_splits": 0},
        "no group column",
    ),
    (
        "01_lora_finetune",
        iv("best_points", DOWN),
        iv("best_points", NOISE),
        "**within noise** of full fine-tuning",
    ),
    ("01_lora_finetune", iv("best_points", NOISE), iv("best_points", DOWN), "below full fine-tuning"),
    ("01_lora_finetune", iv("lr_demo_points", UP), iv("lr_demo_points", DOWN), "did **worse**"),
    (
        "01_lora_finetune",
        iv("lr_demo_points", UP),
        iv("lr_demo_points", NOISE),
        "**within noise** of each other",
    ),
    ("01_lora_finetune", iv("lr_demo_points", NOISE), iv("lr_demo_points", UP), "what makes it learn"),
    (
        "01_lora_finetune",
        {"merged_label_agreement": 1.0},
        {"merged_label_agreement": 0.99},
        "changed in the merge",
    ),
    ("01_lora_finetune", iv("train_speedup", FAST), iv("train_speedup", SLOW), "(slower;"),
    ("01_lora_finetune", iv("train_speedup", FAST), iv("train_speedup", SAME), "(within noise;"),
    ("01_lora_finetune", iv("merged_latency", FAST), iv("merged_latency", SAME), "**within noise** of it"),
    (
        "02_prune",
        {"unstructured_min_latency_high": 1.05},
        {"unstructured_min_latency_high": 0.8},
        "zeros **did** cut",
    ),
    (
        "02_prune",
        {"unstructured_min_latency_high": 0.8},
        {"unstructured_min_latency_high": 1.05},
        "zeros alone did not make it faster",
    ),
    ("02_prune", iv("kept_speedup", FAST), iv("kept_speedup", SLOW), "did **not** speed it up"),
    ("02_prune", iv("kept_speedup", SLOW), iv("kept_speedup", FAST), "removing units is speed"),
    ("02_prune", iv("kept_speedup", FAST), iv("kept_speedup", SAME), "speed-up **within noise**"),
    ("02_prune", iv("kept_points", DOWN), iv("kept_points", NOISE), "same texts: **within noise**"),
    ("03_quantize", iv("best_int8_speedup", FAST), iv("best_int8_speedup", SLOW), "**slower**"),
    ("03_quantize", iv("best_int8_speedup", FAST), iv("best_int8_speedup", SAME), "(**within noise**;"),
    ("03_quantize", iv("best_int8_points", DOWN), iv("best_int8_points", NOISE), "**within noise** of fp32"),
    (
        "03_quantize",
        {"bf16": True, "bf16_speedup_b32": 1.7},
        {"bf16": False, "bf16_speedup_b32": 0.2},
        "has **no** native bf16",
    ),
    (
        "03_quantize",
        {"worst_layer_error_per_channel": 0.1, "worst_layer_error_per_matrix": 0.5},
        {"worst_layer_error_per_channel": 0.5, "worst_layer_error_per_matrix": 0.1},
        "does not lower it",
    ),
    ("04_distill", iv("kd_minus_labels", UP), iv("kd_minus_labels", DOWN), "**worse** than labels alone"),
    ("04_distill", iv("kd_minus_labels", UP), iv("kd_minus_labels", NOISE), "cannot be told apart"),
    ("04_distill", iv("kd_minus_labels", NOISE), iv("kd_minus_labels", UP), "**better** than labels alone"),
    ("04_distill", iv("teacher_init", UP), iv("teacher_init", DOWN), "it **hurts** here"),
    ("04_distill", iv("teacher_init", UP), iv("teacher_init", NOISE), "no measurable help"),
    ("04_distill", iv("student_speedup", FAST), iv("student_speedup", SAME), "(within noise:"),
    ("05_distributed", iv("speedup_world", FAST), iv("speedup_world", SLOW), "(slower;"),
    ("05_distributed", iv("speedup_world", SLOW), iv("speedup_world", FAST), "(faster;"),
    ("05_distributed", iv("speedup_world", FAST), iv("speedup_world", SAME), "(within noise;"),
    ("05_distributed", {"eval_identical": True}, {"eval_identical": False}, "**differ from**"),
    (
        "06_explain",
        {"comprehensiveness_vs_random": {"lime": UP, "integrated_gradients": UP}},
        {"comprehensiveness_vs_random": {"lime": DOWN, "integrated_gradients": UP}},
        "does **not** beat",
    ),
    (
        "06_explain",
        {"comprehensiveness_vs_random": {"lime": UP, "integrated_gradients": UP}},
        {"comprehensiveness_vs_random": {"lime": UP, "integrated_gradients": NOISE}},
        "is **within noise** of",
    ),
    ("07_privacy", iv("accuracy_gap", (1.0, 3.0)), iv("accuracy_gap", (6.0, 9.0)), "**more than**"),
    ("07_privacy", iv("accuracy_gap", (1.0, 3.0)), iv("accuracy_gap", (3.0, 7.0)), "**within noise** of"),
    (
        "07_privacy",
        {"dp_below_overfit_tpr": True},
        {"dp_below_overfit_tpr": False},
        "**not** below the overfit model's under the",
    ),
    (
        "07_privacy",
        {"dp_below_overfit_tpr_calibrated": True},
        {"dp_below_overfit_tpr_calibrated": False},
        "**not** below it under the calibrated",
    ),
    ("07_privacy", {"dp_below_overfit_auc": True}, {"dp_below_overfit_auc": False}, "is **not** below the"),
    ("08_federated", iv("iid_gap", (0.5, 1.5)), iv("iid_gap", (2.5, 4.0)), "**more than**"),
    ("08_federated", iv("iid_gap", (0.5, 1.5)), iv("iid_gap", (1.0, 3.0)), "**within noise** of"),
    (
        "08_federated",
        {"fedprox_vs_fedavg": {"dirichlet-0.1": {**DOWN, "points": -4.0}}},
        {"fedprox_vs_fedavg": {"dirichlet-0.1": {**UP, "points": 4.0}}},
        "**FedProx is better**",
    ),
    (
        "08_federated",
        {"fedprox_vs_fedavg": {"dirichlet-0.1": {**UP, "points": 4.0}}},
        {"fedprox_vs_fedavg": {"dirichlet-0.1": {**DOWN, "points": -4.0}}},
        "**FedAvg is better**",
    ),
    (
        "08_federated",
        {"fedprox_vs_fedavg": {"dirichlet-0.1": {**UP, "points": 4.0}}},
        {"fedprox_vs_fedavg": {"dirichlet-0.1": {**NOISE, "points": 1.0}}},
        "): within noise.",
    ),
    (
        "08_federated",
        {},
        {
            "deployment": {
                "seconds": 30.0,
                "deployed_accuracy": 0.7,
                "simulated_accuracy": 0.71,
                "max_abs_weight_diff": 0.01,
                "processes_left": 0,
            }
        },
        "**not equal to**",
    ),
    (
        "08_federated",
        {},
        {
            "deployment": {
                "seconds": 30.0,
                "deployed_accuracy": 0.7,
                "simulated_accuracy": 0.7,
                "max_abs_weight_diff": 0.0,
                "processes_left": 2,
            }
        },
        "**2 still running**",
    ),
    (
        "09_robustness",
        {"adversarial_robust_points": {"char": {**NOISE, "points": 1.0}}},
        {"adversarial_robust_points": {"char": {**UP, "points": 4.0}}},
        "it **raised** accuracy",
    ),
    (
        "09_robustness",
        {"adversarial_robust_points": {"char": {**UP, "points": 4.0}}},
        {"adversarial_robust_points": {"char": {**NOISE, "points": 1.0}}},
        "changed, **within noise**,",
    ),
    (
        "09_robustness",
        {
            "adversarial_robust_points": {"char": {"low": 12.0, "high": 20.0, "points": 16.0}},
            "adversarial_clean_points": {"low": -0.5, "high": 0.5, "points": 0.0},
        },
        {
            "adversarial_robust_points": {"char": {"low": 2.0, "high": 6.0, "points": 4.0}},
            "adversarial_clean_points": {"low": -0.5, "high": 0.5, "points": 0.0},
        },
        "does **not** meet the goal",
    ),
    (
        "09_robustness",
        {"adversarial_clean_points": {"low": -0.5, "high": 0.5, "points": 0.0}},
        {"adversarial_clean_points": {"low": -3.0, "high": -1.5, "points": -2.2}},
        "lost 2.20 points",
    ),
    (
        "09_robustness",
        {
            "fairness": [
                {
                    "variant": "teacher",
                    "attribute": "a",
                    "gap": 0.0,
                    "low": -0.01,
                    "high": 0.01,
                    "within_noise": True,
                }
            ]
        },
        {
            "fairness": [
                {
                    "variant": "teacher",
                    "attribute": "a",
                    "gap": 0.03,
                    "low": 0.01,
                    "high": 0.05,
                    "within_noise": False,
                }
            ]
        },
        "A gap outside noise: teacher.",
    ),
    ("11_serve", {"chosen_served_share": 0.3}, {"chosen_served_share": 0.7}, "it meets the goal of 50%"),
    ("11_serve", {"chosen_served_share": 0.7}, {"chosen_served_share": 0.3}, "does **not** meet the goal"),
    (
        "11_serve",
        {"grouping": {"grouped": [100.0, 99.0], "one group": [120.0, 118.0]}},
        {"grouping": {"grouped": [120.0, 117.0], "one group": [100.0, 99.0]}},
        "length groups raised the knee",
    ),
    (  # the same rate on the grid, answered at 99 or 101 per second: not a move
        "11_serve",
        {"grouping": {"grouped": [120.0, 117.0], "one group": [100.0, 99.0]}},
        {"grouping": {"grouped": [100.0, 101.0], "one group": [100.0, 99.0]}},
        "length groups did not move the knee",
    ),
    ("10_report", {"stacked_goal": "meets"}, {"stacked_goal": "misses"}, "does **not** meet"),
    (  # each of the three goals judged on its own: which one the stack could not have
        "10_report",
        {"stacked_goals": {"speed": "meets", "size": "meets", "points": "meets"}},
        {"stacked_goals": {"speed": "misses", "size": "meets", "points": "within noise"}},
        "speed **misses**, size meets, points within noise",
    ),
    ("10_report", {"prune_fraction": 0.2}, {"prune_fraction": 0.0}, "**Pruning:** none"),
    (
        "10_report",
        {"stacked_goal": "meets"},
        {"stacked_goal": "within noise"},
        "is **within noise** of",
    ),
    (  # the bf16 stack's verdict against the int8 one knows the repeats' spread
        "10_report",
        {"stacked_bf16": None},
        {"stacked_speedup_low": 4.0, "stacked_speedup_high": 4.5, "stacked_bf16": BF16_STACK},
        "**faster** than the int8 stack",
    ),
    (
        "10_report",
        {"stacked_speedup_low": 4.0, "stacked_speedup_high": 4.5, "stacked_bf16": BF16_STACK},
        {"stacked_speedup_low": 4.0, "stacked_speedup_high": 8.5, "stacked_bf16": BF16_STACK},
        "**within noise** of the int8 stack",
    ),
    (  # the compact bf16 stack: its own line, its size on disk and in memory, its goals one by one
        "10_report",
        {"stacked_bf16": BF16_STACK, "stacked_compact": None},
        {"stacked_bf16": BF16_STACK, "stacked_compact": COMPACT_STACK},
        "**13.0×** smaller on disk (6.9 MB; 17.3 MB in memory)",
    ),
    (
        "10_report",
        {"stacked_bf16": BF16_STACK, "stacked_compact": COMPACT_STACK},
        {
            "stacked_bf16": BF16_STACK,
            "stacked_compact": {**COMPACT_STACK, "goals": {**COMPACT_STACK["goals"], "speed": "misses"}},
        },
        "speed: **misses**; size: meets",
    ),
    (
        "10_report",
        {"missing_notebooks": []},
        {"missing_notebooks": ["05_distributed"]},
        "missing: 05_distributed",
    ),
]


@pytest.mark.notebook
@pytest.mark.parametrize(
    "notebook, false, true, phrase", FLIPS, ids=[f"{n}-{p[:28]}" for n, _, _, p in FLIPS]
)
def test_summary_claims_follow_the_numbers(smoke, notebook, false, true, phrase):
    rec = smoke.rec[notebook]
    assert phrase not in summary_text(notebook, {**rec["findings"], **false}, rec["params"], rec["env"])
    assert phrase in summary_text(notebook, {**rec["findings"], **true}, rec["params"], rec["env"])
