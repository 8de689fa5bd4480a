"""Parameters: declarations, validation rules, profiles and overrides — each bad input, its clear error."""

from __future__ import annotations

import json
import re

import pytest

import lib
from lib.errors import ParamError
from lib.runner.params import parse_declarations, validate

NB = "00_baseline"


def test_declarations_parse_types_and_comments():
    decls = parse_declarations(
        'a = 1  # an int\nb = 2.0e-5  # a float\nc = "x"  # a string\nd = [1, 4]  # ranks\n'
    )
    assert {n: type(d.default) for n, d in decls.items()} == {"a": int, "b": float, "c": str, "d": list}
    assert decls["a"].help == "an int"


@pytest.mark.parametrize(
    "src, fragment",
    [
        ("a: int = 1  # typed\n", "plain"),
        ("a = 1 + 1  # computed\n", "literal"),
        ("a = 1  # comment with = sign\n", "single '='"),
    ],
)
def test_declarations_reject_what_papermill_cannot_read(src, fragment):
    with pytest.raises(ParamError, match=fragment):
        parse_declarations(src)


def test_every_notebook_parameters_cell_is_readable_by_papermill():
    import papermill as pm

    for nb in lib.runner.catalog.NOTEBOOKS:
        ours = lib.runner.params.declared(nb.name)
        theirs = pm.inspect_notebook(str(lib.runner.paths.notebook_path(nb.name)))
        assert set(theirs) == set(ours), f"papermill sees different parameters in {nb.name}"
        assert all(d.help for d in ours.values()), f"every parameter of {nb.name} needs a comment"


def test_notebook_defaults_are_valid():
    for nb in lib.runner.catalog.NOTEBOOKS:
        validate(nb.name, {})


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ParamError, match=r"unknown parameter 'num_epoch'.*did you mean 'num_epochs'"):
        validate(NB, {"num_epoch": 2})


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("num_epochs", "2", "should be a valid integer"),
        ("num_epochs", 2.5, "should be a valid integer"),
        ("num_epochs", True, "should be a valid integer, got True"),
        ("learning_rate", "1e-3", "write 1.0e-3"),
        ("data_contract", {"model": 3}, "data_contract.model: should be a valid string"),
        ("data_contract", [1], "data_contract: should be a valid dictionary"),
    ],
)
def test_wrong_type(name, value, fragment):
    with pytest.raises(ParamError, match=fragment):
        validate(NB, {name: value})


def test_int_is_accepted_for_float():
    assert validate(NB, {"learning_rate": 1})["learning_rate"] == 1


@pytest.mark.parametrize(
    "name, value",
    [
        ("test_frac", 1.5),
        ("val_frac", 0.0),
        ("num_epochs", 0),
        ("learning_rate", 0.0),
        ("batch_size", -1),
        ("max_length", 4096),
        ("max_train_samples", -5),
        ("dataset", "imdb"),
        ("profile", "../x"),
        ("ema_decay", 1.0),
        ("ema_decay", -0.5),
    ],
)
def test_impossible_values(name, value):
    values = {"data_contract": {name: value}} if name in lib.runner.contract.FIELDS else {name: value}
    with pytest.raises(ParamError, match=name):
        validate(NB, values)


@pytest.mark.parametrize(
    "notebook, name, value",
    [
        ("03_quantize", "min_agreement", 1.5),
        ("03_quantize", "max_points_lost", -1.0),
        ("04_distill", "alpha", 1.5),
        ("04_distill", "temperature", 0.0),
        ("04_distill", "student_narrow", 1.0),
        ("04_distill", "student_layers", 0),
        ("04_distill", "sweep_alphas", [0.5, 2.0]),
        ("05_distributed", "world_size", 1),
        ("05_distributed", "comm_hooks", ["fp16", "int4"]),
        ("05_distributed", "equivalence_dtype", "float16"),
        ("05_distributed", "powersgd_rank", 0),
        ("05_distributed", "threads_per_rank", -1),
        ("05_distributed", "train_steps", 0),
        ("06_explain", "lime_num_samples", 5),
        ("06_explain", "top_share", 0.0),
        ("06_explain", "num_explain", 2),
        ("06_explain", "ig_steps", 1),
        ("07_privacy", "target_epsilons", [1.0, 0.0]),
        ("07_privacy", "max_grad_norm", 0.0),
        ("07_privacy", "delta", 1.0),
        ("07_privacy", "delta", -1.0e-5),
        ("07_privacy", "accountant", "moments"),
        ("07_privacy", "trainable_layers", -1),
        ("07_privacy", "overfit_epochs", 0),
        ("07_privacy", "audit_size", -5),
        ("08_federated", "num_clients", 1),
        ("08_federated", "dirichlet_alphas", [0.1, 0.0]),
        ("08_federated", "strategies", ["fedavg", "scaffold"]),
        ("08_federated", "proximal_mu", -0.1),
        ("08_federated", "fraction_train", 0.0),
        ("08_federated", "client_holdout", 1.0),
        ("08_federated", "deploy_clients", 1),
        ("08_federated", "num_rounds", 0),
        ("09_robustness", "attack_texts", 0),
        ("09_robustness", "attack_max_share", 0.0),
        ("09_robustness", "word_min_similarity", 1.5),
        ("09_robustness", "behaviour_scale", 0.0),
        ("09_robustness", "adversarial_clean_texts", -1),
        ("09_robustness", "fairness_bootstrap", 10),
        ("09_robustness", "variants", ["teacher", "stacked"]),
        ("09_robustness", "adversarial_precision", "fp16"),
        ("10_report", "weight_robustness", -1.0),
        ("10_report", "stack_base", "pruned"),
        ("10_report", "stack_prune_fractions", [0.2, 1.0]),
        ("10_report", "stack_max_val_points", -1.0),
        ("10_report", "stack_embedding_bits", 2),
        ("10_report", "weight_speed", -1.0),
        ("10_report", "weight_privacy", -0.5),
        ("10_report", "max_points_lost", -3.0),
    ],
)
def test_impossible_values_of_later_notebooks(notebook, name, value):
    with pytest.raises(ParamError, match=name):
        validate(notebook, {name: value})


def test_rules_reject_impossible_fractions_and_say_why():
    why = "sparsities.1: should be less than 1, got 1.5 (fractions of weights to zero, e.g. [0.3, 0.5])"
    with pytest.raises(ParamError, match=re.escape(why)):
        validate("02_prune", {"sparsities": [0.5, 1.5]})
    with pytest.raises(ParamError, match="dataset: must be 'rotten_tomatoes'"):
        validate(NB, {"data_contract": {"dataset": "imdb"}})


def test_cross_check_leaves_room_for_training():
    with pytest.raises(ParamError, match="val_frac \\+ test_frac = 0.95 leaves under 10%"):
        validate(NB, {"data_contract": {"val_frac": 0.5, "test_frac": 0.45}})


def test_weights_that_are_all_zero_choose_nothing():
    zero = {"weight_speed": 0.0, "weight_cost": 0.0, "weight_explainability": 0.0, "weight_privacy": 0.0}
    with pytest.raises(ParamError, match="all 0: nothing to choose by"):
        validate("10_report", zero)
    assert validate("10_report", {**zero, "weight_privacy": 1.0})["weight_privacy"] == 1.0


def test_the_learning_rate_demo_stops_within_the_sweeps_run():
    with pytest.raises(ParamError, match=r"lr_demo_epochs \(3\) is over num_epochs \(2\)"):
        validate("01_lora_finetune", {"lr_demo_epochs": 3, "num_epochs": 2})
    validate("01_lora_finetune", {"lr_demo_epochs": 2, "num_epochs": 2})


def test_a_load_run_needs_room_for_its_least_requests():
    with pytest.raises(ParamError, match=r"load_min_requests \(500\) is over load_max_requests \(400\)"):
        validate("11_serve", {"load_min_requests": 500, "load_max_requests": 400})
    same = {"load_min_requests": 400, "load_max_requests": 400}
    assert validate("11_serve", same)["load_min_requests"] == 400


def test_all_problems_reported_at_once():
    with pytest.raises(ParamError) as e:
        validate(NB, {"bogus": 1, "num_epochs": "x", "test_frac": 2.0})
    msg = str(e.value)
    assert "bogus" in msg and "num_epochs" in msg and "test_frac" in msg


def test_unknown_profile_lists_available():
    with pytest.raises(ParamError, match="unknown profile 'nope'.*smoke"):
        lib.runner.params.load_profile("nope")


def test_override_parsing():
    assert lib.runner.params.parse_override("num_epochs=2") == ("num_epochs", 2)
    assert lib.runner.params.parse_override("learning_rate=1.0e-4") == ("learning_rate", 1.0e-4)
    assert lib.runner.params.parse_override("ranks=[1, 4]") == ("ranks", [1, 4])
    with pytest.raises(ParamError, match="name=value"):
        lib.runner.params.parse_override("num_epochs")


def test_resolve_merges_shared_section_and_overrides():
    p = lib.runner.params.resolve("smoke", NB, {"num_epochs": 2, "max_length": 32})
    assert p["profile"] == "smoke" and p["num_epochs"] == 2
    assert p["data_contract"]["max_train_samples"] == 128 and p["data_contract"]["max_length"] == 32
    assert set(p["data_contract"]) == set(lib.runner.contract.FIELDS)  # every field, not only the profile's


def test_from_namespace_validates():
    ns = {"num_epochs": 0}
    with pytest.raises(ParamError, match="num_epochs"):
        lib.runner.params.from_namespace(ns, NB)
    p = lib.runner.params.from_namespace({"data_contract": {"seed": 7}}, NB)
    assert p.seed == 7 and p.as_dict()["model"] == "minilm-l6" and "data_contract" not in p.as_dict()


def test_a_notebook_on_the_teacher_takes_the_teachers_contract(outputs, tiny):
    make, tok = tiny
    made = {**lib.runner.contract.DataContract().model_dump(), "max_train_samples": 77, "seed": 3}
    d = lib.runner.folders.start("lab", by="runner", notebooks=["00_baseline"])
    lib.artifacts.save(lib.runner.folders.artifact_dir("lab", "teacher"), make(), tok, {"params": made})
    lib.runner.folders.finish(d, "complete")
    p = lib.runner.params.from_namespace({}, "03_quantize")  # by hand: the contract comes from the teacher
    assert (p.max_train_samples, p.seed) == (77, 3)
    with pytest.raises(ParamError, match="max_train_samples: the teacher used 77, here 5"):
        lib.runner.params.from_namespace({"data_contract": {"max_train_samples": 5}}, "03_quantize")
    assert lib.runner.params.from_namespace({}, "07_privacy").max_train_samples == 77  # it times the teacher
    assert lib.runner.params.from_namespace({}, "05_distributed").max_train_samples == 1000  # not on it


@pytest.mark.parametrize("profile", lib.runner.params.available_profiles())
def test_profiles_only_use_declared_keys(profile):
    """Every key of every notebook section is a parameter that notebook declares, and every value is valid."""
    data = lib.runner.params.load_profile(profile)
    for section, values in data.items():
        if section != "shared":
            unknown = set(values) - set(lib.runner.params.declared(section))
            assert not unknown, f"{profile}.yaml [{section}] has undeclared keys {unknown}"
    for nb in lib.runner.catalog.NOTEBOOKS:
        lib.runner.params.resolve(profile, nb.name, profile_data=data)


def test_profile_with_unknown_section(tmp_path, monkeypatch):
    monkeypatch.setattr(lib.runner.paths, "PARAMS", tmp_path)
    (tmp_path / "bad.yaml").write_text("99_nothing:\n  a: 1\n")
    with pytest.raises(ParamError, match="unknown section.*'99_nothing'"):
        lib.runner.params.load_profile("bad")
    (tmp_path / "broken.yaml").write_text("shared: [1, 2\n")
    with pytest.raises(ParamError, match="not valid YAML"):
        lib.runner.params.load_profile("broken")


def test_parameters_cell_must_be_unique(tmp_path):
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": "a = 1  # x"}], "metadata": {}}
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps(nb))
    with pytest.raises(ParamError, match="exactly one cell tagged 'parameters'"):
        lib.runner.params.parameters_cell(path)


def test_parameter_cells_put_the_technique_first_and_end_with_the_same_block():
    """The block shared by every notebook is identical everywhere, last, at most 5 lines; no contract field is
    declared by a notebook (the contract is declared once, in lib/runner/contract.py)."""
    blocks = set()
    for nb in lib.runner.catalog.NOTEBOOKS:
        lines = lib.runner.params.parameters_cell(nb.name).splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("# same for every notebook"))
        assert 0 < start and len(lines) - start <= 5, nb.name
        blocks.add("\n".join(lines[start:]))
        assert not set(lib.runner.params.declared(nb.name)) & set(lib.runner.contract.FIELDS), nb.name
    assert len(blocks) == 1
