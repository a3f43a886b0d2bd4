"""A transformers user's habits: ModelOutput access, return_dict=False, (B, 1) labels,
problem_type and its losses (multi-label BCE-with-logits), model.to(), lr_scheduler names;
and the class-weighted cross-entropy and BCE kernels against torch."""
import pickle

import numpy as np
import pytest

import peftcore
from peftcore import functional as F
from peftcore import get_peft_model, LoraConfig

CONFIG = dict(model_type="bert", vocab_size=40, hidden_size=16, num_hidden_layers=1,
              num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _model(**overrides):
    return peftcore.AutoModelForSequenceClassification.from_config(dict(CONFIG, **overrides),
                                                                   seed=0)


IDS = np.array([[2, 5, 7, 3], [2, 9, 3, 0]])
MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])


def test_outputs_take_attribute_key_and_index_access():
    model = _model()
    out = model(IDS, attention_mask=MASK, labels=np.array([1, 0]))
    assert out.loss.item() == out["loss"] == out[0] == float(out.loss)
    assert isinstance(out.loss, float) and isinstance(out.loss, np.floating)
    assert out.logits is out["logits"] is out[1]
    assert list(out.keys()) == ["loss", "logits"] and len(out.to_tuple()) == 2
    assert out[:1] == (out.loss,)
    no_loss = model(IDS, attention_mask=MASK)
    assert no_loss.loss is None and no_loss[0] is no_loss.logits and "loss" not in no_loss
    with pytest.raises(KeyError):
        no_loss["loss"]
    loss, logits = model(IDS, attention_mask=MASK, labels=np.array([1, 0]), return_dict=False)
    assert loss == out.loss and np.array_equal(logits, out.logits)
    (logits_only,) = model(IDS, attention_mask=MASK, return_dict=False)
    assert logits_only.shape == (2, 2)
    copied = pickle.loads(pickle.dumps(out))
    assert copied.loss == out.loss and np.array_equal(copied.logits, out.logits)
    base = peftcore.AutoModel.from_config(CONFIG, seed=0)
    hidden = base(IDS, attention_mask=MASK)
    assert hidden[0] is hidden.last_hidden_state and hidden["pooler_output"].shape == (2, 16)
    assert base(IDS, return_dict=False)[0].shape == (1 * 2, 4, 16)


def test_hidden_states_given_and_attentions_refused_clearly():
    model = _model(num_hidden_layers=2)
    assert model(IDS, output_hidden_states=False, output_attentions=False).logits.shape == (2, 2)
    states = model(IDS, output_hidden_states=True).hidden_states
    assert len(states) == 3 and all(h.shape == (2, 4, 16) for h in states)
    with pytest.raises(NotImplementedError, match="attention probabilities"):
        model(IDS, output_attentions=True)


def test_labels_shaped_b_by_1_are_flattened():
    model = _model()
    a = model(IDS, attention_mask=MASK, labels=np.array([[1], [0]])).loss
    b = model(IDS, attention_mask=MASK, labels=np.array([1, 0])).loss
    assert a == b


def test_problem_type_is_set_and_picks_the_loss():
    torch = pytest.importorskip("torch")
    model = _model(num_labels=1)
    assert model.config.problem_type is None
    out = model(IDS, labels=np.array([0.5, 2.0]))
    assert model.config.problem_type == "regression"
    expected = torch.nn.functional.mse_loss(torch.tensor(out.logits[:, 0]), torch.tensor([0.5, 2.0]))
    assert out.loss == pytest.approx(expected.item(), rel=1e-6)

    model = _model(num_labels=2)
    model(IDS, labels=np.array([1, 0]))
    assert model.config.problem_type == "single_label_classification"

    model = _model(num_labels=3)
    targets = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], np.float32)
    out = model(IDS, attention_mask=MASK, labels=targets)
    assert model.config.problem_type == "multi_label_classification"
    logits = torch.tensor(out.logits, requires_grad=True)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(targets))
    assert out.loss == pytest.approx(expected.item(), rel=1e-6)
    # the backward of the BCE reaches the classifier
    peft = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", target_modules=["query"]))
    peft.train()
    peft(IDS, attention_mask=MASK, labels=targets)
    peft.backward()
    grads = [np.asarray(p.grad) for n, p in peft.named_parameters()
             if p.requires_grad and "classifier" in n and n.endswith("bias")]
    assert grads and np.abs(grads[0]).sum() > 0

    model = _model(num_labels=2, problem_type="multi_label_classification")
    with pytest.raises(ValueError, match=r"multi-label labels must have shape \(2, 2\)"):
        model(IDS, labels=np.array([1, 0]))
    with pytest.raises(ValueError, match=r"multi-label labels must be in \[0, 1\]"):
        model(IDS, labels=np.array([[2.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="problem_type must be one of"):
        _model(problem_type="ranking")(IDS, labels=np.array([1, 0]))


def test_to_is_a_no_op_for_the_cpu_and_float32_else_refused():
    model = _model()
    peft = get_peft_model(_model(), LoraConfig(task_type="SEQ_CLS", target_modules=["query"]))
    for m in (model, peft):
        assert m.to("cpu") is m and m.to(np.float32) is m and m.to("cpu", np.float32) is m
        assert m.to(device="cpu", dtype="float32") is m and m.cpu() is m
        with pytest.raises(ValueError, match=r"to\('cuda'\): peftcore runs on the CPU in float32"):
            m.to("cuda")
        with pytest.raises(ValueError, match="float32 only"):
            m.to(np.float16)
    torch = pytest.importorskip("torch")
    assert model.to(torch.device("cpu")) is model and model.to(torch.float32) is model
    with pytest.raises(ValueError):
        model.to(torch.bfloat16)


# ------------------------------------------------------------------ losses in C


def test_weighted_cross_entropy_matches_torch_forward_and_backward():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    t = np.array([0, 2, 1, -100, 2, 2, 0])
    w = np.array([0.5, 2.0, 1.25], np.float32)
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(xt, torch.tensor(t), weight=torch.tensor(w))
    ref.backward(torch.tensor(0.7))
    assert F.cross_entropy(x, t, weight=w) == pytest.approx(ref.item(), rel=1e-6)
    grad = F.cross_entropy_backward(x, t, grad_loss=0.7, weight=w)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-5, atol=1e-7)
    # uniform weights are the plain loss
    assert F.cross_entropy(x, t, weight=[1, 1, 1]) == pytest.approx(F.cross_entropy(x, t), rel=1e-6)
    with pytest.raises(ValueError, match=r"weight must be \(3,\), one per class"):
        F.cross_entropy(x, t, weight=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"weight\[1\] is -1\.0"):
        F.cross_entropy(x, t, weight=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match=r"weight\[2\] is nan"):
        F.cross_entropy_backward(x, t, weight=[1.0, 1.0, float("nan")])


def test_bce_with_logits_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(5, 4)) * 30).astype(np.float32)  # large logits: the stable form
    t = rng.uniform(size=(5, 4)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(xt, torch.tensor(t))
    ref.backward(torch.tensor(1.5))
    assert F.binary_cross_entropy_with_logits(x, t) == pytest.approx(ref.item(), rel=1e-6)
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits_backward(x, t, 1.5),
                               xt.grad.numpy(), rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------ schedules


def _torch_lrs(make, steps):
    torch = pytest.importorskip("torch")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make(torch, opt)
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs


def _our_lrs(make, steps):
    p = peftcore.Parameter(peftcore.Tensor(np.zeros(1, np.float32)))
    p.requires_grad = True
    opt = peftcore.optim.AdamW([p], lr=0.1)
    sched = make(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        sched.step()
    return lrs


@pytest.mark.parametrize("name", ["LinearLR", "ConstantLR", "CosineAnnealingLR", "StepLR",
                                  "ExponentialLR"])
def test_lr_scheduler_classes_match_torch(name):
    kwargs = {"LinearLR": dict(start_factor=0.25, end_factor=1.0, total_iters=4),
              "ConstantLR": dict(factor=0.5, total_iters=3),
              "CosineAnnealingLR": dict(T_max=6, eta_min=0.01),
              "StepLR": dict(step_size=3, gamma=0.5),
              "ExponentialLR": dict(gamma=0.9)}[name]
    ours = _our_lrs(lambda opt: getattr(peftcore.optim.lr_scheduler, name)(opt, **kwargs), 8)
    ref = _torch_lrs(lambda torch, opt: getattr(torch.optim.lr_scheduler, name)(opt, **kwargs), 8)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_transformers_schedules_match(name):
    transformers = pytest.importorskip("transformers")
    ours = _our_lrs(lambda opt: peftcore.optim.lr_scheduler.get_scheduler(
        name, opt, num_warmup_steps=3, num_training_steps=10), 12)
    ref = _torch_lrs(lambda torch, opt: transformers.get_scheduler(
        name, opt, num_warmup_steps=3, num_training_steps=10), 12)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)
    assert peftcore.optim.get_cosine_schedule_with_warmup is \
        peftcore.optim.lr_scheduler.get_cosine_schedule_with_warmup
