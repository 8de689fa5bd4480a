"""Distillation on the tiny random BERT: the loss's limits, student construction, cached teacher logits,
training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lib
from lib.techniques.distill import DistillLoss, kd_loss, layer_map, make_student


def test_kd_loss_is_cross_entropy_at_alpha_0():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert torch.allclose(kd_loss(s, t, y, temperature=4.0, alpha=0.0), F.cross_entropy(s, y))


def test_kd_loss_is_zero_when_student_matches_teacher_at_alpha_1():
    torch.manual_seed(0)
    t, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    assert kd_loss(t.clone(), t, y, temperature=2.0, alpha=1.0).abs().item() < 1e-6
    assert kd_loss(t + 1.0, t, y, temperature=2.0, alpha=1.0).abs().item() < 1e-6  # softmax ignores a shift
    assert kd_loss(-t, t, y, temperature=2.0, alpha=1.0).item() > 0.01


def test_kd_loss_soft_term_matches_the_formula():
    torch.manual_seed(1)
    s, t, y = torch.randn(5, 2), torch.randn(5, 2), torch.randint(0, 2, (5,))
    T = 3.0
    p_t, p_s = F.softmax(t / T, -1), F.softmax(s / T, -1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * T * T
    assert torch.allclose(kd_loss(s, t, y, T, 1.0), kl, atol=1e-6)
    assert torch.allclose(kd_loss(s, t, y, T, 0.3), 0.3 * kl + 0.7 * F.cross_entropy(s, y), atol=1e-6)


@pytest.mark.parametrize("T, a", [(0, 0.5), (-1.0, 0.5), (2.0, 1.5), (2.0, -0.1), ("2", 0.5), (True, 0.5)])
def test_bad_temperature_or_alpha_is_refused(T, a):
    with pytest.raises(ValueError, match="temperature|alpha"):
        DistillLoss(torch.zeros(1, 2), T, a)


def test_layer_map():
    assert layer_map(6, 3) == [0, 2, 4] and layer_map(6, 2) == [0, 3] and layer_map(6, 6) == list(range(6))
    for bad in (0, 7):
        with pytest.raises(ValueError, match="layers"):
            layer_map(6, bad)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_student_from_teacher_layers_copies_the_right_weights(pooling):
    lib.utils.seed_everything(0)
    teacher = lib.models.load_model(lib.models.TINY, 2, pooling=pooling)[0]  # 2 layers
    student = make_student(teacher, 1, init="teacher")
    assert type(student) is type(teacher) and student.config.num_hidden_layers == 1
    assert lib.models.pooling_of(student) == lib.models.pooling_of(teacher)
    ts, ss = teacher.state_dict(), student.state_dict()
    for key, value in ss.items():
        assert torch.equal(value, ts[key]), key  # layer_map(2, 1) == [0]: student layer 0 is teacher layer 0
    assert torch.equal(
        ss["bert.embeddings.word_embeddings.weight"], ts["bert.embeddings.word_embeddings.weight"]
    )
    assert torch.equal(ss["classifier.weight"], ts["classifier.weight"])


def test_student_picks_every_other_layer():
    lib.utils.seed_everything(0)
    teacher = lib.models.load_model(lib.models.TINY, 2, pooling="mean")[0]
    cfg = lib.models.tiny_config(2, num_hidden_layers=4)
    teacher = type(teacher)(cfg)
    student = make_student(teacher, 2, init="teacher")
    ts, ss = teacher.state_dict(), student.state_dict()
    for s_i, t_i in ((0, 0), (1, 2)):
        k = "bert.encoder.layer.{}.intermediate.dense.weight"
        assert torch.equal(ss[k.format(s_i)], ts[k.format(t_i)])
    assert student.config.distilled_from_layers == [0, 2]


def test_random_student_shares_nothing_and_is_seeded(tiny):
    teacher = tiny[0]()
    a, b = make_student(teacher, 1, init="random", seed=3), make_student(teacher, 1, init="random", seed=3)
    w = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], teacher.state_dict()[w])
    with pytest.raises(ValueError, match="init"):
        make_student(teacher, 1, init="copy")


def test_distillation_trains_through_lib_train(tiny, toy):
    make, tok = tiny
    teacher = make(seed=0)
    enc = lib.data.Encoded(toy, tok, 32)
    cached = lib.distill.teacher_logits(teacher, enc, tok)
    assert cached.shape == (len(toy), 2)
    loader = lib.data.make_loader(lib.distill.indexed(enc), tok, 16, shuffle=True, seed=0)
    student = make_student(teacher, 1, init="teacher")
    calls = []
    loss = DistillLoss(cached, temperature=2.0, alpha=1.0)

    def counted(model, batch):
        calls.append(batch["idx"].clone())
        return loss(model, batch)

    cfg = lib.train.TrainConfig(num_epochs=2, learning_rate=1e-3, seed=0, progress=False)
    lib.train.fit(student, loader, None, cfg, loss_fn=counted)
    seen = torch.cat(calls)
    assert sorted(seen.tolist()) == sorted(list(range(len(toy))) * 2)  # every example, each epoch, by index
    with torch.no_grad():  # the student moved towards the teacher
        after = lib.evaluate.predict_logits(student, lib.data.make_loader(enc, tok, 32, shuffle=False))[0]
    assert (after.argmax(-1) == cached.numpy().argmax(-1)).mean() > 0.7
    with pytest.raises(KeyError, match="idx"):
        loss(student, {k: v for k, v in next(iter(lib.data.make_loader(enc, tok, 4, shuffle=False))).items()})


def test_student_saves_and_reloads(tiny, tmp_path):
    make, tok = tiny
    student = make_student(make(), 1)
    lib.artifacts.save(tmp_path / "student", student, tok, {"notebook": "test"})
    reloaded, _, _ = lib.artifacts.load(tmp_path / "student")
    assert reloaded.config.num_hidden_layers == 1
    x = tok(["a fine film"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(student(**x).logits, reloaded(**x).logits)


def narrow_student(teacher, imp, fraction, init="teacher"):
    """A 1-layer student narrowed by the teacher's scores of the layer it copies (as 04_distill builds it)."""
    student = make_student(teacher, 1, init=init)
    return lib.prune.remove_units(student, lib.prune.plan(imp.layers(layer_map(2, 1)), fraction))


def test_narrow_student_keeps_the_teachers_most_important_units(tiny, toy):
    make, tok = tiny
    teacher = make(seed=2)
    loader = lib.data.make_loader(lib.data.Encoded(toy, tok, 32), tok, 16, shuffle=False)
    imp = lib.prune.gradient_importance(teacher, loader)
    student = narrow_student(teacher, imp, 0.5)
    lay = lib.models.layout(student)
    assert lay == {"heads": [2], "intermediate": [32]}  # tiny: 4 heads, 64 neurons in its layer 0
    kept = sorted(range(64), key=lambda j: float(imp.neurons[0][j]))[32:]  # the 32 highest scores
    assert torch.equal(
        student.bert.encoder.layer[0].intermediate.dense.weight,
        teacher.bert.encoder.layer[0].intermediate.dense.weight[sorted(kept)],
    )
    assert (
        lib.models.layout(narrow_student(teacher, imp, 0.5, init="random")) == lay
    )  # same shape: comparable


def test_narrow_student_saves_and_reloads(tiny, toy, tmp_path):
    make, tok = tiny
    teacher = make(seed=2)
    student = narrow_student(teacher, lib.prune.magnitude_importance(teacher), 0.25)
    lib.artifacts.save(tmp_path / "s", student, tok, {})
    reloaded = lib.artifacts.load(tmp_path / "s")[0]
    x = tok(["a fine film", "no"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(student(**x).logits, reloaded(**x).logits)
