"""The paper's Figure 2 in data: one real test pair, its feature maps at every layer of a trained
PreActResNet-18, and what Catch-up Mix (lam = 0.5) makes of them: channel norms, relative filter
influence, which channels the source keeps, and the mixed maps. Layer 0 shows the CutMix of the images.
"""

import torch

from catchup_mix import data, models, ops, provenance
from catchup_mix.checkpoint import load_checkpoint
from catchup_mix.config import make_config

LAM = 0.5


def _rounded(tensor: torch.Tensor, digits: int = 4):
    return torch.round(tensor.float(), decimals=digits).tolist()


def measure(checkpoint, run_config: dict) -> dict:
    saved = load_checkpoint(checkpoint)
    config = make_config({**saved["config"], "data_root": run_config.get("data_root")})
    dataset = data.from_config(config)
    model = models.build(config.model, dataset.num_classes, image_size=dataset.crop_size, width=config.width)
    model.load_state_dict(saved["model"])
    model.eval()

    # The pair: the first test image of class 0 (source) and of class 1 (partner).
    labels = dataset.test.labels
    index = [int((labels == c).nonzero()[0]) for c in (0, 1)]
    loader = data.BatchLoader(data.ImageSplit(dataset.test.images[index], labels[index]), 2, mean=dataset.mean,
                              std=dataset.std, train=False, crop_size=dataset.crop_size)
    images, _ = next(iter(loader))
    perm = torch.tensor([1, 0])

    features = {}
    with torch.no_grad():
        model(images, feature_hook=lambda f, k: features.setdefault(k, f.clone()))
    layers = []
    for k, maps in sorted(features.items()):
        norms = torch.linalg.vector_norm(maps.flatten(2), dim=2)
        shares = norms / norms.sum(dim=1, keepdim=True)
        mixed = ops.catchup_mix_features(maps, LAM, perm)
        kept = (mixed[0] == maps[0]).flatten(1).all(dim=1)
        layers.append({
            "k": k, "channels": maps.shape[1], "size": list(maps.shape[2:]),
            "norm_source": _rounded(norms[0]), "norm_partner": _rounded(norms[1]),
            "norm_mixed": _rounded(torch.linalg.vector_norm(mixed[0].flatten(1), dim=1)),
            "rfi": _rounded(shares[0] - shares[1], 6), "kept": kept.tolist(),
            "map_source": _rounded(maps[0].abs().mean(0)), "map_partner": _rounded(maps[1].abs().mean(0)),
            "map_mixed": _rounded(mixed[0].abs().mean(0)),
        })

    mean, std = torch.tensor(dataset.mean)[:, None, None], torch.tensor(dataset.std)[:, None, None]
    cut, cut_lam = ops.cutmix(images, LAM, perm, torch.Generator().manual_seed(0))
    pixels = lambda x: _rounded((x * std + mean).clamp(0, 1), 3)  # noqa: E731
    return {
        "lam": LAM,
        "pair": {"test_index": index, "classes": [dataset.classes[0], dataset.classes[1]]},
        "images": {"source": pixels(images[0]), "partner": pixels(images[1]), "cutmix": pixels(cut[0]),
                   "cutmix_lam": cut_lam},
        "layers": layers,
        "checkpoint_epoch": saved["epoch"],
        "config": saved["config"],
        "provenance": {**provenance.git_state(), "trained_on": saved["provenance"]["device"]},
    }


def render(settings, measurement: dict | None) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import save_figure

    if measurement is None:
        return []
    layers = measurement["layers"]
    fig, axes = plt.subplots(len(layers) + 1, 4, figsize=(12, 2.3 * (len(layers) + 1)),
                             gridspec_kw={"width_ratios": [1, 1, 1, 3]})
    source_class, partner_class = measurement["pair"]["classes"]
    row = axes[0]
    images = measurement["images"]
    for ax, key, caption in zip(row[:3], ("source", "partner", "cutmix"),
                                (f"source ({source_class})", f"partner ({partner_class})",
                                 f"k=0: CutMix, kept {images['cutmix_lam']:.2f}"), strict=True):
        ax.imshow(torch.tensor(images[key]).permute(1, 2, 0).numpy())
        ax.set_title(caption, fontsize=8)
    row[3].axis("off")
    row[3].text(0, 0.5, "Rows k >= 1: mean |activation| over channels of the source, the partner and the\n"
                "mixed source; right: channel l2 norms of source and partner, channels sorted by the\n"
                f"source's relative filter influence (RFI). Catch-up Mix with lam = {measurement['lam']} keeps "
                "the\nsource's maps left of the dashed line (lowest RFI) and takes the partner's on the right.",
                fontsize=8, va="center")
    for ax_row, layer in zip(axes[1:], layers, strict=True):
        maps = [torch.tensor(layer[key]) for key in ("map_source", "map_partner", "map_mixed")]
        top = max(float(m.max()) for m in maps)
        for ax, tensor, caption in zip(ax_row[:3], maps, ("source", "partner", "mixed source"), strict=True):
            ax.imshow(tensor.numpy(), cmap="viridis", vmin=0, vmax=top)
            ax.set_title(f"k={layer['k']}: {caption}", fontsize=8)
        order = torch.tensor(layer["rfi"]).argsort()
        kept = int(sum(layer["kept"]))
        ax = ax_row[3]
        positions = range(layer["channels"])
        ax.plot(positions, torch.tensor(layer["norm_source"])[order].numpy(), lw=0.8, label="source norm")
        ax.plot(positions, torch.tensor(layer["norm_partner"])[order].numpy(), lw=0.8, label="partner norm")
        ax.plot(positions, torch.tensor(layer["norm_mixed"])[order].numpy(), lw=0.8, ls=":", color="black",
                label="mixed norm")
        ax.axvline(kept - 0.5, color="grey", ls="--", lw=0.8)
        ax.set_xlim(0, layer["channels"] - 1)
        ax.set_title(f"k={layer['k']}: {layer['channels']} channels, {layer['size'][0]}x{layer['size'][1]}; "
                     f"source keeps {kept}", fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes[:, :3].flat:
        ax.set_xticks([])
        ax.set_yticks([])
    config = measurement["config"]
    scale_note = "smoke scale, not paper numbers: " if settings.scale == "smoke" else ""
    fig.suptitle(f"Catch-up Mix on one test pair ({scale_note}{config['model']} trained with "
                 f"{config['method']} on {config['dataset']}, epoch {measurement['checkpoint_epoch']}, seed "
                 f"{config['seed']}, commit {measurement['provenance']['commit'][:10]})", fontsize=9)
    return save_figure(settings, "figure_mixing", fig, dpi=130)
