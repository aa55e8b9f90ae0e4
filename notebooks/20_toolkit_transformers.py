# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The toolkit on GPT-2, Llama, Qwen3, OLMo 2 and ViT
#
# The paper's theory covers a weight whose scale a normalisation absorbs:
# only then is the gradient orthogonal to the weight (its Eq. 2), does the
# norm grow by $\lambda^2\lVert\nabla W\rVert^2$ per SGD step, and does the
# effective learning rate tune itself {cite}`mehmeti2024weight`. This
# chapter runs `elr`'s audit and ELR monitor on the Transformers people
# train today, built from their libraries' own configurations
# (`elr.tiny_transformers`: GPT-2, Llama, Qwen3 and OLMo 2 from Hugging
# Face `transformers`, ViT from torchvision; random initialisation,
# nothing downloaded), and asks three questions:
#
# 1. Which of their weights auto-tune?
# 2. Does the monitor, whose layers default to what the audit finds, watch
#    exactly those, and refuse a model that has none?
# 3. Does the identity behind auto-tuning hold on the weights it watches,
#    and fail on weights a user names by hand that do not auto-tune?
#
# **What the architectures predict:**
#
# | model | normalisation | auto-tune |
# |---|---|---|
# | GPT-2 | LayerNorm before each residual branch (pre-norm) | none: every weight writes into the residual stream, feeds GELU or the attention scores, or adds a bias before them |
# | Llama | RMSNorm, pre-norm | none, for the same reasons (SiLU gating instead of GELU, no biases) |
# | Qwen3 | RMSNorm, pre-norm, plus an RMSNorm on every head's queries and keys (QK-norm) | the query and key projections of every block, and nothing else |
# | OLMo 2 | RMSNorm on the queries and keys, and on each branch's *output* before the residual addition | every weight of a block but the MLP's gate (SiLU): the queries and keys through their norms; values, attention output, up and down projections through the norm after the branch (attention is linear in its values) |
# | ViT (its zero-initialised head drawn at random, see below) | LayerNorm, pre-norm | none |
#
# The audit (chapter {doc}`07_scale_invariance`) decides each weight in
# float64 from the paper's Eq. (1), $\langle\nabla_W f, W\rangle = 0$ for
# any output functional $f$ of a scale-invariant $W$, and gives the reason
# from a trace of how the weight's scale reaches the output. The monitor
# (`elr.measure.ELRMonitor`) is attached to the optimizer as a user's own
# loop would attach it. {doc}`18_transformers` studies what QK-norm does
# to training, on a Transformer of our own.

# %% tags=["parameters"]
width: int = 64  # width of every model (the residual stream) {>= 8}
n_layers: int = 2  # Transformer blocks of every model {>= 1}
heads: int = 4  # attention heads {>= 1}
vocab: int = 16  # symbols of the sorting task (the language models' vocabulary) {>= 2}
seq_len: int = 8  # tokens per sequence {>= 2}
steps: int = 60  # SGD steps of the monitored runs {>= 2}
lr: float = 0.1  # SGD learning rate of the monitored runs {> 0}
batch_size: int = 32  # sequences per step {>= 2}
seed: int = 0  # seed of the initialisations, the audit's inputs and the data order {>= 0}

# %%
import time

import numpy as np
import torch
from IPython.display import Markdown, display

from elr import audit, measure, plots
from elr import tiny_transformers as tt
from elr.transformer import sorting_task

plots.setup()
if width % heads:
    raise ValueError(f"width ({width}) must be a multiple of heads ({heads}): set width to a multiple of {heads}")
shape = dict(width=width, n_layers=n_layers, heads=heads, vocab=vocab, seq_len=seq_len, seed=seed)
models = {f: tt.build(f, **shape) for f in tt.FAMILIES}
inputs = {f: tt.example_inputs(f, batch=4, vocab=vocab, seq_len=seq_len, seed=seed) for f in tt.FAMILIES}

# %% [markdown]
# ## Which weights auto-tune
#
# The audit looks at the weights of linear and convolution layers (GPT-2's
# `Conv1D` and attention's input projection included), on a batch of four
# sequences of random tokens (four random images for ViT). torchvision
# initialises ViT's classification head to zero, which makes the output
# independent of every other weight at initialisation (chapter
# {doc}`08_model_zoo`); `elr.tiny_transformers` draws it like the other
# weights, so that the audit sees the architecture, not that accident.

# %%
start = time.time()
rows = {f: audit.audit(models[f], *inputs[f][0], kwargs=inputs[f][1], params="weights") for f in tt.FAMILIES}
audit_seconds = time.time() - start
tuning = {f: [r.name for r in rows[f] if r.auto_tunes] for f in tt.FAMILIES}

# %% tags=["hide-input"]
display(Markdown(
    "| model | weights audited | auto-tune | the others, by reason |\n|---|---|---|---|\n" + "\n".join(
        f"| {tt.LABELS[f]} | {len(rows[f])} | {len(tuning[f])}"
        + (f" ({', '.join(f'`{n}`' for n in tuning[f][:2])}{', …' if len(tuning[f]) > 2 else ''})" if tuning[f] else "")
        + f" | {audit.reasons_by_kind(rows[f])} |" for f in tt.FAMILIES)))
plots.glue("ch20-audit-seconds", f"{audit_seconds:.1f}")

# %% [markdown]
# The four audits took {glue:text}`ch20-audit-seconds` s together. Every
# count agrees with the predictions above. The reasons name the first
# operation on the way from each weight to the output that does not pass
# its scale on unchanged. In the pre-norm models that is a bias on the
# weight's output (GPT-2: the audit names the operation that follows the
# bias), the residual addition (the branch carries the scale, the stream it
# is added to does not), the attention scores (a query or key scaled by
# $\gamma$ changes $\mathrm{softmax}(qk^\top)$), or the nonlinearity of
# the MLP. The
# LayerNorm or RMSNorm that follows comes too late. (ViT's attention runs
# its projections inside one fused function, which the trace cannot look
# into; those weights get the numerical verdict alone.) In Qwen3 the per-head
# RMSNorm sits between the query and key projections and the scores, so it
# absorbs their scale; the value projection has no such norm and stays
# outside the theory. OLMo 2 moves the block's norms to the end of each
# branch, so almost every weight of a block feeds a normalisation.
#
# ## The monitor follows the audit
#
# Built without `layers=`, the monitor audits the model at its first
# forward pass and watches the weights that auto-tune. A model with none is
# refused there, with the cause, because the critical rates it reports
# ($\kappa = 1/\sqrt{E_{\text{low}}E_{\text{high}}}$, Cor. 3.10) are defined
# only for scale-invariant weights. (The monitor considers every parameter
# of two or more dimensions, embeddings included, so its counts exceed the
# audit table's.)

# %%
refusals, watched = {}, {}
for f in tt.FAMILIES:
    monitor = measure.ELRMonitor(models[f])
    try:
        models[f](*inputs[f][0], **inputs[f][1])
        refusals[f] = None
        watched[f] = list(monitor.names)
    except ValueError as err:
        refusals[f] = str(err)

# %% tags=["hide-input"]
display(Markdown("| model | the monitor at the first forward pass |\n|---|---|\n" + "\n".join(
    f"| {tt.LABELS[f]} | " + (f"refused: {refusals[f]}" if refusals[f] else
                              f"watches {len(watched[f])} weights: " + ", ".join(f"`{n}`" for n in watched[f]))
    .replace("|", "/") + " |" for f in tt.FAMILIES)))

# %% [markdown]
# ## The identity behind auto-tuning, on the weights the monitor watches
#
# For a scale-invariant weight the SGD update is orthogonal to the weight,
# so $\lVert W_{t+1}\rVert^2 = \lVert W_t\rVert^2 + \lVert\Delta W_t\rVert^2$
# exactly. The norm only grows, and since the gradient scales as
# $1/\lVert W\rVert$ (Eq. 1), the ELR
# $\lVert\nabla W\rVert/\lVert W\rVert$ carries a factor
# $1/\lVert W\rVert^2$: the self-tuning of the paper. We train Qwen3,
# OLMo 2 and Llama with plain SGD on a sorting task (each position must output the
# $i$-th smallest token of its sequence) in float64, with every
# normalisation's $\varepsilon$ set to $10^{-30}$ so that only rounding
# breaks the identity. The monitors of Qwen3 and OLMo 2 choose their
# weights themselves. For
# Llama, which it refuses, we name the same projections by hand with
# `layers=`, as a user might who takes QK-norm for granted. The residual
# below is the largest, over watched weights and steps, of
# $|(\lVert W_{t+1}\rVert^2 - \lVert W_t\rVert^2)/\lVert\Delta W_t\rVert^2 - 1|$
# (`elr.measure.growth_residuals`), from the monitor's own records.

# %%
task = sorting_task(n=2048, seq_len=seq_len, vocab=vocab, seed=seed)
runs = {}
for f in ("qwen3", "olmo2", "llama"):
    model = tt.build(f, **shape, norm_eps=1e-30, dtype=torch.float64)
    by_hand = None if f != "llama" else [n for n, _ in model.named_parameters()
                                         if n.endswith(("q_proj.weight", "k_proj.weight"))]
    runs[f] = tt.train_sequence(model, task, steps, lr, batch_size=batch_size, seed=seed, layers=by_hand)
residual = {f: measure.growth_residuals(r.records, lr)[0] if r.diverged_at is None else float("nan")
            for f, r in runs.items()}
fig, axes = plots.plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
for ax, f in zip(axes, runs):
    logged, e = runs[f].records.matrix("elr_grad")
    plots.layer_paths(logged, e, ax=ax, ylabel="gradient ELR ‖∇W‖/‖W‖" if f == "qwen3" else "")
    ax.set_title(f"{tt.LABELS[f].split(' (')[0]}: " + ("named by hand" if f == "llama" else "chosen by the monitor"),
                 fontsize=10)
plots.glue("ch20-elrs", fig)
plots.glue("ch20-residual-qwen3", f"{residual['qwen3']:.1e}")
plots.glue("ch20-residual-olmo2", f"{residual['olmo2']:.1e}")
plots.glue("ch20-olmo2-watched", f"{len(runs['olmo2'].layers)}")
plots.glue("ch20-residual-llama", f"{residual['llama']:.2g}")
plots.glue("ch20-setting", f"{n_layers} blocks of width {width}, {heads} heads, {steps} SGD steps at λ = {lr:g}, "
                           f"batches of {batch_size} from {task.description}")
plots.glue("ch20-loss", ", ".join(f"{tt.LABELS[f]} {r.losses[0]:.2f} → {r.losses[~np.isnan(r.losses)][-1]:.2f}"
                                  for f, r in runs.items()))

# %% [markdown]
# ```{glue:figure} ch20-elrs
# :name: fig-ch20-elrs
#
# The gradient ELRs of the watched weights as the monitor recorded them, in the models' order (blue = first,
# red = last): Qwen3's query and key projections, which its QK-norm makes scale-invariant; the
# {glue:text}`ch20-olmo2-watched` weights of OLMo 2 that its audit found invariant; Llama's query and key
# projections, named by hand ({glue:text}`ch20-setting`; training loss {glue:text}`ch20-loss`).
# ```
#
# On the weights the monitor chose the identity holds to a residual of
# {glue:text}`ch20-residual-qwen3` (Qwen3) and {glue:text}`ch20-residual-olmo2`
# (OLMo 2). That is rounding: Hugging Face's
# RMSNorm computes in float32 inside, even for a float64 model, so
# invariance holds to float32's precision and not to float64's. On
# Llama's projections the same quantity is {glue:text}`ch20-residual-llama`:
# their gradients have a component along the weight, and nothing makes the
# norm a monotone clock of the training. The monitor records their ELRs
# and critical rates all the same, because `layers=` tells it to; those
# numbers have none of the meaning the paper gives them.
#
# ## Discussion
#
# In the pre-norm models audited here (GPT-2, Llama, ViT), no weight tunes
# its own learning rate in the paper's sense: normalisation comes before
# the weights, not after them. QK-norm (Qwen3) brings the query and key
# projections into the theory, and a norm at the end of each branch
# (OLMo 2; Gemma 2 and 3 normalise there too) brings in most of a block.
# Which weights auto-tune is thus a property of where an architecture puts
# its norms, and it differs between models that look alike. For a user of
# `elr` the consequence is practical: the monitor and the subcritical
# warm-up watch the weights the audit finds invariant and refuse a model
# with none, rather than compute critical rates for weights whose ELR does
# not follow the theory. Naming weights by hand is possible, and the
# records then show, through the identity above, whether they behave like
# the paper's weights.
#
# ## Checks
#
# These are checks of the code and of the architectures: the audit's
# verdicts and the monitor's choices are exact, and the identity holds to
# rounding or not at all.

# %%
assert tuning["gpt2"] == tuning["llama"] == tuning["vit"] == [], tuning
qk = [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(n_layers) for p in ("q", "k")]
assert tuning["qwen3"] == qk, tuning["qwen3"]
olmo = [f"model.layers.{i}.{p}.weight" for i in range(n_layers)
        for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj",
                  "mlp.down_proj")]
assert tuning["olmo2"] == olmo, tuning["olmo2"]
traced = [r.name for f in tt.FAMILIES for r in rows[f] if "could not be" in r.reason]
assert not traced, f"reasons without a trace: {traced}"
for f in ("gpt2", "llama", "vit"):
    assert refusals[f] and "no weight of this model is scale-invariant" in refusals[f], (f, refusals[f])
assert refusals["qwen3"] is None and watched["qwen3"] == [n.removesuffix(".weight") for n in qk], watched
assert refusals["olmo2"] is None and watched["olmo2"] == [n.removesuffix(".weight") for n in olmo], watched
assert runs["qwen3"].layers == watched["qwen3"] and runs["olmo2"].layers == watched["olmo2"]
assert all(r.diverged_at is None for r in runs.values()), {f: r.diverged_at for f, r in runs.items()}
# float32 rounding inside Hugging Face's RMSNorm: about 1e-6 measured; 1e-4 leaves a margin of a hundred
assert residual["qwen3"] < 1e-4 and residual["olmo2"] < 1e-4, residual
assert residual["llama"] > 0.1, residual  # not invariant: the update has a component along the weight
print("all claims of this chapter hold")
