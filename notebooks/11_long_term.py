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
# # Validating the model, long term
#
# Over many steps the model predicts every layer's ELR from its norms at
# initialisation alone. The paper's Figures 3 and 7 {cite}`mehmeti2024weight`
# compare that prediction with training runs of a network without
# shortcuts, at a small and a large learning rate, with random-walk and with
# real gradients, and with BatchNorm's affine parameters off (as everywhere
# in the paper) and on. We repeat the comparison at the quick profile's
# scale: many fewer steps than the paper's 3,000 epochs, on the offline
# digits data.

# %% tags=["parameters"]
depth: int = 56  # depth of the NoShort CIFAR ResNet (6n+2); the paper uses ResNet56 {>= 8, %6==2}
dataset: str = "digits"  # digits (offline, quick), cifar10 or cifar100 {in digits|cifar10|cifar100}
data_root: str = "data"  # where CIFAR lives
steps: int = 200  # SGD steps per run {>= 20}
log_every: int = 10  # steps between ELR measurements {>= 1}
batch_size: int = 128  # examples per step {>= 2}
lr_small: float = 0.05  # the small learning rate (below the critical rate at initialisation) {> 0}
lr_large: float = 1.0  # the large learning rate (the paper's λ = 1) {> 0}
seed: int = 0  # seed of initialisation and data order {>= 0}

# %%
import numpy as np
from IPython.display import Markdown, display

from elr import dynamics, plots, train

plots.setup()
cases = [(False, "random_walk", lr_small), (False, "random_walk", lr_large), (False, "none", lr_small),
         (False, "none", lr_large), (True, "random_walk", lr_small), (True, "random_walk", lr_large)]
configs = [train.TrainConfig(model=f"resnet{depth}", shortcut=False, bn_affine=affine, dataset=dataset,
                             data_root=data_root, batch_size=batch_size, steps=steps, lr=lr, transform=transform,
                             log_every=log_every, eval_batches=1, seed=seed, channels_last=True)
           for affine, transform, lr in cases]
runs = dict(zip(cases, train.sweep(configs)))

# %% [markdown]
# For each run the model starts from the measured $\sigma_i^2(0)$ and $c_i$
# of every layer and runs the discrete model (Eq. 5) at the run's constant
# learning rate; the measured ELR is $\lVert\nabla W_i\rVert/\lVert W_i\rVert$
# over the whole layer.

# %%
compare = {}
for case, run in runs.items():
    sigma2_0, c = run.records.model_state(0)
    logged, measured = run.records.matrix("elr_grad")
    predicted = dynamics.simulate(sigma2_0, c, np.full(steps, case[2])).elr[logged]
    low = max(1, measured.shape[1] // 10)  # the lowest tenth of the layers
    compare[case] = {"steps": logged, "measured": measured, "predicted": predicted, "status": run.status,
                     "s_meas": dynamics.relative_spread(measured), "s_pred": dynamics.relative_spread(predicted),
                     "low_ratio": float(np.mean(measured[-1, :low] / predicted[-1, :low])),
                     "order_init": float(measured[0, 0] / measured[0, -1]),
                     "order_meas": float(measured[-1, 0] / measured[-1, -1]),
                     "order_pred": float(predicted[-1, 0] / predicted[-1, -1])}

# %%
fig, axes = plots.plt.subplots(2, 3, figsize=(10, 5.5), sharex=True, squeeze=False)
for ax, case in zip(axes.flat, cases):
    r = compare[case]
    plots.layer_paths(r["steps"] + 1, r["measured"], ax=ax, logx=True, lw=0.8, ylabel="ELR" if ax in axes[:, 0] else "")
    plots.layer_paths(r["steps"] + 1, r["predicted"], ax=ax, logx=True, style="k--", lw=0.4, alpha=0.5)
    affine, transform, lr = case
    ax.set_title(f"{'random walk' if transform == 'random_walk' else 'real'}, λ = {lr:g}"
                 + (", affine BN" if affine else ""), fontsize=8)
for ax in axes[-1]:
    ax.set_xlabel("step + 1")
plots.add_depth_colorbar(fig, axes[:, -1].tolist(), compare[cases[0]]["measured"].shape[1])
plots.glue("ch11-long-term", fig)
plots.glue("ch11-setting", f"ResNet{depth} NoShort on {dataset}, {steps} steps, batch {batch_size}, seed {seed}")
display(Markdown(
    "| run | S_rel at 0 | S_rel at the end, measured | predicted | lowest layers' ELR, measured/predicted | "
    "E_lowest/E_highest at the end, measured | predicted |\n|---|---|---|---|---|---|---|\n" + "\n".join(
        f"| {'random walk' if t == 'random_walk' else 'real'}, λ={lr:g}{', affine' if a else ''} | "
        f"{compare[(a, t, lr)]['s_meas'][0]:.2f} | {compare[(a, t, lr)]['s_meas'][-1]:.2f} | "
        f"{compare[(a, t, lr)]['s_pred'][-1]:.2f} | {compare[(a, t, lr)]['low_ratio']:.3g} | "
        f"{compare[(a, t, lr)]['order_meas']:.3g} | {compare[(a, t, lr)]['order_pred']:.3g} |"
        for a, t, lr in cases)))

# %% [markdown]
# ```{glue:figure} ch11-long-term
# :name: fig-ch11-long-term
#
# Per-layer ELRs over training (coloured, blue = lowest layer) against the discrete model's prediction
# from the norms at initialisation (dashed). Top row and first panel of the bottom row: BatchNorm without
# affine parameters (the paper's Figure 3); last two panels: with affine parameters and random-walk
# gradients (the paper's Figure 7). Measured: {glue:text}`ch11-setting`.
# ```
#
# Three things match the paper. With random-walk gradients at the small
# learning rate the ELRs close in on each other just as the model says: the
# measured spread follows the predicted one step by step. With real
# gradients at $\lambda = 1$ the lowest layers' gradients fall far below the
# prediction, and their ELRs end *below* those of the highest layers, the
# reverse of the order at initialisation, while the model predicts no such
# flip. In the paper's words, the rate the model calls critical is
# super-critical in real training. With BatchNorm's affine parameters on,
# even the random walk at $\lambda = 1$ leaves the lowest layers' gradients
# well below the prediction (Appendix C.3 of the paper attributes this to
# the affine parameters moving the ReLUs away from their point of maximum
# curvature).
#
# ## Checks

# %%
walk_small = compare[(False, "random_walk", lr_small)]
assert np.max(np.abs(walk_small["s_meas"] - walk_small["s_pred"])) < 0.15, \
    "random walk, small λ: the measured spread follows the prediction"
assert walk_small["s_meas"][-1] < walk_small["s_meas"][0], "random walk, small λ: the ELRs converge"
real_large = compare[(False, "none", lr_large)]
assert real_large["low_ratio"] < 0.5, "real gradients, large λ: the lowest layers undershoot the prediction"
assert real_large["order_init"] > 1 > real_large["order_meas"], \
    "real gradients, large λ: the lowest layer starts above the highest and ends below it"
assert real_large["order_pred"] > real_large["order_meas"], "... which the model does not predict"
assert compare[(True, "random_walk", lr_large)]["low_ratio"] < compare[(False, "random_walk", lr_large)]["low_ratio"], \
    "affine BatchNorm: the random walk's lowest gradients undershoot more"
print("all claims of this chapter hold")
