"""Our backends against Hugging Face transformers on random-weight models of real widths.

For each family (Llama-3-8B's widths with llama3 rope scaling, Qwen3-8B's with q/k norm,
Qwen2.5-7B's with QKV bias; two layers each) transformers builds the model from a config with
seeded random weights, saves it with safetensors, and computes float32 logits (TF32 off, eager
attention). tests/gpu/parity_tool runs the same directory through our CUDA backend (bf16) and,
for one family, our CPU backend (float32), writing the logits of every greedy step and the
tokens chosen.

The reference is teacher-forced on our own tokens (one forward pass over prompt + our tokens),
so every step is comparable even after a legitimate divergence; while our tokens agree, its
argmax rows are exactly transformers' own greedy continuation. Checked per step:
relative error ||ours - ref|| / ||ref|| (bf16 bound on CUDA, float32 bound on CPU), and our
token equal to the reference's argmax wherever the reference's top-1 minus top-2 margin is
larger than the bf16 noise we measure (a multiple of the step's RMS logit error). As a
yardstick for the bf16 error, transformers itself is also run in bf16 on the same tokens and
its distance from float32 printed beside ours.

Needs a GPU, torch, transformers, safetensors and numpy (the device machine has them) and the
parity_tool binary: env SLUICE_PARITY_TOOL, else next to SLUICE_BIN's build, else build/.
Skips otherwise. Each model is about 1.5 billion parameters (mostly the vocabulary matrices).
"""
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_PROMPT = 16
N_STEPS = 8
N_STEPS_CPU = 4
GPU_REL_BOUND = 2e-2   # bf16 weights and activations against float32
CPU_REL_BOUND = 1e-3   # float32 against float32
NOISE_MULT = 5.0       # token checked where margin > NOISE_MULT * RMS logit error
BF16_YARDSTICK_MULT = 1.5  # CUDA error at most this times transformers' own bf16 error

# Real widths; two layers. Deviations, on purpose: llama3 rope's original context is 32 (real:
# 8192) so that its scaled and smoothed bands act within this test's 24 positions; the Qwen2
# model ties its embeddings (Qwen2.5-7B does not; the smaller Qwen2.5 models do), so the tied
# path is checked too and the model stays small. Storage: the Llama model is saved as bf16, the
# Qwen3 model as float32 holding bf16-exact values, the Qwen2 model as float32 in 2 GB shards
# with full float32 values, so our load-time bf16 rounding is part of what its numbers measure.
CONFIGS = {
    "llama3-8b-2l": dict(
        model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=32),
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
        bos_token_id=128000, eos_token_id=128001),
    "qwen3-8b-2l": dict(
        model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_size=4096, intermediate_size=12288,
        num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
        max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
        attention_bias=False, hidden_act="silu", bos_token_id=151643, eos_token_id=151645),
    "qwen2.5-7b-2l": dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=2, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        use_sliding_window=False, hidden_act="silu", bos_token_id=151643, eos_token_id=151643),
}
SAVE = {
    "llama3-8b-2l": dict(dtype="bf16", shard=None),
    "qwen3-8b-2l": dict(dtype="f32-bf16-exact", shard=None),
    "qwen2.5-7b-2l": dict(dtype="f32", shard="2GB"),
}
CPU_CONFIG = "qwen3-8b-2l"


def _tool():
    cands = [os.environ.get("SLUICE_PARITY_TOOL")]
    if os.environ.get("SLUICE_BIN"):
        cands.append(os.path.join(os.environ["SLUICE_BIN"], "..", "tests", "gpu", "parity_tool"))
    cands.append(os.path.join(REPO, "build", "tests", "gpu", "parity_tool"))
    for c in cands:
        if c and os.access(c, os.X_OK):
            return os.path.abspath(c)
    return None


TOOL = _tool()
pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible to torch"),
    pytest.mark.skipif(TOOL is None, reason="parity_tool not built (make BUILD=... BUILD/tests/gpu/parity_tool)"),
]


@torch.no_grad()
def _randomize(model, seed, bf16_exact):
    """Seeded weights: linear and embedding N(0, 0.02^2) as transformers' init, but norm weights
    1 + N(0, 0.2^2) and biases N(0, 0.5^2), since their default ones and zeros would let a
    backend that skips them (or swaps q_norm and k_norm) pass."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if "norm" in name:
            p.normal_(0.0, 0.2, generator=gen).add_(1.0)
        elif name.endswith(".bias"):
            p.normal_(0.0, 0.5, generator=gen)
        else:
            p.normal_(0.0, 0.02, generator=gen)
        if bf16_exact:
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def _build(name, seed):
    d = dict(CONFIGS[name])
    model_type = d.pop("model_type")
    try:
        cfg = transformers.AutoConfig.for_model(model_type, **d)
    except AttributeError:
        cfg = transformers.CONFIG_MAPPING[model_type](**d)
    with torch.device("cuda"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
        except TypeError:
            model = transformers.AutoModelForCausalLM.from_config(cfg)
    model = model.to(device="cuda", dtype=torch.float32).eval()
    _randomize(model, seed, SAVE[name]["dtype"] != "f32")
    return model


def _rope_fields(model_dir):
    """The rope settings as saved (transformers 5 writes rope_parameters, 4.x rope_scaling and
    rope_theta), so a silently dropped setting shows up here rather than as a weaker test."""
    c = json.load(open(os.path.join(model_dir, "config.json")))
    rp = c.get("rope_parameters") or c.get("rope_scaling") or {}
    return rp.get("rope_type", rp.get("type", "default")), rp.get("rope_theta", c.get("rope_theta"))


def _save(model, name, path):
    kw = {}
    if SAVE[name]["shard"]:
        kw["max_shard_size"] = SAVE[name]["shard"]
    if SAVE[name]["dtype"] == "bf16":
        model.to(torch.bfloat16)
        try:
            model.save_pretrained(path, **kw)
        finally:
            model.to(torch.float32)  # exact: every value came from bf16
    else:
        model.save_pretrained(path, **kw)
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    assert files, f"no safetensors written in {path}: {os.listdir(path)}"
    return files


@torch.no_grad()
def _reference(model, prompt, tokens):
    """float32 logits of transformers for each step of our run: the last prompt position, then
    after each of our tokens but the last."""
    ids = torch.tensor([list(prompt) + list(tokens[:-1])], device="cuda")
    logits = model(input_ids=ids, use_cache=False).logits[0].float()
    return logits[len(prompt) - 1:].cpu().numpy().astype(np.float64)


def _bf16_yardstick(model, prompt, tokens, ref):
    """How far transformers itself lands from its float32 logits when run in bf16 (weights and
    activations), on the same tokens: the scale our bf16 error is judged against. Converts the
    model for good, so it runs after every float32 use."""
    model.to(torch.bfloat16)
    return [float(np.linalg.norm(a - b) / np.linalg.norm(b)) for a, b in zip(_reference(model, prompt, tokens), ref)]


def _run_tool(path, device, prompt, steps, out_dir):
    out = os.path.join(out_dir, f"ours_{device}.json")
    cmd = [TOOL, "--model", path, "--device", device, "--prompt-ids", ",".join(map(str, prompt)),
           "--steps", str(steps), "--out", out]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"parity_tool failed ({p.returncode}): {p.stderr[-2000:]}"
    meta = json.load(open(out))
    logits = np.fromfile(meta["logits_file"], dtype="<f4").reshape(meta["steps"], meta["vocab_size"])
    return meta, logits.astype(np.float64), p.stderr.strip().splitlines()[-1:]


def _compare(label, ours, ref, tokens, tokens_nologits, rel_bound):
    """Asserts the per-step bounds; returns a one-line summary."""
    assert ours.shape == ref.shape, f"{label}: logits shape {ours.shape} vs reference {ref.shape}"
    assert np.isfinite(ours).all(), f"{label}: non-finite logits"
    rels, margins, bounds, verdicts = [], [], [], []
    checked = agreed = 0
    hf_prefix = None
    for k in range(ref.shape[0]):
        diff = ours[k] - ref[k]
        rms = float(np.sqrt(np.mean(diff * diff)))
        top2 = np.argsort(ref[k])[-2:]
        rels.append(float(np.linalg.norm(diff) / np.linalg.norm(ref[k])))
        margins.append(float(ref[k][top2[1]] - ref[k][top2[0]]))
        bounds.append(NOISE_MULT * rms)
        same = tokens[k] == int(top2[1])
        if not same and hf_prefix is None:
            hf_prefix = k
        if margins[k] > bounds[k]:
            checked += 1
            agreed += same
            verdicts.append("=" if same else "X")
        else:
            verdicts.append("~" if same else "x")
    if hf_prefix is None:
        hf_prefix = ref.shape[0]
    summary = (f"hf parity {label}: rel err per step {' '.join(f'{r:.1e}' for r in rels)} (max {max(rels):.2e}); "
               f"tokens {agreed}/{checked} equal where margin > {NOISE_MULT:g}x rms err "
               f"[{''.join(verdicts)}], transformers' greedy prefix {hf_prefix}/{ref.shape[0]}; "
               f"ref top-2 margins {' '.join(f'{m:.3f}' for m in margins)}; noise bounds "
               f"{' '.join(f'{b:.3f}' for b in bounds)}")
    assert max(rels) < rel_bound, f"{label}: relative error {max(rels):.3e} over {rel_bound:g}: {summary}"
    assert agreed == checked, f"{label}: tokens differ where the reference margin is clear: {summary}"
    # Without logits the CUDA decode steps replay graphs: they must choose the same tokens up to
    # the first step whose choice is within noise.
    for k in range(len(tokens)):
        if margins[k] <= bounds[k]:
            break
        assert tokens_nologits[k] == tokens[k], f"{label}: run without logits differs at step {k}: {summary}"
    return summary


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_parity(name, capsys):
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    seed = 1000 + list(CONFIGS).index(name)
    rng = np.random.default_rng(seed)
    prompt = [int(x) for x in rng.integers(0, CONFIGS[name]["vocab_size"], N_PROMPT)]
    tmp = tempfile.mkdtemp(prefix=f"sluice_parity_{name}_")
    try:
        t0 = time.time()
        model = _build(name, seed)
        model_dir = os.path.join(tmp, "model")
        files = _save(model, name, model_dir)
        rope_type, theta = _rope_fields(model_dir)
        want = CONFIGS[name].get("rope_scaling", {}).get("rope_type", "default")
        assert (rope_type, theta) == (want, CONFIGS[name]["rope_theta"]), f"saved rope {rope_type} {theta}"
        t1 = time.time()

        meta, ours, tool_line = _run_tool(model_dir, "cuda", prompt, N_STEPS, tmp)
        ref = _reference(model, prompt, meta["tokens"])
        lines = [_compare(f"{name} cuda", ours, ref, meta["tokens"], meta["tokens_nologits"], GPU_REL_BOUND)]
        t2 = time.time()

        if name == CPU_CONFIG:
            meta_c, ours_c, tool_line_c = _run_tool(model_dir, "cpu", prompt, N_STEPS_CPU, tmp)
            ref_c = _reference(model, prompt, meta_c["tokens"])
            lines.append(_compare(f"{name} cpu", ours_c, ref_c, meta_c["tokens"], meta_c["tokens_nologits"],
                                  CPU_REL_BOUND))
            tool_line += tool_line_c
        hf_bf16 = _bf16_yardstick(model, prompt, meta["tokens"], ref)
        ours_rel = [float(np.linalg.norm(a - b) / np.linalg.norm(b)) for a, b in zip(ours, ref)]
        lines.append(f"hf parity {name} yardstick: transformers in bf16 vs float32 rel err max {max(hf_bf16):.2e}; "
                     f"ours (cuda) max {max(ours_rel):.2e}, {max(ours_rel) / max(hf_bf16):.2f}x transformers' bf16")
        # Measured 0.5x to 0.64x on the H200 (2026-11-21): a kernel that lost precision would
        # show here long before the absolute bound.
        assert max(ours_rel) < BF16_YARDSTICK_MULT * max(hf_bf16), lines[-1]
        t3 = time.time()
        with capsys.disabled():
            print(f"\n{name} (torch {torch.__version__}, transformers {transformers.__version__}): saved {SAVE[name]['dtype']} in {len(files)} file(s); build+save {t1 - t0:.1f} s, "
                  f"cuda {t2 - t1:.1f} s, cpu {t3 - t2:.1f} s; {' | '.join(tool_line)}")
            for line in lines:
                print(line)
        del model
        torch.cuda.empty_cache()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
