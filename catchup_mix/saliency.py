"""Saliency maps for the saliency-guided baselines: (B, H, W), on the images' device, no host sync.

- `spectral_residual`: a static, model-free map (Hou & Zhang, CVPR 2007) as GuidedMixup computes it
  (3neutronstar/GuidedMixup `spectral_residual.py`); SaliencyMix and GuidedMixup use it.
- `input_gradient`: the norm over channels of the gradient of the loss with respect to the input pixels,
  as PuzzleMix and Co-Mixup compute it (snu-mllab/PuzzleMix `main.py`, `unary = sqrt(mean(grad^2, 1))`):
  one extra forward and backward of the network being trained.
"""

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside torch.compile and (Distributed)DataParallel wrappers.

    The saliency pass runs on it: a forward of the DDP wrapper without its backward would leave DDP's
    reducer waiting for gradients, and the saliency gradient must not be all-reduced or compiled for.
    """
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            model = model.module
        else:
            return model


def input_gradient(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sqrt(mean over channels of (d loss / d pixel)^2) for the mean cross-entropy of the batch.

    The network runs in eval mode (batch-norm statistics neither used nor updated), as PuzzleMix and
    Co-Mixup do without their `clean_lam` option, and its previous mode is restored. Only the input
    gradient is computed (`torch.autograd.grad`), so no parameter gradient is left behind; the pass runs
    in full precision, outside the trainer's autocast.
    """
    network = unwrap(model)
    was_training = network.training
    network.eval()
    try:
        with torch.enable_grad():
            pixels = images.detach().requires_grad_(True)
            loss = F.cross_entropy(network(pixels).float(), targets)
            (gradient,) = torch.autograd.grad(loss, pixels)
    finally:
        network.train(was_training)
    return gradient.pow(2).mean(1).sqrt()


def spectral_residual(images: torch.Tensor, blur_size: int = 7, blur_sigma: float = 3.0,
                      max_side: int = 128) -> torch.Tensor:
    """Spectral-residual saliency of each image, as GuidedMixup's `SpectralResidual`.

    Grey image (images larger than max_side are first resized to max_side x max_side and the map resized
    back) -> 2-D FFT -> the log amplitude minus its 3x3 box-filtered version (replicate padding) is the
    spectral residual -> inverse FFT with the original phase -> magnitude -> Gaussian blur (7 x 7, sigma 3).
    images: (B, C, H, W), normalised or not (the original feeds normalised images). Returns (B, H, W) >= 0.
    """
    height, width = images.shape[-2:]
    grey = TF.rgb_to_grayscale(images) if images.shape[1] == 3 else images.mean(1, keepdim=True)
    grey = grey.float()
    if height > max_side:
        grey = TF.resize(grey, [max_side, max_side], antialias=True)
    spectrum = torch.fft.fft2(grey)
    amplitude = (spectrum.real**2 + spectrum.imag**2 + 1e-10).sqrt()
    log_amplitude = amplitude.log()
    smoothed = F.avg_pool2d(F.pad(log_amplitude, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    residual = (log_amplitude - smoothed).exp()
    saliency = torch.fft.ifft2(spectrum * (residual / amplitude)).abs()
    if blur_size:
        saliency = TF.gaussian_blur(saliency, [blur_size, blur_size], [blur_sigma, blur_sigma])
    if height > max_side:
        saliency = TF.resize(saliency, [height, width], antialias=True)
    return saliency.squeeze(1)
