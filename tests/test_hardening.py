"""Issue 22: bad input from Python gets a clear exception and leaves state unchanged; nothing
reachable from Python crashes the interpreter. Each test here failed before its fix. Cases
that used to segfault run in a child interpreter, so a regression fails the test instead of
killing the suite."""
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import peftcore

REPO = Path(__file__).resolve().parent.parent


def run_child(code: str, timeout: float = 120) -> str:
    """Run `code` in a fresh interpreter with this checkout first on the path; fail the
    test on a crash (negative return code) or a non-zero exit, return its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                               "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (f"child exited with {proc.returncode}\n"
                                  f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}")
    return proc.stdout


# ------------------------------------------------------------------ crashes (were SIGSEGV)

def test_read_only_array_stays_read_only(tmp_path):
    out = run_child(f"""
        import numpy as np, peftcore
        np.zeros(4, np.float32).tofile({str(tmp_path / 'x.bin')!r})
        t = peftcore.Tensor(np.memmap({str(tmp_path / 'x.bin')!r}, np.float32, mode='r'))
        try:
            np.asarray(t)[0] = 1
        except ValueError as e:
            print("refused:", e)
        try:
            memoryview(t)[0] = 1
        except TypeError as e:
            print("refused:", e)
        assert not np.asarray(t).flags.writeable
        assert memoryview(t).readonly
    """)
    assert out.count("refused:") == 2


def test_optimizer_refuses_read_only_memory(tmp_path):
    out = run_child(f"""
        import numpy as np, peftcore
        np.zeros(4, np.float32).tofile({str(tmp_path / 'x.bin')!r})
        t = peftcore.Tensor(np.memmap({str(tmp_path / 'x.bin')!r}, np.float32, mode='r'))
        try:
            t.requires_grad = True
        except ValueError as e:
            print("refused:", e)
        t.grad = np.ones(4, np.float32)
        m, v = peftcore.Tensor.zeros((4,)), peftcore.Tensor.zeros((4,))
        try:
            peftcore._C.adamw_step(t, m, v, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0)
        except ValueError as e:
            print("refused:", e)
        assert not np.asarray(t).any()
    """)
    assert out.count("refused:") == 2 and "read-only" in out


@pytest.mark.parametrize("shape", [(2**62 + 1, 4), (2**40, 2**40), (2**33, 2**31), (3, 2**61),
                                   (2**31, 2**31, 2**2)])
def test_element_count_overflow_is_refused(shape):
    out = run_child(f"""
        import peftcore
        try:
            t = peftcore.Tensor.zeros({shape!r})
            print("made", t.shape, t.size)
            memoryview(t)[10**6, 0]
        except ValueError as e:
            print("refused:", e)
    """)
    assert out.startswith("refused:") and "63 bits" in out


def test_zeros_shape_entries_are_checked():
    with pytest.raises(ValueError, match=r"shape\[0\]"):
        peftcore.Tensor.zeros((2**64, 1))
    with pytest.raises(TypeError, match=r"shape\[1\] must be an int, got float"):
        peftcore.Tensor.zeros((2, 1.5))
    assert peftcore.Tensor.zeros((0, 2**60)).size == 0
    with pytest.raises(ValueError, match="63 bits"):  # NumPy could not view it (fuzzer's find)
        peftcore.Tensor.zeros((0, 2**62))
    assert peftcore.Tensor.zeros((np.int64(2), 3)).shape == (2, 3)


def test_zeros_memory_error_says_how_much():
    with pytest.raises(MemoryError, match=r"cannot allocate \d+ bytes"):
        peftcore.Tensor.zeros((2**40, 2**20))


# ------------------------------------------------------------------ Tensor() input checks

def test_byte_swapped_arrays_are_refused():
    with pytest.raises(ValueError, match="native byte order"):
        peftcore.Tensor(np.arange(3, dtype=">f4"))
    with pytest.raises(ValueError, match="native byte order"):
        peftcore.Tensor(np.arange(3, dtype=np.dtype(np.int64).newbyteorder()))
    t = peftcore.Tensor(np.arange(3, dtype="=f4"))
    assert np.asarray(t).tolist() == [0.0, 1.0, 2.0]


def test_immutable_bytes_are_never_written():
    data = bytes(8)
    t = peftcore.Tensor(np.frombuffer(data, np.float32))
    with pytest.raises(ValueError, match="read-only"):
        np.asarray(t)[0] = 1
    with pytest.raises(ValueError, match="read-only"):
        t.requires_grad = True
    assert data == bytes(8)


# ------------------------------------------------------------------ adapters and wrappers

TINY = dict(model_type="bert", vocab_size=100, hidden_size=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)


def _tiny(seed=0):
    return peftcore.AutoModelForSequenceClassification.from_config(TINY, seed=seed)


def test_second_wrapper_on_one_base_is_refused(tmp_path):
    base = _tiny()
    pm = peftcore.get_peft_model(base, peftcore.LoraConfig(r=4, target_modules=["query"]))
    A = np.array(pm.base_model.model.bert.encoder.layer[0].attention.self.query.lora_A["default"].weight)
    with pytest.raises(ValueError, match="already wrapped by a PeftModel"):
        peftcore.get_peft_model(base, peftcore.LoraConfig(r=2, target_modules=["query"]))
    layer = pm.base_model.model.bert.encoder.layer[0].attention.self.query
    assert layer.r["default"] == 4 and np.array_equal(layer.lora_A["default"].weight, A)
    pm.save_pretrained(tmp_path / "saved")
    other = peftcore.get_peft_model(_tiny(seed=1), peftcore.LoraConfig(r=4, target_modules=["query"]))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="already wrapped by a PeftModel"):
        peftcore.PeftModel.from_pretrained(base, tmp_path / "other")
    assert np.array_equal(layer.lora_A["default"].weight, A)
    # after unload the base model can be wrapped again
    bare = pm.unload()
    again = peftcore.get_peft_model(bare, peftcore.LoraConfig(r=2, target_modules=["query"]))
    assert again.peft_config["default"].r == 2


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", "a\\b", "..", ".", "a.b", "",
                                  " x", "a\0b", "c:"])
def test_adapter_names_cannot_escape_the_save_folder(tmp_path, name):
    pm = peftcore.get_peft_model(_tiny(), peftcore.LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(ValueError, match="adapter_name"):
        pm.add_adapter(name, peftcore.LoraConfig(r=2, target_modules=["query"]))
    assert list(pm.peft_config) == ["default"]
    with pytest.raises(ValueError, match="adapter_name"):
        peftcore.get_peft_model(_tiny(), peftcore.LoraConfig(r=2, target_modules=["query"]),
                                adapter_name=name)
    pm.save_pretrained(tmp_path / "ok")
    with pytest.raises(ValueError, match="adapter_name"):
        pm.load_adapter(tmp_path / "ok", adapter_name=name)
    with pytest.raises(ValueError, match="adapter_name"):
        peftcore.PeftModel.from_pretrained(_tiny(), tmp_path / "ok", adapter_name=name)


def test_set_adapter_takes_a_list_of_one():
    pm = peftcore.get_peft_model(_tiny(), peftcore.LoraConfig(r=2, target_modules=["query"]))
    pm.add_adapter("other", peftcore.LoraConfig(r=2, target_modules=["query"]))
    pm.set_adapter(["other"])
    assert pm.active_adapter == "other"
    with pytest.raises(ValueError, match="one adapter at a time"):
        pm.set_adapter(["other", "default"])
    with pytest.raises(TypeError, match="must be a str"):
        pm.set_adapter({"other"})
    with pytest.raises(TypeError, match="must be a str"):
        pm.delete_adapter(["other"])
    assert pm.active_adapter == "other"


# ------------------------------------------------------------------ memory

def test_release_memory_frees_the_activation_arena():
    model = _tiny().train()
    model(np.ones((32, 16), np.int64), labels=np.zeros(32, np.int64))
    big = model._engine.activation_bytes()
    assert big > 0
    model.release_memory()
    assert model._engine.activation_bytes() == 0
    with pytest.raises(RuntimeError):
        model.backward()  # the released forward cannot be backpropagated
    model(np.ones((2, 4), np.int64), labels=np.zeros(2, np.int64))
    model.backward()
    small = model._engine.activation_bytes()
    assert 0 < small < big / 8
    model.eval()  # leaving training releases what training kept
    assert model._engine.activation_bytes() == 0
    pm = peftcore.get_peft_model(model, peftcore.LoraConfig(r=2, target_modules=["query"]))
    pm(np.ones((2, 4), np.int64))
    pm.release_memory()
    assert model._engine.activation_bytes() == 0


def test_forward_out_of_memory_says_how_much():
    out = run_child("""
        import resource, numpy as np, peftcore
        CFG = dict(model_type="bert", vocab_size=100, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=64, max_position_embeddings=512)
        m = peftcore.AutoModelForSequenceClassification.from_config(CFG, seed=0).train()
        ids = np.ones((4, 16), np.int64)
        m(ids, labels=np.zeros(4, np.int64))
        vm = int(open("/proc/self/statm").read().split()[0]) * 4096
        resource.setrlimit(resource.RLIMIT_AS, (vm + (400 << 20), resource.RLIM_INFINITY))
        try:
            m(np.ones((2048, 512), np.int64))
        except MemoryError as e:
            print("MemoryError:", e)
        with peftcore.no_grad():
            print(m(ids).logits.shape)
    """)
    assert "forward of a (2048, 512) batch: cannot allocate" in out and "bytes" in out
    assert "(4, 2)" in out  # the model still runs


def test_backward_gradient_names_are_the_callers():
    base = peftcore.AutoModel.from_config(TINY, add_pooling_layer=False).train()
    base(np.ones((2, 4), np.int64))
    with pytest.raises(ValueError, match="no pooler"):
        base.backward(grad_pooler_output=np.ones((2, 16), np.float32))
    with pytest.raises(ValueError, match=r"grad_last_hidden_state must have the last forward's "
                                         r"shape \(2, 4, 16\), got \(2, 5, 16\)"):
        base.backward(grad_last_hidden_state=np.ones((2, 5, 16), np.float32))
    pooled = peftcore.AutoModel.from_config(TINY).train()
    pooled(np.ones((2, 4), np.int64))
    with pytest.raises(ValueError, match=r"grad_pooler_output must have the last forward's "
                                         r"shape \(2, 16\), got \(3, 16\)"):
        pooled.backward(grad_pooler_output=np.ones((3, 16), np.float32))


# ------------------------------------------------------------------ configs and files

def _write_config(folder, **changes):
    import json
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(TINY, **changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("field,value,says", [
    ("hidden_dropout_prob", "0.1", "hidden_dropout_prob must be a number in [0, 1), got '0.1'"),
    ("attention_probs_dropout_prob", None, "attention_probs_dropout_prob must be a number"),
    ("classifier_dropout", "x", "classifier_dropout must be a number"),
    ("layer_norm_eps", "tiny", "layer_norm_eps must be a number in (0, 1), got 'tiny'"),
    ("layer_norm_eps", 0, "layer_norm_eps must be a number in (0, 1)"),
    ("pad_token_id", "x", "pad_token_id must be None or an int in [0, vocab_size=100), got 'x'"),
    ("pad_token_id", 1000, "got 1000"),
    ("pad_token_id", -5, "got -5"),
    ("initializer_range", -1, "initializer_range must be a number >= 0, got -1"),
    ("initializer_range", "big", "initializer_range must be a number >= 0"),
    ("hidden_act", ["gelu"], "unsupported hidden_act"),
    ("vocab_size", 2**40, "vocab_size must be a positive int (at most 2147483647)"),
    ("num_attention_heads", 2**40, "num_attention_heads must be a positive int"),
    ("model_type", ["bert"], "unsupported model_type"),
    ("id2label", 3, "id2label"),
])
def test_config_errors_name_the_field_and_the_file(tmp_path, field, value, says):
    folder = _write_config(tmp_path / "m", **{field: value})
    with pytest.raises(ValueError) as info:
        peftcore.AutoModelForSequenceClassification.from_pretrained(folder)
    message = str(info.value)
    assert str(folder / "config.json") in message and field in message
    assert says in message


def test_out_of_range_pad_token_id_is_refused_in_code_too():
    with pytest.raises(ValueError, match="pad_token_id"):
        peftcore.EncoderConfig(**dict(TINY, pad_token_id=100))
    cfg = peftcore.EncoderConfig(**dict(TINY, pad_token_id=None))
    assert cfg.pad_token_id is None


@pytest.mark.parametrize("field,value", [
    ("target_modules", "(unclosed"), ("exclude_modules", "a[b"),
    ("rank_pattern", {"(bad": 2}), ("alpha_pattern", {"x)": 2}),
    ("modules_to_save", ["cls(ifier"]),
])
def test_bad_regular_expressions_name_the_field(field, value):
    kwargs = {"target_modules": ["query"], field: value}
    with pytest.raises(ValueError, match=rf"`{field}` holds an invalid regular expression"):
        peftcore.LoraConfig(**kwargs)


def test_bad_regular_expression_in_adapter_config_names_the_file(tmp_path):
    import json
    pm = peftcore.get_peft_model(_tiny(), peftcore.LoraConfig(r=2, target_modules=["query"]))
    pm.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["target_modules"] = "(unclosed"
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"adapter_config\.json.*target_modules"):
        peftcore.PeftModel.from_pretrained(_tiny(), tmp_path)


def _deep_json(depth):
    return "[" * depth + "]" * depth


def test_deeply_nested_json_is_a_clean_error(tmp_path):
    import struct
    from peftcore.utils.io import CheckpointError, read_safetensors
    header = ('{"a":' + _deep_json(100_000) + "}").encode()
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointError, match="deep.safetensors.*nested too deeply"):
        read_safetensors(path)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": ' + _deep_json(100_000) + "}")
    with pytest.raises(ValueError, match="config.json.*nested too deeply"):
        peftcore.AutoModel.from_pretrained(folder)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(_deep_json(100_000))
    with pytest.raises(ValueError, match="adapter_config.json.*nested too deeply"):
        peftcore.PeftConfig.from_pretrained(adapter)


def test_integer_weights_are_refused_for_float_parameters(tmp_path):
    from peftcore.utils.io import CheckpointError, read_safetensors, save_safetensors
    model = _tiny()
    model.save_pretrained(tmp_path / "m")
    state = read_safetensors(tmp_path / "m" / "model.safetensors")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    state[name] = state[name].view(np.int32)  # the same bytes, declared I32
    save_safetensors(tmp_path / "m" / "model.safetensors", state)
    with pytest.raises(TypeError, match=rf"model.safetensors: tensor '{name}' has dtype I32"):
        peftcore.AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    with pytest.raises(TypeError, match="floating-point"):
        model.load_state_dict({name: np.zeros((16, 16), np.int64)}, strict=False)
    # adapters: int64 tensors are refused, naming the file
    pm = peftcore.get_peft_model(_tiny(), peftcore.LoraConfig(r=2, target_modules=["query"]))
    pm.save_pretrained(tmp_path / "a")
    weights = read_safetensors(tmp_path / "a" / "adapter_model.safetensors")
    key = next(iter(weights))
    weights[key] = np.ones(weights[key].shape, np.int64)
    save_safetensors(tmp_path / "a" / "adapter_model.safetensors", weights)
    with pytest.raises(CheckpointError, match=rf"adapter_model.safetensors: tensor '{key}' has dtype int64"):
        peftcore.PeftModel.from_pretrained(_tiny(), tmp_path / "a")
    with pytest.raises(CheckpointError, match="int64"):
        pm.load_adapter(tmp_path / "a", adapter_name="b")
    assert list(pm.peft_config) == ["default"]


def test_unwritable_folder_is_named_not_the_temp_file(tmp_path, monkeypatch):
    import tempfile
    pm = peftcore.get_peft_model(_tiny(), peftcore.LoraConfig(r=2, target_modules=["query"]))

    def denied(prefix="", suffix="", dir=None):
        raise PermissionError(13, "Permission denied", f"{dir}/{prefix}abc{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError) as info:
        pm.save_pretrained(tmp_path / "out")
    message = str(info.value)
    assert f"into the folder {tmp_path / 'out'}" in message and ".tmp" not in message
    with pytest.raises(PermissionError, match="cannot save model.safetensors into the folder"):
        _tiny().save_pretrained(tmp_path / "model")


# ------------------------------------------------------------------ arguments

def test_attention_mask_values_are_checked():
    from peftcore import functional as F
    q = np.ones((1, 3, 4), np.float32)
    for bad in (np.nan, 2.0, -1.0):
        mask = np.array([[1, bad, 1]], np.float32)
        with pytest.raises(ValueError, match="1 \\(attend\\) or 0 \\(padding\\)"):
            F.multi_head_attention(q, q, q, 2, mask)
        with pytest.raises(ValueError, match="mask must hold 1"):
            peftcore._C.attention_forward(q, q, q, 2, mask, 0.0, 0, True)
    assert F.multi_head_attention(q, q, q, 2, np.array([[1, 0, 1]])).shape == (1, 3, 4)


def test_huge_ints_name_the_argument():
    from peftcore import functional as F
    q = np.ones((1, 3, 4), np.float32)
    with pytest.raises(ValueError, match="num_heads must be in"):
        F.multi_head_attention(q, q, q, 2**40)
    with pytest.raises(ValueError, match="ignore_index must be in"):
        F.cross_entropy(np.zeros((2, 3), np.float32), np.zeros(2, np.int64), ignore_index=2**70)
    with pytest.raises(ValueError, match=r"set_num_threads expects an int in \[1, 1024\]"):
        peftcore.set_num_threads(2**63)
    with pytest.raises(TypeError, match="num_heads must be an int"):
        F.multi_head_attention(q, q, q, 2.0)


def test_set_num_threads_takes_numpy_ints():
    before = peftcore.get_num_threads()
    try:
        peftcore.set_num_threads(np.int64(1))
        assert peftcore.get_num_threads() == 1
    finally:
        peftcore.set_num_threads(before)
    with pytest.raises(TypeError):
        peftcore.set_num_threads(True)


def test_negative_zero_initializer_range_builds():  # found by the fuzzer
    model = peftcore.AutoModel.from_config(dict(TINY, initializer_range=-0.0))
    assert not np.asarray(model.get_input_embeddings().weight).any()


def test_roberta_needs_a_pad_token_id():  # found by the fuzzer: forward raised TypeError
    with pytest.raises(ValueError, match="RoBERTa needs a pad_token_id"):
        peftcore.EncoderConfig(**dict(TINY, model_type="roberta", pad_token_id=None))


def test_fork_while_a_thread_holds_a_model_lock():
    out = run_child("""
        import os, threading, numpy as np, peftcore
        m = peftcore.AutoModel.from_config(dict(model_type="bert", vocab_size=100,
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=16))
        held, release = threading.Event(), threading.Event()
        def hold():
            with m._lock:
                held.set()
                release.wait()
        t = threading.Thread(target=hold)
        t.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            with peftcore.no_grad():
                m(np.ones((1, 4), np.int64))
            os._exit(7)
        release.set()
        t.join()
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """, timeout=60)
    assert "child 7" in out


def test_torch_pickle_expanding_a_storage_past_a_gigabyte_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from peftcore.models.checkpoint import CheckpointError, read_torch_bin
    torch.save({"w": torch.ones(1).expand(2**29)}, tmp_path / "x.bin")
    with pytest.raises(CheckpointError, match="repeats its storage"):
        read_torch_bin(tmp_path / "x.bin")
    torch.save({"w": torch.arange(2.0).expand(3, 2)}, tmp_path / "y.bin")
    assert read_torch_bin(tmp_path / "y.bin")["w"].tolist() == [[0, 1]] * 3


def test_a_refused_adapter_call_leaves_the_forward_usable():
    pm = peftcore.get_peft_model(_tiny(), peftcore.LoraConfig(r=2, target_modules=["query"]))
    pm.train()
    pm(np.ones((2, 4), np.int64), labels=np.zeros(2, np.int64))
    with pytest.raises(ValueError):
        pm.set_adapter("missing")
    with pytest.raises(ValueError):
        pm.delete_adapter("default")  # active
    with pytest.raises(ValueError):
        pm.add_adapter("x", peftcore.LoraConfig(r=2, target_modules=["nothing"]))
    pm.backward()  # the forward still stands
    assert pm.base_model.model.bert.encoder.layer[0].attention.self.query.lora_A["default"].weight.grad is not None


def test_construction_and_backward_out_of_memory_say_how_much():
    out = run_child("""
        import resource, numpy as np, peftcore
        vm = int(open("/proc/self/statm").read().split()[0]) * 4096
        resource.setrlimit(resource.RLIMIT_AS, (vm + (300 << 20), resource.RLIM_INFINITY))
        try:
            peftcore.AutoModel.from_config(dict(model_type="bert", vocab_size=20_000_000,
                hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=16))
        except MemoryError as e:
            print("MemoryError:", e)
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        CFG = dict(model_type="bert", vocab_size=1_500_000, hidden_size=32, num_hidden_layers=1,
                   num_attention_heads=4, intermediate_size=64, max_position_embeddings=16)
        m = peftcore.AutoModel.from_config(CFG, seed=0).train()
        ids = np.ones((2, 4), np.int64)
        out = m(ids)
        vm = int(open("/proc/self/statm").read().split()[0]) * 4096
        resource.setrlimit(resource.RLIMIT_AS, (vm + (100 << 20), resource.RLIM_INFINITY))
        try:
            m.backward(grad_last_hidden_state=np.ones((2, 4, 32), np.float32))
        except MemoryError as e:
            print("MemoryError:", e)
    """)
    # parameters: (vocab + positions + token types + 2) x hidden, one layer, the pooler
    h, i = 32, 64
    params = (20_000_000 + 16 + 2 + 2) * h + (4 * h * h + 2 * h * i + 9 * h + i) + h * h + h
    assert ("Encoder: out of memory for the parameters of a model with vocab_size=20000000, "
            f"hidden_size=32, num_hidden_layers=1, intermediate_size=64 (about {4 * params} "
            "bytes)") in out, out
    # the gradients the backward had not allocated when it ran out: at least the word
    # embeddings' (1.5M x 32), at most every parameter's
    n = sum(int(np.prod(p.shape)) for _, p in peftcore.AutoModel.from_config(dict(
        model_type="bert", vocab_size=1_500_000, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=16)
    ).named_parameters())
    m = re.search(r"backward of a \(2, 4\) batch: out of memory for its scratch or the "
                  r"trainable parameters' gradients \((\d+) bytes not yet allocated\)", out)
    assert m and 4 * 1_500_000 * 32 <= int(m.group(1)) <= 4 * n, out
