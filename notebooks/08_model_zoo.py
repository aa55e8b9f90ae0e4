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
# # Which weights auto-tune in torchvision's models
#
# The paper's analysis covers the weights whose scale a normalisation
# absorbs ({doc}`07_scale_invariance`). How much of a modern network is
# that? This chapter runs `elr.audit` on torchvision's classification
# models at random initialisation (`weights=None`, nothing downloaded) and
# counts, for the weights of linear and convolution layers, which auto-tune
# and why the others do not.
#
# The audit scales each weight by $\gamma \in \{10^{-3}, 0.5, 3, 10^{3}\}$
# in float64 with batch statistics and compares the output; a factor of a
# thousand either way is what catches saturating nonlinearities such as
# ReLU6. A weight that is invariant only because a bias is still zero, as
# at many initialisations, is reported as "auto-tunes while zero" and not
# counted as auto-tuning: the first update moves the bias. The reason next
# to each verdict comes from a `torch.fx` trace of how the weight's scale
# reaches the output.
#
# **What the architectures predict, written down before the audit ran on
# them** (the weights of linear and convolution layers):
#
# | model | auto-tune | why the others do not |
# |---|---|---|
# | ResNet-18 / ResNet-50 | every convolution (20 / 53), each followed by a BatchNorm | the final linear layer has no normalisation after it |
# | VGG-11-BN | the 8 convolutions (their bias is removed by the BatchNorm's batch mean) | two hidden linear layers add a bias before a ReLU, and the last one has no normalisation |
# | MobileNetV2 | every convolution (52), each followed by a BatchNorm | the classifier |
# | EfficientNet-B0 | the 49 convolutions followed by a BatchNorm | the 16 squeeze-and-excitation pairs (a biased convolution before SiLU, one before a sigmoid), the classifier |
# | RegNetY-400MF | the 53 convolutions followed by a BatchNorm | 16 squeeze-and-excitation pairs (bias before ReLU, before sigmoid), the classifier |
# | ConvNeXt-T | none | inverted bottlenecks write into a residual stream (GELU in between); the stem and the depthwise convolutions sit before a LayerNorm with a bias that is zero at initialisation, so they auto-tune only until it moves |
# | ViT-B/16, Swin-T | none | pre-norm Transformers: every weight writes into the residual stream or feeds GELU or attention |
#
# We also expected ConvNeXt-T to be the only model with weights that
# auto-tune "while zero". The first run showed ViT-B/16 with 37 such
# weights: torchvision initialises ViT's classification head to zero, so
# at initialisation its output does not depend on any other weight. That
# is the audit being right about a fact of the initialisation we had not
# written down; the checks below assert it, with that reason.
#
# The quick profile uses 32x32 inputs, batches of 2 and two processes:
# the verdicts do not depend on the input size as long as every layer
# still has spatial extent and batch statistics exist.

# %% tags=["parameters"]
models: list[str] = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "regnet_y_400mf", "vit_b_16", "swin_t"]  # torchvision model names
image_size: int = 32  # input height and width (ViTs are built for it) {>= 32}
batch_size: int = 2  # images in the audit's batch (BatchNorm needs 2) {>= 2}
workers: int = 2  # processes the audit runs in; each model's weights are divided among them {>= 1}
seed: int = 0  # seed of the initialisation and of the input batch {>= 0}
check_claims: bool = True  # assert the table against the architectures (the smoke profile audits one model)

# %%
import time

from IPython.display import Markdown, display

from elr import audit, plots

start = time.time()
results = audit.audit_zoo(models, image_size=image_size, batch=batch_size, seed=seed, workers=workers)
seconds = time.time() - start

# %% tags=["hide-input"]
label = {v: k for k, v in audit.ZOO.items()}
display(Markdown(
    "| model | weights audited | auto-tune | auto-tune while a bias is zero | the others, by reason |\n|---|---|---|---|---|\n"
    + "\n".join(
        f"| {label.get(r['model'], r['model'])} | {r['weights']} | {r['auto_tune']} ({r['fraction']:.0%}) | "
        f"{sum(row.verdict == 'auto-tunes while zero' for row in r['rows'])} | {audit.reasons_by_kind(r['rows'])} |"
        for r in results)))
fig, ax = plots.plt.subplots(figsize=(6.5, 0.35 * len(results) + 1))
names = [label.get(r["model"], r["model"]) for r in results]
tunes = [r["fraction"] for r in results]
zero = [sum(row.verdict == "auto-tunes while zero" for row in r["rows"]) / r["weights"] for r in results]
ax.barh(names, tunes, color="C0", label="auto-tune")
ax.barh(names, zero, left=tunes, color="C0", alpha=0.35, label="auto-tune only while a bias (or the head) is zero")
ax.set(xlim=(0, 1), xlabel="fraction of linear and convolution weights")
ax.invert_yaxis()
ax.legend(fontsize=7, loc="lower right")
plots.glue("ch08-zoo", fig)
plots.glue("ch08-seconds", f"{seconds:.0f}")
plots.glue("ch08-setting", f"{image_size}x{image_size} inputs, batches of {batch_size}, seed {seed}")

# %% [markdown]
# ```{glue:figure} ch08-zoo
# :name: fig-ch08-zoo
#
# The share of each model's linear and convolution weights that auto-tune at random initialisation
# ({glue:text}`ch08-setting`), and the share that does so only while a zero bias, or a zero
# classification head, stays zero.
# ```
#
# The audit of {glue:text}`ch08-setting` took {glue:text}`ch08-seconds` s.
#
# Every count agrees with the table of predictions above. Two things are
# worth seeing in it. First, the classical convolutional networks are
# almost entirely in the paper's regime: every convolution that feeds a
# BatchNorm auto-tunes, biased or not, and only the classifier and the
# squeeze-and-excitation branches escape it. Second, the recent
# architectures are not in it at all: ConvNeXt, ViT and Swin normalise
# *before* each residual branch (pre-norm), so no weight sits between a
# linear map and the normalisation that would absorb its scale. Their
# weights do not tune their own learning rate in the paper's sense, which
# is the situation {doc}`18_transformers` studies.
#
# ## Checks

# %%
expected = {"resnet18": 20, "resnet50": 53, "vgg11_bn": 8, "mobilenet_v2": 52, "efficientnet_b0": 49,
            "regnet_y_400mf": 53, "convnext_tiny": 0, "vit_b_16": 0, "swin_t": 0}
# ConvNeXt: stem and depthwise convolutions before a LayerNorm, bias zero at init; ViT: a zero head at init
while_zero_families = {"convnext_tiny", "vit_b_16"}
for r in results:
    tracebacks = [row.name for row in r["rows"] if "could not be followed" in row.reason]
    assert not tracebacks, (r["model"], tracebacks)
    if check_claims and r["model"] in expected:
        assert r["auto_tune"] == expected[r["model"]], (r["model"], r["auto_tune"], expected[r["model"]])
        while_zero = sum(row.verdict == "auto-tunes while zero" for row in r["rows"])
        assert (while_zero > 0) == (r["model"] in while_zero_families), (r["model"], while_zero)
        if r["model"] == "vit_b_16":
            head = next(row for row in r["rows"] if row.name == "heads.head.weight")
            assert head.zero, "torchvision's ViT head is zero at initialisation"
print("all claims of this chapter hold" if check_claims else "claims not checked at this profile")
